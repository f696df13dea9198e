"""Data-parallel training: 2 ranks (torchrun, gloo, 1 thread each) equal the one-process run of the same global
batches (per-step losses, final trainable weights: 1e-5 relative), 2-rank validation equals one-process
validation of the same weights to 1e-6, each rank holds half, a killed rank stops the run fast and the rerun
resumes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic_run import synthetic_store

from cache.feed import open_reader, rank_shares, video_shares
from flows.data_parallel import DistributedRunFailed, launch
from flows.settings import TrainFlowSettings
from pipeline.model import head_config
from pipeline.settings import ExtractConfig, OptimConfig, TrainConfig
from stages.extract import extract
from stages.train import sweep

RTOL = 1e-5  # fp32 on the CPU: the ranks' sums differ from one process's only in the order of additions
TRUNK = 1  # adapters from this SAM 2 block


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """Synthetic S4, train + val, float32, with the trunk activation the adapter heads read."""
    tmp = tmp_path_factory.mktemp("dist")
    run = synthetic_store(
        tmp, videos=12, seed=4, test_fraction=None, splits=["train", "val"], dtype="float32"
    )
    extract(
        ExtractConfig(
            root=run["root"], subset="s4", store=run["store"], device="cpu", splits=["train", "val"],
            dtype="float32", overrides={"sam2": {"trunk_block": TRUNK}}, allow_other_fingerprints=True,
        ),
        progress=False,
    )  # fmt: skip
    return run["store"]


def _heads(adapters: bool) -> dict:
    if not adapters:
        return {"head": head_config("tiny")}
    a = dict(adapters=True, adapter_start_block=TRUNK)
    return {
        "adapt": head_config("tiny", **a),
        "adapt_neg": head_config("tiny", **a, negatives=0.5, negative_conditions={"offscreen": 1.0}, seed=1),
    }


def _one_process(store: str, out: Path, heads: dict, epochs: int = 2) -> None:
    cfg = TrainConfig(
        store=store, subset="s4", device="cpu", out=out, progress=False, threads=1, step_log=True,
        optim=OptimConfig(epochs=epochs, batch_size=4), world_size=2,
    )  # fmt: skip
    sweep(cfg, heads)


def _settings(store: str, out: Path, heads: dict, tmp: Path, epochs: int = 2) -> TrainFlowSettings:
    kw = {}
    if len(heads) > 1:
        sweep_file = tmp / "sweep.json"
        sweep_file.write_text("{" + ",".join(f'"{n}": {h.model_dump_json()}' for n, h in heads.items()) + "}")
        kw["sweep_file"] = sweep_file
    else:
        kw["head"] = next(iter(heads.values()))
    return TrainFlowSettings(
        store=store, subset="s4", device="cpu", out=out, progress=False, epochs=epochs, batch_size=4,
        step_log=True, nproc=2, **kw,
    )  # fmt: skip


def _folders(out: Path, heads: dict) -> dict[str, Path]:
    return {n: out if len(heads) == 1 else out / n for n in heads}


def _trainable(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["trainable"]


def _assert_same_run(a: Path, b: Path, heads: dict) -> None:
    for name in heads:
        fa, fb = _folders(a, heads)[name], _folders(b, heads)[name]
        sa, sb = pd.read_csv(fa / "steps.csv"), pd.read_csv(fb / "steps.csv")
        joined = sa.merge(sb, on=["epoch", "step"])
        assert len(joined) == len(sb) > 0
        np.testing.assert_allclose(joined["loss_x"], joined["loss_y"], rtol=RTOL)
        ta, tb = _trainable(fa / "last.pt"), _trainable(fb / "last.pt")
        assert ta.keys() == tb.keys()
        for k in ta:
            scale = float(ta[k].abs().max()) or 1.0
            assert float((ta[k] - tb[k]).abs().max()) <= RTOL * scale, (name, k)


def _assert_validation_exact(store: str, dp: Path, heads: dict) -> None:
    """The 2-rank run's last val M_J / M_F equal one process validating the same weights (rank 0's last.pt)."""
    from cache.batches import sources
    from pipeline.model.build import build_model, frozen_encoders
    from stages.train import HeadRun, open_batches, open_features, validate

    cfg = TrainConfig(store=store, subset="s4", device="cpu", out=dp, progress=False, threads=1)
    frozen = frozen_encoders(next(iter(heads.values())), "tiny", None, torch.device("cpu"))
    feats = open_features(cfg, "val", frozen)
    runs = []
    for name, head in heads.items():
        model = build_model(head, "tiny", **feats.widths(), device=torch.device("cpu"), encoders=frozen)
        model.load_trainable_state_dict(_trainable(_folders(dp, heads)[name] / "last.pt"))
        runs.append(HeadRun(name, head, model, None, None))
    val = open_batches(cfg, "val", sources([r.model for r in runs], feats.groups), False, 4, show=False)
    for r, v in zip(runs, validate(runs, cfg, val, feats.index, torch.device("cpu")), strict=True):
        last = pd.read_csv(_folders(dp, heads)[r.name] / "metrics.csv").iloc[-1]
        assert abs(last["val_M_J"] - v["val_M_J"]) <= 1e-6 and abs(last["val_M_F"] - v["val_M_F"]) <= 1e-6


def test_reader_shares_rows_once_and_holds_half(store):
    from cache.batches import Source
    from cache.store import FeatureStore

    gt = next(e for e in FeatureStore(store, mode="r").split("s4", "train").encoders() if e.name == "gt")
    fields = {"mask": Source(gt.key, "mask")}
    kw = dict(batch_size=4, shuffle=True, seed=3, mode="resident", window=1)
    one = open_reader(store, "s4", "train", fields, world_size=2, **kw)
    ranks = [open_reader(store, "s4", "train", fields, rank=r, world_size=2, **kw) for r in range(2)]
    n = len(one.rows)
    assert abs(ranks[0].nbytes - one.nbytes / 2) <= one.nbytes / n  # about half each
    assert "rank 1/2" in ranks[1].describe() and f"of {n} rows" in ranks[1].describe()
    for epoch in range(2):
        batches = [list(r.epoch(epoch)) for r in ranks]
        glob = list(one.epoch(epoch))
        assert len(batches[0]) == len(batches[1]) == len(glob)
        seen = np.concatenate([b["row"].numpy() for bs in batches for b in bs])
        assert np.array_equal(np.sort(seen), np.sort(one.rows))  # every row once per epoch
        for k, g in enumerate(glob):  # step k's global batch: the ranks' slices in rank order
            cat = np.concatenate([batches[0][k]["row"].numpy(), batches[1][k]["row"].numpy()])
            assert np.array_equal(cat, g["row"].numpy())
            assert torch.equal(torch.cat([batches[0][k]["mask"], batches[1][k]["mask"]]), g["mask"])
    videos = np.array(["a"] * 5 + ["b"] * 5 + ["c"] * 5)
    parts = video_shares(np.arange(15), videos, 2)
    assert [len(p) for p in parts] == [10, 5] and [len(p) for p in rank_shares(np.arange(15), 2)] == [7, 8]
    with pytest.raises(ValueError, match="does not split over 3 ranks"):
        open_reader(store, "s4", "train", fields, world_size=3, **kw)


@pytest.mark.slow
def test_two_ranks_equal_one_process_sweep_with_adapters_and_negatives(store, tmp_path):
    heads = _heads(adapters=True)
    _one_process(store, tmp_path / "one", heads)
    epochs: list[tuple[str, int]] = []
    rows = launch(
        _settings(store, tmp_path / "dp", heads, tmp_path),
        on_epoch=lambda h, m: epochs.append((h, m["epoch"])),
    )
    assert sorted(epochs) == [("adapt", 1), ("adapt", 2), ("adapt_neg", 1), ("adapt_neg", 2)]
    assert [r["head"] for r in rows] == ["adapt", "adapt_neg"] and (
        tmp_path / "dp" / "comparison.md"
    ).is_file()
    _assert_same_run(tmp_path / "one", tmp_path / "dp", heads)
    _assert_validation_exact(store, tmp_path / "dp", heads)


@pytest.mark.slow
def test_mul_two_ranks_killed_rank_stops_run_and_rerun_resumes_equal(store, tmp_path):
    heads = _heads(adapters=False)
    dp = tmp_path / "dp"
    s = _settings(store, dp, heads, tmp_path, epochs=6)
    epochs: list[int] = []
    killed: dict[str, float] = {}

    def killer() -> None:  # rank 1 is killed during epoch 2
        while not epochs:
            time.sleep(0.05)
        pid = None
        while pid is None:
            pid = next((p for p in _pids_of_rank(1)), None)
        os.kill(pid, 9)
        killed["at"] = time.monotonic()

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    with pytest.raises(DistributedRunFailed, match=r"rank 1: killed by SIGKILL") as err:
        launch(s, on_epoch=lambda h, m: epochs.append(m["epoch"]))
    assert time.monotonic() - killed["at"] < 30
    assert "\n" not in str(err.value)
    done = len(pd.read_csv(dp / "metrics.csv"))
    assert 1 <= done < 6 and not list(dp.glob(".*tmp*"))
    resumed: list[int] = []
    launch(s, on_epoch=lambda h, m: resumed.append(m["epoch"]))
    assert resumed == list(range(done + 1, 7))  # the rerun resumed from last.pt
    _one_process(store, tmp_path / "one", heads, epochs=6)
    _assert_same_run(tmp_path / "one", dp, heads)
    _assert_validation_exact(store, dp, heads)


def _pids_of_rank(rank: int) -> list[int]:
    """Live torchrun workers of av2t's launcher with this rank."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = any(e.startswith(b"AV2T_DIST_DIR=") for e in env) and b"TORCHELASTIC_RUN_ID" in b"\0".join(env)
        if f"RANK={rank}".encode() in env and ours:
            out.append(int(d))
    return out
