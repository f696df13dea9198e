"""The train stage: logs, checkpoints with fingerprints, resume, refusal, and sweeps equal to single runs."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from synthetic_run import synthetic_store

from cache.batches import FeatureBatches
from pipeline.checkpoints import CheckpointError
from pipeline.files import OutputError
from pipeline.model import head_config
from pipeline.model.build import build_model
from pipeline.model.head_checkpoint import load_head, read_head
from pipeline.model.sweep import load_sweep
from pipeline.settings import OptimConfig, TrainConfig
from stages.train import TrainingDiverged, fit, sweep, train


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A small synthetic S4 store with every encoder (float32, so runs compare exactly)."""
    tmp = tmp_path_factory.mktemp("train")
    run = synthetic_store(
        tmp, videos=12, seed=4, test_fraction=None, splits=["train", "val"], dtype="float32"
    )
    return run["store"]


def _cfg(store: str, out: Path, epochs: int = 2, **kw) -> TrainConfig:
    return TrainConfig(
        store=store,
        subset="s4",
        device="cpu",
        out=out,
        progress=False,
        optim=OptimConfig(epochs=epochs, batch_size=4),
        **kw,
    )


def test_train_writes_logs_and_checkpoints_with_fingerprints(store, tmp_path):
    table = train(_cfg(store, tmp_path / "run"))
    out = tmp_path / "run"
    log = pd.read_csv(out / "metrics.csv")
    assert list(log.columns) == [
        "epoch", "train_loss", "val_loss", "val_M_J", "val_M_F", "lr", "seconds", "precision", "validated",
        "val_rows",
    ]  # fmt: skip
    assert log["precision"].tolist() == ["fp32", "fp32"] and log["validated"].all()
    assert log["epoch"].tolist() == [1, 2] and log["val_M_J"].between(0, 1).all()
    assert (out / "curves.png").stat().st_size > 1000
    best = torch.load(out / "best.pt", weights_only=True)
    assert (
        best["format"] == "av2t-head/1"
        and best["head"]["fusion"] == "mul"
        and best["head"]["fused_scale"] == "auto"
    )
    assert set(best["frozen"]) >= {"sam2", "beit3"}
    assert set(best["features"]) == {"clip", "clap", "sam2", "beit3"}
    assert best["metrics"]["val_M_J"] == log["val_M_J"].max() == pytest.approx(table["val_M_J"][0])


def test_resume_continues_from_the_last_epoch(store, tmp_path):
    train(_cfg(store, tmp_path / "full", epochs=3))
    full = pd.read_csv(tmp_path / "full" / "metrics.csv")
    out = tmp_path / "stopped"
    train(_cfg(store, out, epochs=3, stop_after=2))  # an interrupted run: two of three epochs
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    train(_cfg(store, out, epochs=3))
    resumed = pd.read_csv(out / "metrics.csv")
    assert resumed["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), full.drop(columns="seconds"), atol=1e-6)
    with pytest.raises(Exception, match="optimiser"):
        train(_cfg(store, out, epochs=4))


@pytest.mark.slow
def test_resume_refuses_another_head(store, tmp_path):
    out = tmp_path / "other"
    train(_cfg(store, out, epochs=1))
    with pytest.raises(Exception, match="another head config"):
        train(_cfg(store, out, epochs=1, head=head_config("tiny", fusion="clip")))


@pytest.mark.slow
def test_sweep_equals_separate_runs_and_writes_the_table(store, tmp_path):
    heads = {"mul": head_config("tiny", fusion="mul"), "clip": head_config("tiny", fusion="clip")}
    table = sweep(_cfg(store, tmp_path / "sweep"), heads)
    assert table["head"].tolist() == ["mul", "clip"]
    assert {"params", "val_M_J", "val_M_F", "train_seconds"} <= set(table.columns)
    assert (tmp_path / "sweep" / "comparison.md").read_text().count("|") > 10
    for name, head in heads.items():
        alone = fit(_cfg(store, tmp_path / f"alone-{name}"), {name: head})
        swept = pd.read_csv(tmp_path / "sweep" / name / "metrics.csv")
        single = pd.read_csv(tmp_path / f"alone-{name}" / "metrics.csv")
        # Each head sees the same batches in the same order and owns its trainable weights.
        pd.testing.assert_frame_equal(
            swept.drop(columns="seconds"), single.drop(columns="seconds"), atol=1e-5
        )
        assert alone["val_M_J"][0] == pytest.approx(table.set_index("head").loc[name, "val_M_J"], abs=1e-6)


def test_sweep_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "sweep.json"
    bad.write_text(json.dumps({"a": {"fusion": "nope"}}))
    with pytest.raises(ValueError, match="sweep.json"):
        load_sweep(bad)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps([{"name": "x", "fusion": "clap"}]))
    assert load_sweep(ok)["x"].fusion == "clap"


@pytest.mark.slow
def test_head_checkpoint_refuses_other_frozen_weights(store, tmp_path):
    cfg = _cfg(store, tmp_path / "fp", epochs=1)
    train(cfg)
    widths = read_head(tmp_path / "fp" / "best.pt").widths()
    model = build_model(cfg.head_config(), cfg.preset, **widths)
    ck = load_head(tmp_path / "fp" / "best.pt", model).data
    assert all(torch.equal(v, model.trainable_state_dict()[k]) for k, v in ck["trainable"].items())
    bad = {**ck, "frozen": {**ck["frozen"], "sam2": "0" * 16}}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="other frozen weights.*sam2"):
        load_head(tmp_path / "bad.pt", model)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_head(tmp_path / "junk.pt", model)


def _finite_checkpoints(out: Path) -> list[str]:
    """The checkpoints under out, each checked to hold only finite trainable weights."""
    found = sorted(out.rglob("*.pt"))
    for path in found:
        ck = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in ck["trainable"].values()), path
    return [p.name for p in found]


def test_a_diverging_run_stops_and_saves_nothing_non_finite(store, tmp_path):
    out = tmp_path / "diverge"
    cfg = _cfg(store, out, epochs=3).model_copy(
        update={"optim": OptimConfig(epochs=3, batch_size=4, lr=1e12)}
    )
    with pytest.raises(TrainingDiverged, match="not finite") as e:
        train(cfg)
    assert "lower the learning rate" in str(e.value) and str(out) in str(e.value)
    _finite_checkpoints(out)


def test_non_finite_features_name_the_rows(store, tmp_path, monkeypatch):
    """A NaN in one row's cached CLIP feature stops training at once, naming the video, frame and row."""
    real = FeatureBatches.__getitem__

    def poisoned(self, i):
        batch = real(self, i)
        if self.shuffle and i == 1:
            batch["clip"][2] = float("nan")
        return batch

    monkeypatch.setattr(FeatureBatches, "__getitem__", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged) as e:
        train(_cfg(store, out))
    msg = str(e.value)
    assert "epoch 1, step 2" in msg and "non-finite features in 1 row(s)" in msg and "frame 1 (row " in msg
    assert "av2t cache verify" in msg and not list(out.rglob("*.pt"))


@pytest.mark.slow
def test_checkpoints_are_written_atomically(store, tmp_path, monkeypatch):
    out = tmp_path / "atomic"
    train(_cfg(store, out, epochs=2, stop_after=1))
    before = (out / "best.pt").read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OutputError, match="no space left on the device"):
        train(_cfg(store, out, epochs=2))
    assert (out / "best.pt").read_bytes() == before  # the last good head, intact
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
