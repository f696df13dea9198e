"""pipeline.metrics against a loop-by-loop restatement of the official AVSBench mask_iou / Eval_Fmeasure."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from pipeline.metrics import (
    THRESHOLDS,
    MetricAccumulator,
    f_curve,
    frame_iou,
    m_f,
    m_f_raw_logits,
    m_j,
    threshold_buckets,
)

# ---------------------------------------------------------------------------------------------------
# Reference: the official computation restated plainly (CPU, float32, one threshold at a time).
# ---------------------------------------------------------------------------------------------------


def ref_frame_iou(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-frame IoU the way AVSBench mask_iou builds it (before its sum / N)."""
    target = gt.float()
    n_pixels = logits.size(-1) * logits.size(-2)
    no_obj = target.sum(2).sum(1) == 0
    pred = (torch.sigmoid(logits.float()) > 0.5).int()
    inter = (pred * target).sum(2).sum(1)
    union = torch.max(pred, target).sum(2).sum(1)
    inter_no_obj = ((1 - target) * (1 - pred)).sum(2).sum(1)
    inter[no_obj] = inter_no_obj[no_obj]
    union[no_obj] = n_pixels
    return inter / (union + 1e-7)


def ref_m_j(logits: torch.Tensor, gt: torch.Tensor) -> float:
    """AVSBench mask_iou: float32 sum of frame IoUs over N."""
    return (torch.sum(ref_frame_iou(logits, gt)) / logits.size(0)).item()


def ref_pr(prob: torch.Tensor, y: torch.Tensor, num: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """AVSBench _eval_pr (CPU branch): precision and recall at each linspace threshold."""
    prec, recall = torch.zeros(num), torch.zeros(num)
    thresholds = torch.linspace(0, 1 - 1e-10, num)
    for i in range(num):
        hit = (prob >= thresholds[i]).float()
        tp = (hit * y).sum()
        prec[i] = tp / (hit.sum() + 1e-20)
        recall[i] = tp / (y.sum() + 1e-20)
    return prec, recall


def ref_curve(logits: torch.Tensor, gt: torch.Tensor, sigmoid: bool = True) -> tuple[torch.Tensor, int]:
    """AVSBench Eval_Fmeasure's running mean curve and frame count (sigmoid=False: the AV2T variant)."""
    prob = torch.sigmoid(logits.float()) if sigmoid else logits.float()
    gt = gt.float()
    beta2 = 0.3
    avg_f, img_num = 0.0, 0
    score = torch.zeros(255)
    for i in range(prob.size(0)):
        if torch.mean(gt[i]) == 0.0:
            continue
        prec, recall = ref_pr(prob[i], gt[i])
        f = (1 + beta2) * prec * recall / (beta2 * prec + recall)
        f[f != f] = 0
        avg_f += f
        img_num += 1
        score = avg_f / img_num
    return score, img_num


def ref_m_f(logits: torch.Tensor, gt: torch.Tensor, sigmoid: bool = True) -> float:
    """AVSBench Eval_Fmeasure: max of the mean curve."""
    return ref_curve(logits, gt, sigmoid)[0].max().item()


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------


def random_batch(seed: int, n: int = 5, size: int = 32, empty: tuple[int, ...] = (1,)):
    """Logits correlated with blobby random masks; frames listed in `empty` get an all-zero GT."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, size // 4, size // 4, generator=g)
    gt = torch.nn.functional.interpolate(coarse, size=(size, size)).squeeze(1) > 0.6
    gt[list(empty)] = False
    logits = 3 * (gt.float() - 0.5) + 2.5 * torch.randn(n, size, size, generator=g)
    return logits, gt.float()


def tie_logits() -> torch.Tensor:
    """Logits whose float32 sigmoid lands exactly on the official thresholds (0.5 included)."""
    t = THRESHOLDS[1:-1].double()
    base = torch.log(t / (1 - t)).float()
    steps = torch.arange(-8, 9, dtype=torch.float32)
    cand = base[:, None] + steps[None, :] * base.abs().clamp_min(1e-3)[:, None] * 2**-23
    hit = torch.sigmoid(cand) == THRESHOLDS[1:-1, None]
    return cand[hit]


def check_against_reference(logits: torch.Tensor, gt: torch.Tensor) -> None:
    """Every public per-batch function equals the reference to 1e-6."""
    torch.testing.assert_close(frame_iou(logits, gt), ref_frame_iou(logits, gt), atol=1e-6, rtol=0)
    assert m_j(logits, gt) == pytest.approx(ref_m_j(logits, gt), abs=1e-6)
    curve, counted = f_curve(logits, gt)
    ref, ref_counted = ref_curve(logits, gt)
    assert counted == ref_counted
    torch.testing.assert_close(curve, ref, atol=1e-6, rtol=0)
    assert m_f(logits, gt) == pytest.approx(ref_m_f(logits, gt), abs=1e-6)
    assert m_f_raw_logits(logits, gt) == pytest.approx(ref_m_f(logits, gt, sigmoid=False), abs=1e-6)


# ---------------------------------------------------------------------------------------------------
# Per-batch functions against the reference
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_batches_match_reference(seed):
    """Random logits and masks, one frame with an empty GT."""
    check_against_reference(*random_batch(seed))


def test_full_size_batch_is_bit_exact():
    """A 5 x 224 x 224 batch: curves and IoUs equal the reference bit for bit."""
    logits, gt = random_batch(7, n=5, size=224, empty=(3,))
    assert torch.equal(frame_iou(logits, gt), ref_frame_iou(logits, gt))
    curve, counted = f_curve(logits, gt)
    assert torch.equal(curve, ref_curve(logits, gt)[0]) and counted == 4


def test_all_empty_batch():
    """No foreground anywhere: M_F is the official 0.0 with no frame counted; M_J scores background."""
    logits, gt = random_batch(3, empty=(0, 1, 2, 3, 4))
    curve, counted = f_curve(logits, gt)
    assert counted == 0 and torch.equal(curve, torch.zeros(255))
    assert m_f(logits, gt) == 0.0
    background = (torch.sigmoid(logits) <= 0.5).float().mean((1, 2))
    torch.testing.assert_close(frame_iou(logits, gt), background, atol=1e-6, rtol=0)
    check_against_reference(logits, gt)


@pytest.mark.parametrize("value", [-1e4, -200.0, 0.0, 20.0, 1e4])
def test_constant_predictions(value):
    """Empty (very negative), tied at 0.5, and full (very positive, prob exactly 1.0) predictions."""
    _, gt = random_batch(5, empty=(2,))
    check_against_reference(torch.full_like(gt, value), gt)


def test_single_pixel_masks():
    """One foreground pixel per frame, hit, missed, or predicted alone."""
    gt = torch.zeros(4, 8, 8)
    gt[:, 3, 4] = 1
    logits = torch.full((4, 8, 8), -5.0)
    logits[0, 3, 4] = 5.0  # exact hit
    logits[1, 0, 0] = 5.0  # wrong pixel
    logits[2] = 5.0  # everything
    logits[3] = torch.linspace(-3, 3, 64).view(8, 8)
    check_against_reference(logits, gt)
    assert frame_iou(logits, gt)[:3].tolist() == pytest.approx([1.0, 0.0, 1 / 64], abs=1e-6)


def test_ties_at_thresholds():
    """Probabilities exactly equal to thresholds count as positive (prob >= t), as in the official code."""
    ties = tie_logits()
    assert ties.numel() > 50
    n_pix = 3 * 16 * 16
    logits = torch.cat([ties, torch.tensor([0.0, 1e4, -1e4])]).repeat(n_pix // ties.numel() + 1)[:n_pix]
    logits = logits.view(3, 16, 16)
    probs = torch.sigmoid(logits)
    assert (probs.unsqueeze(-1) == THRESHOLDS).any(-1).float().mean() > 0.5  # the ties survive in-batch
    gt = (torch.arange(n_pix) % 3 == 0).float().view(3, 16, 16)
    check_against_reference(logits, gt)
    check_against_reference(logits, 1 - gt)


def test_buckets_count_thresholds_at_or_below_each_score():
    """The fast bucketing equals counting `score >= t_k` directly, around every threshold and at extremes."""
    bits = THRESHOLDS.view(torch.int32)[1:, None] + torch.arange(-40, 41, dtype=torch.int32)
    special = torch.tensor([math.nan, math.inf, -math.inf, 1e38, -1e38, -0.0, 1e-45, 0.5, 2.0, -0.5])
    scores = torch.cat([bits.view(torch.float32).flatten(), THRESHOLDS, special, torch.randn(20000) * 3])
    direct = (scores[:, None] >= THRESHOLDS[None, :]).sum(1)
    assert torch.equal(threshold_buckets(scores).long(), direct)


# ---------------------------------------------------------------------------------------------------
# Hand-computed examples
# ---------------------------------------------------------------------------------------------------


def test_hand_computed_iou():
    """2x2: half-overlap IoU 1/2; empty GT with one foreground pixel predicted scores 3/4 background."""
    logits = torch.tensor([[[9.0, -9.0], [-9.0, -9.0]], [[9.0, -9.0], [-9.0, -9.0]]])
    gt = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert frame_iou(logits, gt).tolist() == pytest.approx([0.5, 0.75], abs=1e-7)
    assert m_j(logits, gt) == pytest.approx(0.625, abs=1e-7)


def test_hand_computed_f():
    """2x2, GT = top row, prob 1.0 on one top pixel and 0.0 elsewhere.

    t_0 = 0: all 4 pixels positive, P = 1/2, R = 1, F = 0.65 / 1.15; every t_k > 0 (t_254 = 1.0 included):
    only the prob-1.0 pixel, P = 1, R = 1/2, F = 0.65 / 0.8 = 0.8125.
    """
    logits = torch.tensor([[[1e4, -1e4], [-1e4, -1e4]]])
    gt = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    curve, counted = f_curve(logits, gt)
    assert counted == 1
    assert curve[0].item() == pytest.approx(0.65 / 1.15, abs=1e-6)
    assert curve[1:].tolist() == pytest.approx([0.8125] * 254, abs=1e-6)
    assert m_f(logits, gt) == pytest.approx(0.8125, abs=1e-6)


def test_perfect_prediction_scores_one():
    """A perfectly separating prediction reaches F = 1 and IoU = 1."""
    gt = torch.zeros(2, 4, 4)
    gt[:, :2] = 1
    logits = 8 * (2 * gt - 1)
    assert m_f(logits, gt) == pytest.approx(1.0, abs=1e-6)
    assert m_j(logits, gt) == pytest.approx(1.0, abs=1e-6)


def test_f_curve_averages_only_non_empty_frames():
    """An empty-GT frame neither counts nor changes the curve."""
    logits, gt = random_batch(11, n=3, empty=())
    with_empty_logits = torch.cat([logits, torch.randn(1, 32, 32)])
    with_empty_gt = torch.cat([gt, torch.zeros(1, 32, 32)])
    curve, counted = f_curve(with_empty_logits, with_empty_gt)
    assert counted == 3
    assert torch.equal(curve, f_curve(logits, gt)[0])


def test_bad_shapes_are_rejected():
    """Both inputs must be the same (N, H, W)."""
    with pytest.raises(ValueError):
        m_j(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError):
        m_f(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))


# ---------------------------------------------------------------------------------------------------
# The AV2T raw-logit variant
# ---------------------------------------------------------------------------------------------------


def test_raw_logit_variant_differs_on_logits_in_unit_interval():
    """With logits in (0, 1), sigmoid squeezes them into (0.5, 0.73): the two threshold grids differ."""
    g = torch.Generator().manual_seed(0)
    gt = (torch.rand(5, 32, 32, generator=g) > 0.5).float()
    logits = (0.35 * gt + 0.65 * torch.rand(5, 32, 32, generator=g)).clamp(1e-3, 1 - 1e-3)
    assert abs(m_f_raw_logits(logits, gt) - m_f(logits, gt)) > 1e-3
    assert m_f_raw_logits(logits, gt) == pytest.approx(ref_m_f(logits, gt, sigmoid=False), abs=1e-6)


def test_raw_logit_variant_is_zero_for_negative_logits():
    """Every logit below 0 is negative at every threshold, so the raw variant scores 0."""
    logits, gt = random_batch(2)
    logits = -logits.abs() - 0.1
    assert m_f_raw_logits(logits, gt) == 0.0
    assert m_f(logits, gt) > 0.0


# ---------------------------------------------------------------------------------------------------
# MetricAccumulator
# ---------------------------------------------------------------------------------------------------


def videos() -> list[tuple[str, str, torch.Tensor, torch.Tensor]]:
    """Four videos of unequal length in two categories, one with an all-empty GT."""
    out = []
    for i, (n, empty, cat) in enumerate(
        [(5, (1,), "dog"), (2, (), "dog"), (5, (0, 1, 2, 3, 4), "cat"), (1, (), "cat")]
    ):
        logits, gt = random_batch(20 + i, n=n, empty=empty)
        out.append((f"v{i}", cat, logits, gt))
    return out


def filled(batching: str) -> MetricAccumulator:
    """An accumulator fed the test videos."""
    acc = MetricAccumulator(batching=batching)
    for name, cat, logits, gt in videos():
        acc.add(name, logits, gt, frames=range(1, logits.shape[0] + 1), category=cat)
    return acc


def test_video_batching_is_mean_of_per_video_scores():
    """ "video": M_F is the mean of per-video m_f (the all-empty video counting 0.0), M_J of m_j."""
    s = filled("video").summary()
    vids = videos()
    assert s["M_F"] == pytest.approx(sum(m_f(lg, gt) for _, _, lg, gt in vids) / len(vids), abs=1e-9)
    assert s["M_J"] == pytest.approx(sum(m_j(lg, gt) for _, _, lg, gt in vids) / len(vids), abs=1e-6)
    assert (s["frames"], s["videos"], s["batching"]) == (13, 4, "video")
    assert (s["gt_empty_frames"], s["gt_empty_videos"]) == (6, 1)


def test_all_batching_pools_frames_and_differs():
    """ "all": curve over every non-empty frame then max, mean IoU over frames; differs from "video"."""
    s_all, s_video = filled("all").summary(), filled("video").summary()
    vids = videos()
    logits = torch.cat([lg for _, _, lg, _ in vids])
    gt = torch.cat([g for _, _, _, g in vids])
    assert s_all["M_F"] == pytest.approx(m_f(logits, gt), abs=1e-6)
    assert s_all["M_J"] == pytest.approx(frame_iou(logits, gt).double().mean().item(), abs=1e-6)
    assert abs(s_all["M_F"] - s_video["M_F"]) > 1e-3
    assert abs(s_all["M_J"] - s_video["M_J"]) > 1e-4


def test_equal_length_videos_give_equal_m_j_in_both_modes():
    """With equal batch sizes the mean of batch means is the mean over frames."""
    modes = {}
    for mode in ("video", "all"):
        acc = MetricAccumulator(batching=mode)
        for i in range(3):
            acc.add(f"v{i}", *random_batch(40 + i))
        modes[mode] = acc.summary()["M_J"]
    assert modes["video"] == pytest.approx(modes["all"], abs=1e-6)


def test_frame_table():
    """One row per frame with the documented columns."""
    table = filled("video").frame_table()
    assert list(table.columns) == ["video", "frame", "category", "iou", "gt_empty"]
    assert len(table) == 13
    name, cat, logits, gt = videos()[0]
    rows = table[table.video == name]
    assert rows.frame.tolist() == [1, 2, 3, 4, 5]
    assert set(rows.category) == {cat}
    assert rows.iou.tolist() == pytest.approx(frame_iou(logits, gt).tolist(), abs=1e-7)
    assert rows.gt_empty.tolist() == [False, True, False, False, False]


def test_video_table():
    """Per-video M_J / F equal m_j / m_f; F is NaN for the all-empty video."""
    table = filled("video").video_table()
    assert list(table.columns) == ["video", "category", "frames", "M_J", "F"]
    for (name, cat, logits, gt), row in zip(videos(), table.itertuples(), strict=True):
        assert (row.video, row.category, row.frames) == (name, cat, logits.shape[0])
        mj, f = row.M_J, row.F
        assert mj == pytest.approx(m_j(logits, gt), abs=1e-7)
        if gt.any():
            assert f == pytest.approx(m_f(logits, gt), abs=1e-7)
        else:
            assert math.isnan(f)


@pytest.mark.parametrize("batching", ["video", "all"])
def test_category_table(batching):
    """A category's row scores its videos exactly as a separate accumulator would."""
    table = filled(batching).category_table().set_index("category")
    assert list(table.reset_index().columns) == ["category", "videos", "frames", "M_J", "M_F"]
    for cat in ("dog", "cat"):
        alone = MetricAccumulator(batching=batching)
        for name, c, logits, gt in videos():
            if c == cat:
                alone.add(name, logits, gt)
        s = alone.summary()
        assert table.loc[cat, "videos"] == s["videos"] and table.loc[cat, "frames"] == s["frames"]
        assert table.loc[cat, "M_J"] == pytest.approx(s["M_J"], abs=1e-9)
        assert table.loc[cat, "M_F"] == pytest.approx(s["M_F"], abs=1e-9)


def test_accumulator_rejects_misuse():
    """Unknown batching, duplicate batch labels and wrong frame counts raise."""
    with pytest.raises(ValueError):
        MetricAccumulator(batching="frames")
    acc = MetricAccumulator()
    logits, gt = random_batch(0)
    acc.add("a", logits, gt)
    with pytest.raises(ValueError):
        acc.add("a", logits, gt)
    with pytest.raises(ValueError):
        acc.add("b", logits, gt, frames=[1, 2])


def test_empty_accumulator_tables():
    """No batches: empty tables with the documented columns, NaN scores."""
    acc = MetricAccumulator()
    assert isinstance(acc.frame_table(), pd.DataFrame) and acc.frame_table().empty
    assert list(acc.category_table().columns) == ["category", "videos", "frames", "M_J", "M_F"]
    assert math.isnan(acc.summary()["M_J"])
