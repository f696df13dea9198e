"""J, F and S as the official Ref-AVS evaluation computes them (GeWu-Lab/Ref-AVS utils/metric/utility.py
`mask_iou`, `Eval_Fmeasure`, `metric_s_for_null`, called per test batch by scripts/train.py `test`).

Everything is at 256 x 256 (the loader resizes the GT masks to it; the model's masks are 256 x 256), one batch =
4 expressions x 10 frames (run_refavs.py: test DataLoader batch_size=4, shuffle=False, metadata order), so a
batch holds 40 frames except the split's last one.

J (`mask_iou`), per frame: pred = sigmoid(logit) > 0.4 (strict); IoU = |P and G| / (|P or G| + 1e-7); a frame
  with an empty GT scores (#pixels where both are background) / (H*W + 1e-7). The batch's J is the mean over its
  frames; the split's J is the mean over batches (AverageMeter), so a short last batch weighs as much as a full one.
F (`Eval_Fmeasure`), per batch: sigmoid; frames whose GT is empty are skipped; 255 thresholds
  `linspace(0, 1 - 1e-10, 255)` in float32 (the last one is exactly 1.0), positive when prob >= t;
  P = TP / (PP + 1e-20), R = TP / (GP + 1e-20), F = 1.3 P R / (0.3 P + R), NaN -> 0; the counted frames' curves
  averaged, the max taken; a batch without a counted frame scores 0.0 and still counts in the split's mean.
  (The formulas are AVSBench's, so pipeline.metrics' exact float32 curves serve.)
S (`metric_s_for_null`), per batch: sqrt(#pixels with sigmoid(logit) > 0.5 / #pixels of the batch); the split's S
  is the mean over batches. Lower is better: a Null expression refers to nothing.
Papers report J and F of Seen (test_s) and Unseen (test_u), their mean ((J_s + J_u) / 2, likewise F), and S of
Null (test_n).

Batch-free variants (ours, independent of how expressions are grouped): J over frames, F from the curve averaged
over every counted frame of the split, S from the pooled pixel share of the split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.metrics import IOU_EPS, N_THRESHOLDS, frame_f_curves, mean_curve

SIZE = 256
J_THRESHOLD = 0.4
S_THRESHOLD = 0.5
BATCH_EXPRESSIONS = 4  # the official test loader's batch_size
SEEN, UNSEEN, NULL = "test_s", "test_u", "test_n"


def to_protocol(logits: Tensor, size: int = SIZE) -> Tensor:
    """(N, H, W) logits at size x size (bilinear, align_corners=False); unchanged when already that size."""
    if tuple(logits.shape[-2:]) == (size, size):
        return logits.float()
    return F.interpolate(logits.float()[:, None], size=(size, size), mode="bilinear", align_corners=False)[
        :, 0
    ]


def frame_iou(logits: Tensor, gt: Tensor) -> Tensor:
    """(N,) float32 per-frame J of `mask_iou` (threshold 0.4; empty GT scored on background agreement)."""
    logits, fg = logits.float(), gt != 0
    pred = torch.sigmoid(logits) > J_THRESHOLD
    empty = ~fg.flatten(1).any(1)
    inter = torch.where(empty, (~pred & ~fg).sum((1, 2)), (pred & fg).sum((1, 2)))
    union = torch.where(empty, torch.full_like(inter, fg[0].numel()), (pred | fg).sum((1, 2)))
    return inter.float() / (union.float() + IOU_EPS)


def positives(logits: Tensor) -> Tensor:
    """(N,) pixels per frame that `metric_s_for_null` counts as predicted (sigmoid > 0.5)."""
    return (torch.sigmoid(logits.float()) > S_THRESHOLD).flatten(1).sum(1)


def batch_j(logits: Tensor, gt: Tensor) -> float:
    """Official J of one batch of frames."""
    ious = frame_iou(logits, gt)
    return (ious.sum() / ious.numel()).item()


def batch_f(logits: Tensor, gt: Tensor) -> float:
    """Official F of one batch of frames (0.0 when every GT is empty)."""
    return mean_curve(frame_f_curves(torch.sigmoid(logits.float()), gt != 0)).max().item()


def batch_s(logits: Tensor) -> float:
    """Official S of one batch of frames."""
    return math.sqrt(positives(logits).sum().item() / logits[0].numel() / logits.shape[0])


@dataclass
class _Expression:
    uid: str
    ious: Tensor  # (frames,)
    curves: Tensor  # (counted frames, 255)
    positive: int
    pixels: int


@dataclass
class RefAvsScores:
    """Per-expression statistics of one split, from which the official (batched) and batch-free scores follow."""

    split: str
    items: list[_Expression] = field(default_factory=list)

    def add(self, uid: str, logits: Tensor, gt: Tensor) -> None:
        """One expression's (frames, H, W) logits and GT, already at the protocol's size (see to_protocol)."""
        if logits.ndim != 3 or logits.shape != gt.shape:
            raise ValueError(f"logits and gt must both be (frames, H, W); got {logits.shape}, {gt.shape}")
        logits = logits.float().cpu()
        fg = gt.cpu() != 0
        self.items.append(
            _Expression(
                uid,
                frame_iou(logits, fg),
                frame_f_curves(torch.sigmoid(logits), fg),
                int(positives(logits).sum()),
                logits.numel(),
            )
        )

    def _batches(self, size: int) -> list[list[_Expression]]:
        return [self.items[i : i + size] for i in range(0, len(self.items), size)]

    def official(self, batch: int = BATCH_EXPRESSIONS) -> dict[str, float]:
        """J, F and S as the official test loop reports them, `batch` expressions per batch in added order."""
        js, fs, ss = [], [], []
        for b in self._batches(batch):
            ious = torch.cat([e.ious for e in b])
            js.append((ious.sum() / ious.numel()).item())
            curves = torch.cat([e.curves for e in b]) if b else torch.zeros(0, N_THRESHOLDS)
            fs.append(mean_curve(curves).max().item())
            ss.append(math.sqrt(sum(e.positive for e in b) / sum(e.pixels for e in b)))
        mean = lambda v: float(sum(v) / len(v)) if v else float("nan")  # noqa: E731
        return {"J": mean(js), "F": mean(fs), "S": mean(ss)}

    def batch_free(self) -> dict[str, float]:
        """J over every frame, F from the curve of every counted frame, S from the pooled pixel share."""
        if not self.items:
            return {"J": float("nan"), "F": float("nan"), "S": float("nan")}
        ious = torch.cat([e.ious for e in self.items])
        curves = torch.cat([e.curves for e in self.items])
        f = curves.mean(0).max().item() if len(curves) else 0.0
        s = math.sqrt(sum(e.positive for e in self.items) / sum(e.pixels for e in self.items))
        return {"J": ious.mean().item(), "F": f, "S": s}

    def summary(self, batch: int = BATCH_EXPRESSIONS) -> dict:
        """Both kinds of score, with the counts and the batching stated."""
        return {
            "split": self.split,
            "expressions": len(self.items),
            "frames": sum(len(e.ious) for e in self.items),
            "batch_expressions": batch,
            "official": self.official(batch),
            "batch_free": self.batch_free(),
        }


def seen_unseen_mean(seen: dict[str, float], unseen: dict[str, float]) -> dict[str, float]:
    """The papers' "mean" column: (Seen + Unseen) / 2 for J and F."""
    return {k: (seen[k] + unseen[k]) / 2 for k in ("J", "F")}
