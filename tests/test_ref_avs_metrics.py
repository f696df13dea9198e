"""Ref-AVS J / F / S re-derived from the official formulas (written out here in plain loops) on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline import ref_avs_metrics as m


def _sig(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _ref_j(logits: np.ndarray, gt: np.ndarray) -> float:
    """mask_iou in words: threshold 0.4; empty GT -> background agreement over all pixels; mean over frames."""
    total = 0.0
    for lg, g in zip(logits, gt, strict=True):
        p = _sig(lg) > 0.4
        g = g > 0
        if g.sum() == 0:
            total += (~p & ~g).sum() / (g.size + 1e-7)
        else:
            total += (p & g).sum() / ((p | g).sum() + 1e-7)
    return total / len(logits)


def _ref_f(logits: np.ndarray, gt: np.ndarray) -> float:
    """Eval_Fmeasure in words: skip empty GT, 255 thresholds, beta^2 0.3, mean curve, max; 0 with none counted."""
    ts = torch.linspace(0, 1 - 1e-10, 255, dtype=torch.float32).double().numpy()
    curves = []
    for lg, g in zip(logits, gt, strict=True):
        g = g > 0
        if g.sum() == 0:
            continue
        prob = _sig(lg.astype(np.float32)).astype(np.float32).astype(np.float64)
        curve = []
        for t in ts:
            pos = prob >= t
            tp = (pos & g).sum()
            prec, rec = tp / (pos.sum() + 1e-20), tp / (g.sum() + 1e-20)
            f = 1.3 * prec * rec / (0.3 * prec + rec) if (0.3 * prec + rec) > 0 else 0.0
            curve.append(f)
        curves.append(curve)
    return float(np.mean(curves, axis=0).max()) if curves else 0.0


def _ref_s(logits: np.ndarray) -> float:
    return math.sqrt((_sig(logits) > 0.5).sum() / logits.size)


def test_hand_made_j():
    # 2x2 frames. Frame 1: GT one pixel, prediction prob 0.45 there (> 0.4 counts) and 0.35 elsewhere -> IoU 1.
    # Frame 2: empty GT, one pixel predicted -> 3 of 4 background pixels agree -> 0.75.
    p = np.array([[[0.45, 0.35], [0.35, 0.35]], [[0.9, 0.1], [0.1, 0.1]]])
    lg = torch.tensor(np.log(p / (1 - p)), dtype=torch.float32)
    gt = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    assert m.batch_j(lg, gt) == pytest.approx((1 / (1 + 1e-7) + 3 / (4 + 1e-7)) / 2, abs=1e-7)
    # S: 2 of 8 pixels above 0.5? prob 0.45 is not, 0.9 is: 1 of 8
    assert m.batch_s(lg) == pytest.approx(math.sqrt(1 / 8))


def test_hand_made_f():
    # One frame, GT 2 of 4 pixels; probs 0.8 on both GT pixels, 0.6 on one background pixel.
    # t <= 0.6: P = 2/3, R = 1 -> F = 1.3*(2/3)/(0.2+1) = 0.7222; 0.6 < t <= 0.8: P = R = 1 -> F = 1. Max 1.
    p = np.array([[[0.8, 0.8], [0.6, 0.0001]]])
    lg = torch.tensor(np.log(p / (1 - p)), dtype=torch.float32)
    gt = torch.tensor([[[1, 1], [0, 0]]])
    assert m.batch_f(lg, gt) == pytest.approx(1.0, abs=1e-6)
    assert m.batch_f(lg, torch.zeros_like(gt)) == 0.0  # every GT empty: the zero curve
    # GT on the 0.6 pixel only: best threshold keeps the 0.6 and both 0.8 -> P 1/3, R 1 -> 1.3/3/(0.1+1)
    gt2 = torch.tensor([[[0, 0], [1, 0]]])
    assert m.batch_f(lg, gt2) == pytest.approx(1.3 * (1 / 3) / (0.3 / 3 + 1), abs=1e-6)


def test_random_batches_match_the_formulas():
    g = np.random.default_rng(0)
    for _ in range(5):
        n = int(g.integers(1, 7))
        lg = g.normal(0, 2, size=(n, 12, 12)).astype(np.float32)
        gt = (g.random((n, 12, 12)) < g.random()).astype(np.uint8)
        gt[0] = 0  # an empty GT in every batch
        t_lg, t_gt = torch.from_numpy(lg), torch.from_numpy(gt)
        assert m.batch_j(t_lg, t_gt) == pytest.approx(_ref_j(lg, gt), abs=1e-6)
        assert m.batch_f(t_lg, t_gt) == pytest.approx(_ref_f(lg, gt), abs=1e-6)
        assert m.batch_s(t_lg) == pytest.approx(_ref_s(lg), abs=1e-6)


def test_split_scores_batch_as_the_official_loop():
    """Ten expressions of 3 frames: official batches of 4, 4, 2 expressions, each a mean, then the batch mean."""
    g = np.random.default_rng(1)
    scores = m.RefAvsScores("test_s")
    lgs, gts = [], []
    for i in range(10):
        lg = g.normal(0, 2, size=(3, 8, 8)).astype(np.float32)
        gt = (g.random((3, 8, 8)) < 0.3).astype(np.uint8)
        if i in (8, 9):
            gt[:] = 0  # the last batch has no counted frame: its F is 0.0
        scores.add(f"e{i}", torch.from_numpy(lg), torch.from_numpy(gt))
        lgs.append(lg)
        gts.append(gt)
    batches = [(0, 4), (4, 8), (8, 10)]
    cat = lambda xs, a, b: np.concatenate(xs[a:b])  # noqa: E731
    want_j = np.mean([_ref_j(cat(lgs, a, b), cat(gts, a, b)) for a, b in batches])
    want_f = np.mean([_ref_f(cat(lgs, a, b), cat(gts, a, b)) for a, b in batches])
    want_s = np.mean([_ref_s(cat(lgs, a, b)) for a, b in batches])
    got = scores.official()
    assert got["J"] == pytest.approx(want_j, abs=1e-6)
    assert got["F"] == pytest.approx(want_f, abs=1e-6)
    assert got["S"] == pytest.approx(want_s, abs=1e-6)
    free = scores.batch_free()
    assert free["J"] == pytest.approx(_ref_j(np.concatenate(lgs), np.concatenate(gts)), abs=1e-6)
    assert free["F"] == pytest.approx(_ref_f(np.concatenate(lgs), np.concatenate(gts)), abs=1e-6)
    assert free["S"] == pytest.approx(_ref_s(np.concatenate(lgs)), abs=1e-6)
    assert scores.summary()["batch_expressions"] == 4
    assert m.seen_unseen_mean({"J": 0.5, "F": 0.4}, {"J": 0.3, "F": 0.2}) == pytest.approx(
        {"J": 0.4, "F": 0.3}
    )


def test_protocol_size():
    assert m.to_protocol(torch.zeros(2, 224, 224)).shape == (2, 256, 256)
