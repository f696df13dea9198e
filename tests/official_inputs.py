"""Deterministic inputs of the reference parity test, shaped as the reference data loader gives them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

B, T = 1, 2  # one video of two frames: enough for per-frame adapters and the (B, T) reshapes
SEED = 0


def parity_inputs(seed: int = SEED) -> dict[str, torch.Tensor]:
    """images_sam (B,T,3,1024,1024), images_beit (B,T,3,224,224), clip (B,T,512), clap (B,T,1024), float32.

    Images are smooth random fields (bilinear upsampling of coarse noise) at the value range the reference
    normalisations give, so the frozen encoders see image-like input; embeddings are Gaussian.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(B * T, 3, 16, 16, generator=g)
    sam = F.interpolate(coarse, (1024, 1024), mode="bilinear", align_corners=False)
    beit = F.interpolate(coarse, (224, 224), mode="bilinear", align_corners=False) * 0.5
    clip = torch.randn(B, T, 512, generator=g)
    clap = torch.randn(B, T, 1024, generator=g)
    return {
        "images_sam": sam.reshape(B, T, 3, 1024, 1024).contiguous(),
        "images_beit": beit.reshape(B, T, 3, 224, 224).contiguous(),
        "clip_embeddings": clip,
        "clap_embeddings": clap,
    }


IOU_BIAS = "model.visual_model.sam_mask_decoder.iou_prediction_head.layers.2.bias"
IOU_NUDGE = 0.25


def nudge_mask_choice(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raise the IoU logit of the second multimask output (row 2; row 0 is the single-mask output).

    With plain random weights every frame picks multimask output 0, so a test could not see the selection;
    with this nudge the two frames of the adapter run pick different masks (0 and 1, margins ~0.03 in logit).
    """
    bias = sd[IOU_BIAS].clone()
    bias[2] += IOU_NUDGE
    return {**sd, IOU_BIAS: bias}
