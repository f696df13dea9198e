"""The train stage: logs, checkpoints with fingerprints, resume, refusal, and sweeps equal to single runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from synthetic_run import synthetic_store

from pipeline.checkpoints import CheckpointError
from pipeline.model import head_config
from pipeline.model.build import build_model
from pipeline.model.head_checkpoint import load_head, read_head
from pipeline.settings import OptimConfig, TrainConfig
from stages.train import fit, load_sweep, sweep, train


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
    assert list(log.columns) == ["epoch", "train_loss", "val_loss", "val_M_J", "val_M_F", "lr", "seconds"]
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


def test_resume_refuses_another_head(store, tmp_path):
    out = tmp_path / "other"
    train(_cfg(store, out, epochs=1))
    with pytest.raises(Exception, match="another head config"):
        train(_cfg(store, out, epochs=1, head=head_config("tiny", fusion="clip")))


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
