"""The evaluate stage: cached and end-to-end agree, the report files, vision bias, masks `av2t score` re-scores."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from cache import FingerprintMismatch
from flows.cli import main as cli
from pipeline.checkpoints import CheckpointError
from pipeline.data.clips import read_clips
from pipeline.scoring import expected_files, score_folder
from stages.evaluate import EvalConfig, evaluate, swap_order

REPORT_KEYS = {
    "M_J",
    "M_F",
    "M_F_batching",
    "M_F_batch_free",
    "M_F_raw_logits_av2t",
    "mode",
    "subset",
    "split",
    "frames",
    "videos",
    "checkpoint",
    "model",
    "data",
    "seconds",
    "created",
}
VISION_KEYS = {"M_J_real", "M_J_swapped", "M_J_silence", "drop_swapped", "drop_silence"}


@pytest.fixture(scope="module")
def run(s4_run, tmp_path_factory) -> dict[str, Path | str]:
    """The shared synthetic S4 run (2 test videos, float16 store, a head trained one epoch); outputs here."""
    return {**s4_run, "tmp": tmp_path_factory.mktemp("evaluate")}


def _cfg(run, out: str, **kw) -> EvalConfig:
    base = {
        "checkpoint": run["checkpoint"],
        "root": run["root"],
        "subset": "s4",
        "store": run["store"],
        "device": "cpu",
        "out": run["tmp"] / out,
        "progress": False,
        "overlays": 1,
    }
    return EvalConfig(**(base | kw))


@pytest.fixture(scope="module")
def cached(run) -> dict:
    return evaluate(_cfg(run, "cached", vision_bias=True, save_masks=True))


@pytest.fixture(scope="module")
def end_to_end(run) -> dict:
    # No vision bias here: it triples the forward passes, and its cached twin covers the keys.
    return evaluate(_cfg(run, "e2e", mode="end-to-end", store=None, save_masks=True))


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {
        p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))
    }


@pytest.mark.slow
def test_cached_and_end_to_end_agree(run, cached, end_to_end):
    for key in ("M_J", "M_F", "M_F_batch_free", "M_F_raw_logits_av2t"):
        assert cached[key] == pytest.approx(end_to_end[key], abs=1e-3), key
    assert (cached["frames"], cached["videos"]) == (end_to_end["frames"], end_to_end["videos"]) == (10, 2)
    assert cached["data"] == end_to_end["data"] and cached["model"] == end_to_end["model"]
    a, b = _masks(run["tmp"] / "cached" / "masks"), _masks(run["tmp"] / "e2e" / "masks")
    assert a.keys() == b.keys() and len(a) == 10
    # Saved levels are >= 128 exactly where sigmoid(logit) > 0.5 (probability_png).
    agree = [np.mean((a[k] > 127) == (b[k] > 127)) for k in a]
    assert min(agree) >= 0.999, agree


def test_report_files(run, cached):
    out = run["tmp"] / "cached"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(cached))
    assert set(cached) >= REPORT_KEYS and cached["mode"] == "cached" and cached["split"] == "test"
    assert cached["M_F_batching"] == "one video per batch (AV2T test); batch-free M_F also reported"
    assert set(cached["model"]) >= {"head", "frozen", "features"}
    assert set(cached["model"]["features"]) == {"clip", "clap", "sam2", "beit3"}
    assert len(cached["data"]["clips_digest"]) == 64 and cached["data"]["root"] == str(run["root"])
    assert all(0 <= cached[k] <= 1 for k in ("M_J", "M_F", "M_F_batch_free"))
    frames = pd.read_csv(out / "frames.csv")
    assert list(frames.columns) == ["video", "frame", "category", "iou", "gt_empty"] and len(frames) == 10
    videos = pd.read_csv(out / "videos.csv")
    assert list(videos.columns) == ["video", "category", "frames", "M_J", "F"] and len(videos) == 2
    assert np.float32(videos["M_J"].mean()) == pytest.approx(cached["M_J"], abs=1e-6)
    cats = pd.read_csv(out / "categories.csv")
    assert list(cats.columns) == ["category", "videos", "frames", "M_J", "M_F"]
    md = (out / "report.md").read_text()
    assert "| M_J |" in md and "M_F batching: one video per batch" in md and "## Per category" in md
    assert "## Vision bias" in md


def test_overlays_of_the_best_and_worst_videos(run, cached):
    out = run["tmp"] / "cached"
    videos = pd.read_csv(out / "videos.csv", keep_default_na=False)
    best = videos.loc[videos["M_J"].idxmax(), "video"]
    worst = videos.loc[videos["M_J"].idxmin(), "video"]
    assert cached["overlays"] == [f"overlays/best_1_{best}.png", f"overlays/worst_1_{worst}.png"]
    md = (out / "report.md").read_text()
    for rel in cached["overlays"]:
        with Image.open(out / rel) as img:
            assert img.size == (3 * 224, 18 + 5 * 224)
        assert f"]({rel})" in md


def test_vision_bias_is_reported(cached, end_to_end):
    vb = cached["vision_bias"]
    assert set(vb) >= VISION_KEYS and all(math.isfinite(vb[k]) for k in VISION_KEYS)
    assert vb["M_J_real"] == cached["M_J"]
    assert vb["drop_swapped"] == pytest.approx(vb["M_J_real"] - vb["M_J_swapped"])
    assert vb["drop_silence"] == pytest.approx(vb["M_J_real"] - vb["M_J_silence"])
    assert "vision_bias" not in end_to_end


def test_score_on_saved_masks_equals_the_report(run, cached, capsys):
    masks = run["tmp"] / "cached" / "masks"
    args = ["score", "--pred", str(masks), "--root", str(run["root"]), "--subset", "s4", "--split", "test"]
    assert cli([*args, "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored == score_folder(masks, run["root"], "s4", "test")
    # Every official threshold decision survives the PNG (probability_png), so both scores do.
    assert scored["M_J"] == cached["M_J"]
    assert scored["M_F"] == pytest.approx(cached["M_F"], abs=1e-6)
    assert (scored["frames"], scored["videos"]) == (cached["frames"], cached["videos"])
    assert {p.relative_to(masks) for p in masks.rglob("*.png")} == {
        p.relative_to(masks) for p in expected_files(masks, read_clips(run["root"], "s4", "test"))
    }


def test_cli_evaluate_prints_the_table(run, cached, capsys):
    out = run["tmp"] / "cli"
    args = ["evaluate", "--checkpoint", str(run["checkpoint"]), "--root", str(run["root"]), "--subset", "s4"]
    args += ["--store", run["store"], "--out", str(out), "--device", "cpu", "--overlays", "0"]
    assert cli(args) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["M_J"] == cached["M_J"] and report["M_F"] == cached["M_F"] and report["overlays"] == []
    assert re.search(rf"^  M_J +{cached['M_J']:.4f}$", text, re.M) and str(out / "report.json") in text
    values = [line.rstrip()[-6:] for line in text.splitlines() if re.match(r"  \S.* \d\.\d{4}$", line)]
    starts = {line.rindex(" ") for line in text.splitlines() if re.match(r"  \S.* \d\.\d{4}$", line)}
    assert len(values) >= 3 and len(starts) == 1  # the values line up, however long the labels


def test_other_feature_fingerprints_are_refused(run, tmp_path, capsys):
    ck = torch.load(run["checkpoint"], weights_only=True)
    have = ck["features"]["clip"]
    bad = tmp_path / "bad.pt"
    torch.save({**ck, "features": {**ck["features"], "clip": "0" * 16}}, bad)
    with pytest.raises(FingerprintMismatch) as e:
        evaluate(_cfg(run, "bad", checkpoint=bad))
    assert "0" * 16 in str(e.value) and have in str(e.value) and "clip" in str(e.value)
    with pytest.raises(CheckpointError) as e:
        evaluate(_cfg(run, "bad", checkpoint=bad, mode="end-to-end", store=None))
    assert "0" * 16 in str(e.value) and have in str(e.value)
    args = ["evaluate", "--checkpoint", str(bad), "--root", str(run["root"]), "--subset", "s4"]
    assert cli([*args, "--store", run["store"], "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "other features" in capsys.readouterr().err


def test_config_is_strict(run):
    with pytest.raises(ValidationError, match="needs a store"):
        _cfg(run, "x", store=None)
    with pytest.raises(ValidationError, match="extra"):
        _cfg(run, "x", bogus=1)


def test_swap_order_is_a_fixed_derangement():
    assert swap_order(3).tolist() == [1, 2, 0]
    assert swap_order(1).tolist() == [0]  # one video: nothing else to hear


def test_a_new_metric_is_one_registered_class(run, monkeypatch, capsys):
    """A registered evaluator reaches report.json, its score table, report.md and the CLI with no other change."""
    from pipeline.evaluation import evaluators as ev

    monkeypatch.setattr(ev, "EVALUATORS", dict(ev.EVALUATORS))
    monkeypatch.setattr(ev, "DEFAULT_EVALUATORS", list(ev.DEFAULT_EVALUATORS))

    @ev.register()
    class PixelAccuracy(ev.Evaluator):
        """Share of pixels whose thresholded prediction equals the GT."""

        name = "pixel_accuracy"

        def reset(self):
            self.hits, self.total = 0, 0

        def process(self, out):
            pred = torch.sigmoid(out.logits["real"]) > 0.5
            self.hits += int((pred == (out.gt != 0)).sum())
            self.total += pred.numel()

        def evaluate(self):
            return {"pixel_accuracy": self.hits / self.total}

        def rows(self, result):
            return [ev.ScoreRow("pixel_accuracy", "pixel accuracy", result["pixel_accuracy"])]

    out = run["tmp"] / "new-metric"
    args = ["evaluate", "--checkpoint", str(run["checkpoint"]), "--root", str(run["root"]), "--subset", "s4"]
    assert cli([*args, "--store", run["store"], "--out", str(out), "--device", "cpu", "--overlays", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert 0 < report["pixel_accuracy"] <= 1 and "pixel_accuracy" in report["evaluators"]
    assert {
        "key": "pixel_accuracy",
        "label": "pixel accuracy",
        "value": report["pixel_accuracy"],
        "compare": False,
    } in report["score_rows"]
    assert f"| pixel accuracy | {report['pixel_accuracy']:.4f} |" in (out / "report.md").read_text()
    assert f"{report['pixel_accuracy']:.4f}" in capsys.readouterr().out


def test_a_head_of_another_subset_is_refused_or_flagged(run, caplog):
    from pipeline.data.synth import write_synthetic

    root = run["tmp"] / "ms3-data"
    write_synthetic(root, "ms3", videos=4, seed=1)
    kw = {"subset": "ms3", "root": root, "mode": "end-to-end", "store": None, "overlays": 0}
    with pytest.raises(
        CheckpointError, match="trained on s4, and is scored here on ms3: refused; pass --allow-other-subset"
    ):
        evaluate(_cfg(run, "other", **kw))
    report = evaluate(_cfg(run, "other", allow_other_subset=True, **kw))
    assert report["warnings"] == [f"{run['checkpoint']} was trained on s4, and is scored here on ms3"]
    assert report["model"]["trained_subset"] == "s4" and "trained on s4" in caplog.text


def test_evaluate_compares_with_an_earlier_report_without_prefect(run, cached, capsys):
    """`av2t evaluate --compare-with`: the library's comparison, the same one the flows publish."""
    out = run["tmp"] / "again"
    args = ["evaluate", "--checkpoint", str(run["checkpoint"]), "--root", str(run["root"]), "--subset", "s4"]
    args += ["--store", run["store"], "--device", "cpu", "--out", str(out), "--overlays", "0"]
    assert cli([*args, "--compare-with", str(run["tmp"] / "cached"), "--tolerance", "0.001"]) == 0
    said = capsys.readouterr().out
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["previous"] == str(run["tmp"] / "cached" / "report.json")
    assert saved["change"].startswith("same head, same data")
    rows = {r["metric"]: r for r in saved["rows"]}
    assert rows["M_J"]["previous"] == cached["M_J"] and rows["M_J"]["delta"] == 0.0
    assert not any(r["regression"] for r in saved["rows"])
    assert f"compared with {run['tmp'] / 'cached' / 'report.json'}" in said and "REGRESSION" not in said
    # A folder of reports: the latest earlier one of the same subset, split and mode is the reference.
    found = evaluate(_cfg(run, "third", overlays=0, compare_with=run["tmp"]))["comparison"]
    assert found["previous"] is not None and found["previous"].endswith("report.json")


def test_threads_apply_to_the_run_only(run):
    """`threads` sets torch's CPU threads for the evaluation; the caller's count is given back after."""
    import torch

    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    seen = []
    evaluate(
        _cfg(run, "threads", threads=want), on_video=lambda done, total: seen.append(torch.get_num_threads())
    )
    assert seen and set(seen) == {want}
    assert torch.get_num_threads() == before
