"""AV2T-SAM's loss: BCE + soft IoU on the 224 x 224 logits (train_avs.py), plus an optional IoU-head loss."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from pipeline.model.av2t_sam import upsample_masks
from pipeline.model.config import HeadConfig

# The reference divides by the soft union with no epsilon; sigmoid > 0 keeps it positive unless every
# logit underflows. Clamping at this floor changes nothing above it and avoids a NaN step below it.
UNION_FLOOR = 1e-6


def as_target(gt: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Ground-truth masks (B, H, W) or (B, 1, H, W), bool or {0, 1}, as float (B, H, W) on like's device."""
    if gt.ndim == like.ndim + 1 and gt.shape[1] == 1:
        gt = gt[:, 0]
    if gt.shape != like.shape:
        raise ValueError(f"masks {tuple(gt.shape)} do not match logits {tuple(like.shape)}")
    return gt.to(device=like.device, dtype=like.dtype)


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over masks of 1 - sum(pt) / (sum(p) + sum(t) - sum(pt)), p = sigmoid(logits) (train_avs)."""
    p = torch.sigmoid(logits)
    inter = (p * target).flatten(1).sum(1)
    union = (p + target).flatten(1).sum(1) - inter
    return (1 - inter / union.clamp_min(UNION_FLOOR)).mean()


def hard_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of (logits > 0) with (target > 0.5) over the last two dims; 1 where both are empty."""
    p, t = logits > 0, target > 0.5
    inter = (p & t).flatten(-2).sum(-1).float()
    union = (p | t).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def iou_prediction_loss(out: Mapping[str, torch.Tensor], target: torch.Tensor, which: str) -> torch.Tensor:
    """MSE between the decoder's predicted IoU and the actual IoU (no gradient) of its mask(s)."""
    if which == "chosen":
        actual = hard_iou(out["logits"].detach(), target)
        return F.mse_loss(out["iou_pred"], actual)
    masks = upsample_masks(out["low_res_masks"].detach(), target.shape[-1])
    actual = hard_iou(masks, target[:, None])
    return F.mse_loss(out["iou_preds"], actual)


def segmentation_loss(
    out: Mapping[str, torch.Tensor], gt: torch.Tensor, cfg: HeadConfig
) -> dict[str, torch.Tensor]:
    """{"bce", "iou", "iou_pred", "loss"}: the weighted sum is `loss`; iou_pred is logged even at weight 0."""
    logits = out["logits"]
    target = as_target(gt, logits)
    terms = {
        "bce": F.binary_cross_entropy_with_logits(logits, target),
        "iou": soft_iou_loss(logits, target),
        "iou_pred": iou_prediction_loss(out, target, cfg.iou_pred_target),
    }
    if cfg.iou_loss_weight == 0:
        terms["iou_pred"] = terms["iou_pred"].detach()
    terms["loss"] = (
        cfg.bce_weight * terms["bce"]
        + cfg.iou_weight * terms["iou"]
        + cfg.iou_loss_weight * terms["iou_pred"]
    )
    return terms
