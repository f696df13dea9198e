"""Ref-AVS head batches and scores from a split held in memory (cache.expression_rows.ExpressionSplit, read by
duck typing: pipeline never imports cache).

A training row is (expression e, frame k): the frame's cached features, e's text tokens (`text_ids`,
`text_length`) and e's mask k, resized (nearest) from 256 to the head's mask_size for the loss. Scoring runs
each expression's frames and adds them to RefAvsScores at the protocol's 256 x 256.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.model.av2t_sam import TEXT_IDS, TEXT_LENGTH
from pipeline.model.precision import as_fp32, autocast
from pipeline.ref_avs_metrics import BATCH_EXPRESSIONS, RefAvsScores, to_protocol

METRIC_NOTE = (
    "Ref-AVS metrics as GeWu-Lab/Ref-AVS utils/metric/utility.py, at 256 x 256 (logits resized bilinearly): "
    "J = IoU of sigmoid > 0.4 (empty GT: share of pixels both call background); F = max over 255 thresholds of "
    "the F-measure (beta^2 = 0.3, empty-GT frames skipped); S (Null only) = sqrt(share of pixels with "
    f"sigmoid > 0.5), lower is better. 'official': {BATCH_EXPRESSIONS} expressions x 10 frames per batch in the "
    "expression table's order, mean over batches (J, F, S at the top level are these); 'batch_free': pooled "
    "over every frame."
)


def head_batch(data: Any, pairs: np.ndarray, mask_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The head's batch for (expression, frame) pairs: frame features, the expression's tokens, the mask."""
    e, k = pairs[:, 0], pairs[:, 1]
    out = {n: v.to(device) for n, v in data.frame_features(pairs).items()}
    out[TEXT_IDS] = data.ids[e].to(device)
    out[TEXT_LENGTH] = data.length[e].to(device)
    gt = data.masks[e, k].float()[:, None]
    out["mask"] = F.interpolate(gt, size=(mask_size, mask_size), mode="nearest")[:, 0].to(device)
    return out


@torch.no_grad()
def score(model: Any, data: Any, device: torch.device, precision: str = "fp32") -> RefAvsScores:
    """Every expression's frames through the head (eval mode), scored with the Ref-AVS metrics, table order."""
    scores = RefAvsScores(data.split)
    model.eval()
    for e in range(len(data.uid)):
        frames = np.flatnonzero(data.frame_rows[e] >= 0)
        pairs = np.stack([np.full(len(frames), e), frames], axis=1)
        batch = head_batch(data, pairs, model.cfg.mask_size, device)
        with autocast(precision, device):
            logits = as_fp32(model.forward_cached(batch))["logits"]
        scores.add(str(data.uid[e]), to_protocol(logits.cpu()), data.masks[e, frames])
    return scores
