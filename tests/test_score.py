"""`av2t score` / pipeline.scoring: prediction folders scored with the official metrics, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli import main as cli
from pipeline.data.clips import DataError, read_clips
from pipeline.data.images import load_mask
from pipeline.data.synth import SynthSpec, write_synthetic
from pipeline.metrics import THRESHOLDS, MetricAccumulator
from pipeline.scoring import (
    accumulate_folder,
    expected_files,
    prediction_path,
    probability_logits,
    probability_png,
    score_folder,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A small synthetic S4 tree: 3 test videos, one with a '-' name and one with short audio (empty GTs)."""
    root = tmp_path_factory.mktemp("score") / "data"
    write_synthetic(root, "s4", videos=8, seed=2, spec=SynthSpec(test_fraction=0.4))
    return root


def _write(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def _soft_predictions(root: Path, pred: Path, seed: int = 0) -> dict[tuple[str, int], np.ndarray]:
    """Soft maps near the GT (so scores are neither 0 nor 1), written in the prediction layout."""
    rng = np.random.default_rng(seed)
    out = {}
    for clip in read_clips(root, "s4", "test"):
        for k in clip.annotated:
            gt = load_mask(clip.mask_paths[k - 1])
            noisy = np.clip(gt * 170 + rng.normal(60, 50, gt.shape), 0, 255).round().astype(np.uint8)
            _write(prediction_path(pred, clip.id, k), noisy)
            out[clip.id, k] = noisy
    return out


def test_gt_copies_score_one(root, tmp_path):
    pred = tmp_path / "pred"
    for clip in read_clips(root, "s4", "test"):
        for k in clip.annotated:
            _write(prediction_path(pred, clip.id, k), load_mask(clip.mask_paths[k - 1]) * 255)
    r = score_folder(pred, root, "s4", "test")
    assert r["M_J"] == pytest.approx(1.0, abs=1e-6) and r["M_F"] == pytest.approx(1.0, abs=1e-6)
    assert r["videos"] == 3 and r["frames"] == 15 and "one video" in r["batching"]


def test_soft_maps_equal_the_accumulator_on_their_probabilities(root, tmp_path):
    pred = tmp_path / "pred"
    maps = _soft_predictions(root, pred)
    acc = accumulate_folder(pred, root, "s4", "test")
    ref = MetricAccumulator(batching="video")
    for clip in read_clips(root, "s4", "test"):
        ks = list(clip.annotated)
        logits = torch.stack([probability_logits(maps[clip.id, k]) for k in ks])
        gt = torch.stack([torch.from_numpy(load_mask(clip.mask_paths[k - 1])) for k in ks])
        ref.add(clip.id, logits, gt, frames=ks, category=clip.category)
    assert acc.summary() == ref.summary()
    assert 0.05 < acc.summary()["M_J"] < 0.95
    frames = acc.frame_table()
    assert frames["frame"].tolist() == [1, 2, 3, 4, 5] * 3 and frames["category"].notna().all()


def test_probabilities_compare_like_v_over_255():
    """sigmoid(logit(v/255)) may be an ulp off, but every threshold comparison the metrics make holds."""
    v = torch.arange(256, dtype=torch.uint8)
    exact = v.float() / 255
    back = torch.sigmoid(probability_logits(v).repeat(64))[:256]  # vectorised kernel, as on real frames
    assert back[0] == 0 and back[255] == 1
    assert torch.equal(back[:, None] >= THRESHOLDS[None], exact[:, None] >= THRESHOLDS[None])
    assert torch.equal(back > 0.5, exact > 0.5)


def test_probability_png_keeps_the_threshold():
    p = torch.tensor([0.0, 0.5, np.nextafter(0.5, 1, dtype=np.float32), 0.4999999, 0.75, 1.0])
    v = probability_png(p)
    assert v.tolist() == [0, 127, 128, 127, 191, 255]
    rand = torch.rand(100_000)
    assert np.array_equal(probability_png(rand) > 127, (rand > 0.5).numpy())


def test_probability_png_keeps_every_m_f_threshold_decision():
    # Random probabilities plus each threshold and its float32 neighbours: the hardest cases.
    near = torch.cat([THRESHOLDS, torch.nextafter(THRESHOLDS, torch.tensor(0.0))])
    near = torch.cat([near, torch.nextafter(THRESHOLDS, torch.tensor(2.0)).clamp(max=1)])
    p = torch.cat([torch.rand(20_000), near])
    p = p[p != 0.5]  # the one value whose M_F decision at t_127 = 0.5 the strict M_J rule wins
    back = torch.sigmoid(probability_logits(probability_png(p)))
    assert torch.equal(back[:, None] >= THRESHOLDS[None], p[:, None] >= THRESHOLDS[None])
    assert torch.equal(back > 0.5, p > 0.5)
    v = probability_png(p).astype(int)
    assert np.abs(v - np.round(p.numpy() * 255)).max() <= 1


def test_missing_files_are_all_named(root, tmp_path, capsys):
    pred = tmp_path / "pred"
    _soft_predictions(root, pred)
    clips = read_clips(root, "s4", "test")
    gone = [prediction_path(pred, clips[0].id, 2), prediction_path(pred, clips[2].id, 5)]
    shutil.rmtree(pred / clips[1].id)
    gone += [prediction_path(pred, clips[1].id, k) for k in clips[1].annotated]
    for p in gone[:2]:
        p.unlink()
    with pytest.raises(DataError) as e:
        score_folder(pred, root, "s4", "test")
    assert f"{len(gone)} of 15" in str(e.value)
    assert all(str(p) in str(e.value) for p in gone)
    assert cli(["score", "--pred", str(pred), "--root", str(root), "--subset", "s4", "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("av2t: error:") and all(str(p) in err for p in gone)


def test_bad_files_are_named(root, tmp_path):
    pred = tmp_path / "pred"
    _soft_predictions(root, pred)
    files = expected_files(pred, read_clips(root, "s4", "test"))
    _write(files[1], np.zeros((100, 120)))  # wrong size
    files[7].write_bytes(b"not a png")
    Image.fromarray(np.zeros((224, 224), np.uint16)).save(files[11])  # 16-bit
    with pytest.raises(DataError) as e:
        score_folder(pred, root, "s4", "test")
    msg = str(e.value)
    assert "3 file(s) cannot be scored" in msg
    assert f"{files[1]}: prediction is 120x100" in msg and "224x224" in msg
    assert f"{files[7]}: unreadable" in msg and f"{files[11]}: mode" in msg


def test_cli_json_equals_the_python_api(root, tmp_path, capsys):
    pred = tmp_path / "pred"
    _soft_predictions(root, pred, seed=3)
    args = ["score", "--pred", str(pred), "--root", str(root), "--subset", "s4", "--split", "test"]
    assert cli([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == score_folder(pred, root, "s4", "test")
    assert out["values"] == "probability" and out["modes"] == {"L": 15}
    assert out["convention"] == "8-bit grey levels read as probabilities v/255 (detected over the folder)"
    assert cli(args) == 0
    text = capsys.readouterr().out
    assert f"M_J {out['M_J']:.4f}" in text and "15 frames, 3 videos" in text


def test_missing_folder_is_a_clear_error(root, tmp_path):
    with pytest.raises(DataError, match="prediction folder not found"):
        score_folder(tmp_path / "nope", root, "s4", "test")
