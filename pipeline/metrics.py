"""M_J and M_F as the official AVSBench evaluation computes them, and their dataset-level aggregation.

Reference: OpenNLPLab/AVSBench, avs_scripts/avs_s4/utils/utility.py (`mask_iou`, `_eval_pr`,
`Eval_Fmeasure`), called once per test batch by avs_scripts/avs_s4/test.py and averaged over batches by
utils/pyutils.py `AverageMeter`. What it does, and what this module reproduces:

M_J (`mask_iou`), per frame of an (N, H, W) batch:
  - pred = sigmoid(logit) > 0.5 (strict: a probability of exactly 0.5 is background);
  - IoU = |P and G| / (|P or G| + 1e-7), in float32;
  - a frame whose GT has no foreground pixel scores (#pixels predicted background) / (H*W + 1e-7):
    the official code swaps in `((1 - target) * (1 - pred)).sum()` as the intersection and H*W as the union;
  - the batch score is sum(IoU) / N in float32.
M_F (`Eval_Fmeasure` + `_eval_pr`), per batch:
  - prob = sigmoid(logit); frames whose GT mean is 0 (no foreground) are skipped;
  - 255 thresholds `torch.linspace(0, 1 - 1e-10, 255)` in float32, i.e. k/254 up to one float32 ulp on 10
    of them, the last one exactly 1.0; a pixel is positive at t when prob >= t;
  - precision = TP / (PP + 1e-20), recall = TP / (GP + 1e-20), F = 1.3 P R / (0.3 P + R), NaN -> 0;
  - the F curves of the counted frames are summed one after the other in float32 and divided by their
    number; the batch score is the curve's max. A batch whose GTs are all empty scores 0.0 (the curve stays
    `torch.zeros(255)`), and test.py still counts that 0.0 in the dataset mean.
Dataset score: the plain mean of the per-batch scores (AverageMeter: M_J summed as float32 tensors,
M_F as Python floats). It therefore depends on the batching: AV2T tests one video (5 frames) per batch.

Logits are evaluated in float32 (the official models output float32); GT is binary, nonzero = foreground.
Pixel counts are exact integers, and every floating-point step above is done with the same float32 torch
operations in the same order, so per-batch results equal the official CPU computation bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor

IOU_EPS = 1e-7
PR_EPS = 1e-20
BETA2 = 0.3
N_THRESHOLDS = 255
# Built exactly as the official code builds it: not every value equals float32(k / 254).
THRESHOLDS = torch.linspace(0, 1 - 1e-10, N_THRESHOLDS, dtype=torch.float32)
_PADDED = torch.cat([THRESHOLDS, torch.tensor([math.nan])])
_CHUNK = 32  # frames per bucketing pass: bounds the scratch to ~_CHUNK * H * W * 24 bytes (~39 MB at 224)


def _check(logits: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Validate an (N, H, W) batch; return float32 logits and the boolean foreground mask."""
    if logits.ndim != 3 or tuple(logits.shape) != tuple(gt.shape):
        raise ValueError(
            f"logits and gt must both be (N, H, W); got {tuple(logits.shape)}, {tuple(gt.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("empty batch")
    return logits.float(), (gt != 0).to(logits.device)


def frame_iou(logits: Tensor, gt: Tensor) -> Tensor:
    """(N,) float32 per-frame IoU as the official `mask_iou` computes it before averaging."""
    logits, fg = _check(logits, gt)
    pred = torch.sigmoid(logits) > 0.5
    inter = (pred & fg).sum((1, 2))
    union = (pred | fg).sum((1, 2))
    empty = ~fg.flatten(1).any(1)
    # Empty GT: the official code scores agreement on background, over every pixel of the frame.
    inter = torch.where(empty, (~pred).sum((1, 2)), inter)
    union = torch.where(empty, torch.full_like(union, fg[0].numel()), union)
    return inter.float() / (union.float() + IOU_EPS)


def m_j(logits: Tensor, gt: Tensor) -> float:
    """Official per-batch M_J: float32 sum of the frame IoUs divided by N."""
    ious = frame_iou(logits, gt)
    return (ious.sum() / ious.numel()).item()


def threshold_buckets(scores: Tensor) -> Tensor:
    """How many thresholds are <= each score (0..255, as exact float32), by the official `score >= t_k`.

    Equals `torch.bucketize(scores, THRESHOLDS, right=True)` except that NaN counts 0 (NaN >= t is False)
    and is about 3x faster: t_k is k/254 to within an ulp, so k = floor(254 * score) is off by at most one
    and two exact comparisons, with t_k and t_(k+1), settle it.
    """
    at, above = _PADDED.to(scores.device), _PADDED[1:].to(scores.device)
    k = (scores * (N_THRESHOLDS - 1)).floor_().nan_to_num_(0.0).clamp_(0, N_THRESHOLDS - 1)
    idx = k.long()
    # The NaN padding past the last threshold is never <= a score, so nothing counts beyond it.
    return k.add_(scores >= at.take(idx)).add_(scores >= above.take(idx))


def _pr_counts(scores: Tensor, fg: Tensor) -> tuple[Tensor, Tensor]:
    """(n, 255) predicted-positive and true-positive pixel counts at every threshold (score >= t_k)."""
    n = scores.shape[0]
    nb = N_THRESHOLDS + 1
    # One histogram over (frame, bucket, is-foreground); float32 keys stay exact far beyond n * 512.
    offsets = torch.arange(0, n * nb * 2, nb * 2, dtype=torch.float32, device=scores.device)
    key = threshold_buckets(scores.flatten(1)).mul_(2).add_(fg.flatten(1)).add_(offsets.unsqueeze(1))
    hist = torch.bincount(key.flatten().long(), minlength=n * nb * 2).view(n, nb, 2)
    # score >= t_k exactly when k < bucket: threshold k counts the pixels in buckets k + 1 and up.
    at_or_above = hist.flip(1).cumsum(1).flip(1)[:, 1:]
    return at_or_above.sum(2), at_or_above[..., 1]


def _frame_f_curves(scores: Tensor, fg: Tensor) -> Tensor:
    """(M, 255) float32 F curves of the frames with a non-empty GT, in batch order."""
    keep = fg.flatten(1).any(1)
    scores, fg = scores[keep], fg[keep]
    curves = []
    for start in range(0, scores.shape[0], _CHUNK):
        s, g = scores[start : start + _CHUNK], fg[start : start + _CHUNK]
        pp, tp = _pr_counts(s, g)
        gp = g.flatten(1).sum(1, keepdim=True)
        tp = tp.float()
        prec = tp / (pp.float() + PR_EPS)
        rec = tp / (gp.float() + PR_EPS)
        # Same operations in the same order as the official float32 expression.
        f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
        curves.append(torch.where(torch.isnan(f), torch.zeros_like(f), f))
    if not curves:
        return scores.new_zeros((0, N_THRESHOLDS))
    return torch.cat(curves)


def _mean_curve(curves: Tensor) -> Tensor:
    """Official batch curve: frame curves summed sequentially in float32, divided by their number."""
    total = torch.zeros(N_THRESHOLDS, dtype=torch.float32, device=curves.device)
    if curves.shape[0] == 0:
        return total  # the official score stays torch.zeros(255) when every GT is empty
    for curve in curves:  # sequential on purpose: float32 addition order changes the last bits
        total = total + curve
    return total / curves.shape[0]


def frame_f_curves(probs: Tensor, fg: Tensor) -> Tensor:
    """(M, 255) official F curves of the frames of (N, H, W) probabilities whose GT `fg` is non-empty."""
    return _frame_f_curves(probs, fg)


def mean_curve(curves: Tensor) -> Tensor:
    """The official batch curve of (M, 255) frame curves (zeros when M is 0)."""
    return _mean_curve(curves)


def f_curve(logits: Tensor, gt: Tensor) -> tuple[Tensor, int]:
    """The official (255,) mean F curve over the batch's non-empty-GT frames, and how many frames counted."""
    logits, fg = _check(logits, gt)
    curves = _frame_f_curves(torch.sigmoid(logits), fg)
    return _mean_curve(curves), curves.shape[0]


def m_f(logits: Tensor, gt: Tensor) -> float:
    """Official per-batch M_F: max of the mean F curve; 0.0 when every GT of the batch is empty."""
    curve, _ = f_curve(logits, gt)
    return curve.max().item()


def m_f_raw_logits(logits: Tensor, gt: Tensor) -> float:
    """The AV2T reference's M_F: the official F measure applied to raw logits instead of probabilities.

    bok-bok/AV2T-SAM utility.py `Eval_Fmeasure` is AVSBench's function with its one
    `pred = torch.sigmoid(pred)` line commented out, and test_avs.py passes it the model's logits (the
    same tensor its `mask_iou` passes through sigmoid). The [0, 1] thresholds then cut logits: every
    non-negative logit is positive at t = 0 and every logit >= 1 at t = 1. We report it next to m_f.
    """
    return raw_logit_f(logits, gt).item()


def raw_logit_f(logits: Tensor, gt: Tensor) -> Tensor:
    """m_f_raw_logits as a 0-dim float32 tensor on the logits' device (no host round trip)."""
    logits, fg = _check(logits, gt)
    return _mean_curve(_frame_f_curves(logits, fg)).max()


@dataclass
class _Batch:
    """What the accumulator keeps of one added batch: tensors on the logits' device until first read.

    `add` makes no host round trip beyond the data-dependent frame selection of the F curves; `_sync`
    copies the values of every batch added since the last read to the host in one go, unchanged.
    """

    video: str
    category: str | None
    frames: list[int]
    ious: Tensor | list[float]  # (N,) float32 frame IoUs
    gt_empty: Tensor | list[bool]  # (N,) bool
    mj: Tensor | float  # official per-batch M_J (float32)
    f: Tensor | float  # official per-batch M_F (float32); NaN when every GT is empty
    curve_sum: Tensor  # float64 sum of the non-empty frames' F curves (batch-free variant)
    counted: int  # frames with a non-empty GT
    on_host: bool = False


@dataclass
class MetricAccumulator:
    """Dataset-level M_J / M_F.

    "video": each `add` is one M_F batch (AV2T's test: one video of 5 frames per batch); the dataset
    scores are the official AverageMeter means over batches: M_J a float32 running sum of per-batch M_J,
    M_F the Python-float mean of per-batch M_F where an all-empty-GT batch counts 0.0, as in test.py.
    "all": batch-free; M_J is the mean IoU over all frames and M_F the max of the F curve averaged over
    every non-empty-GT frame of the dataset (float64 sums).

    Scores are computed on the logits' device and stay there until a summary or a table is asked for
    (then every pending batch is copied to the host at once): the numbers are the same bit for bit.
    """

    batching: Literal["video", "all"] = "video"
    _batches: list[_Batch] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        """Reject unknown batching modes."""
        if self.batching not in ("video", "all"):
            raise ValueError(f"batching must be 'video' or 'all', not {self.batching!r}")

    def add(
        self,
        video: str,
        logits: Tensor,
        gt: Tensor,
        frames: Sequence[int] | None = None,
        category: str | None = None,
    ) -> None:
        """Score the (N, H, W) frames of one video (or any batch, labelled `video`); frames default 0..N-1."""
        logits, fg = _check(logits, gt)
        n = logits.shape[0]
        frames = list(range(n)) if frames is None else [int(k) for k in frames]
        if len(frames) != n:
            raise ValueError(f"{len(frames)} frame indices for {n} frames")
        if any(b.video == video for b in self._batches):
            raise ValueError(f"batch {video!r} was already added")
        ious = frame_iou(logits, fg)
        curves = _frame_f_curves(torch.sigmoid(logits), fg)
        counted = curves.shape[0]
        batch = _Batch(
            video=video,
            category=category,
            frames=frames,
            ious=ious,
            gt_empty=~fg.flatten(1).any(1),
            mj=ious.sum() / n,
            f=_mean_curve(curves).max() if counted else ious.new_full((), math.nan),
            curve_sum=curves.double().sum(0),
            counted=counted,
        )
        self._batches.append(batch)

    def _sync(self) -> list[_Batch]:
        """Every batch with its values on the host (one copy per kind of value for all pending batches)."""
        todo = [b for b in self._batches if not b.on_host]
        if todo:
            ious = torch.cat([b.ious for b in todo]).cpu().tolist()
            empty = torch.cat([b.gt_empty for b in todo]).cpu().tolist()
            mj = torch.stack([b.mj for b in todo]).cpu().tolist()
            f = torch.stack([b.f for b in todo]).cpu().tolist()
            curves = torch.stack([b.curve_sum for b in todo]).cpu()
            at = 0
            for i, b in enumerate(todo):
                n = len(b.frames)
                b.ious, b.gt_empty = ious[at : at + n], empty[at : at + n]
                b.mj, b.f, b.curve_sum, b.on_host = mj[i], f[i], curves[i], True
                at += n
        return self._batches

    def records(self) -> list[Any]:
        """What was added, with its values on the host: picklable, to merge into another accumulator (a
        distributed validation gathers every rank's records to one accumulator; the scores are then exact)."""
        return list(self._sync())

    def extend(self, records: Sequence[Any]) -> None:
        """Take records of another accumulator (`records()`), in the order given."""
        for b in records:
            if any(x.video == b.video for x in self._batches):
                raise ValueError(f"batch {b.video!r} was already added")
            self._batches.append(b)

    def _scores(self, batches: Sequence[_Batch]) -> tuple[float, float]:
        """(M_J, M_F) of a group of batches under this accumulator's batching."""
        if not batches:
            return math.nan, math.nan
        if self.batching == "video":
            total = torch.zeros((), dtype=torch.float32)
            for b in batches:  # the official AverageMeter adds float32 per-batch M_J tensors
                total = total + torch.tensor(b.mj, dtype=torch.float32)
            mj = (total / len(batches)).item()
            mf = sum(0.0 if math.isnan(b.f) else b.f for b in batches) / len(batches)
            return mj, mf
        ious = [iou for b in batches for iou in b.ious]
        counted = sum(b.counted for b in batches)
        if counted == 0:
            return math.fsum(ious) / len(ious), 0.0
        curve = torch.stack([b.curve_sum for b in batches]).sum(0) / counted
        return math.fsum(ious) / len(ious), curve.max().item()

    def summary(self) -> dict:
        """Dataset scores: M_J, M_F, batching, frames, videos, and how many frames/videos have empty GT."""
        mj, mf = self._scores(self._sync())
        return {
            "M_J": mj,
            "M_F": mf,
            "batching": self.batching,
            "frames": sum(len(b.frames) for b in self._batches),
            "videos": len(self._batches),
            "gt_empty_frames": sum(sum(b.gt_empty) for b in self._batches),
            "gt_empty_videos": sum(b.counted == 0 for b in self._batches),
        }

    def frame_table(self) -> pd.DataFrame:
        """One row per frame: video, frame, category, iou, gt_empty."""
        rows = [
            (b.video, k, b.category, iou, empty)
            for b in self._sync()
            for k, iou, empty in zip(b.frames, b.ious, b.gt_empty, strict=True)
        ]
        return pd.DataFrame(rows, columns=["video", "frame", "category", "iou", "gt_empty"])

    def video_table(self) -> pd.DataFrame:
        """One row per batch: video, category, frames, M_J (official per-batch), F (NaN if all GT empty)."""
        rows = [(b.video, b.category, len(b.frames), b.mj, b.f) for b in self._sync()]
        return pd.DataFrame(rows, columns=["video", "category", "frames", "M_J", "F"])

    def category_table(self) -> pd.DataFrame:
        """One row per category (None kept as its own group): category, videos, frames, M_J, M_F."""
        groups: dict[str | None, list[_Batch]] = {}
        for b in self._sync():
            groups.setdefault(b.category, []).append(b)
        rows = []
        for category, batches in groups.items():
            mj, mf = self._scores(batches)
            rows.append((category, len(batches), sum(len(b.frames) for b in batches), mj, mf))
        return pd.DataFrame(rows, columns=["category", "videos", "frames", "M_J", "M_F"])
