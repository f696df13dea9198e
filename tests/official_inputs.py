"""Deterministic inputs of the reference parity test, shaped as the reference data loader gives them."""

from __future__ import annotations

from pathlib import Path

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


# The reference logits per backbone (tests/reference/README.md says how they were made).
GOLDEN = {
    "sam2": Path(__file__).parent / "reference" / "av2t_sam_parity.npz",
    "sam1": Path(__file__).parent / "reference" / "av2t_sam1_parity.npz",
}
IOU_BIAS = {
    "sam2": "model.visual_model.sam_mask_decoder.iou_prediction_head.layers.2.bias",
    "sam1": "model.visual_model.mask_decoder.iou_prediction_head.layers.2.bias",
}
# (bias row, amount) per backbone: row 0 is the single-mask output, rows 1..3 the multimask outputs 0..2.
IOU_NUDGE = {"sam2": (2, 0.25), "sam1": (3, 0.505)}


def nudge_mask_choice(sd: dict[str, torch.Tensor], backbone: str = "sam2") -> dict[str, torch.Tensor]:
    """Raise the IoU logit of one multimask output, so that the two frames of the adapter run pick different masks.

    With plain random weights every frame picks multimask output 0, so a test could not see the selection.
    SAM 2: output 1 by 0.25, the frames then pick 0 and 1 (margins ~0.03 in logit). SAM 1: output 2 by 0.505,
    between the two frames' gaps (0.492 and 0.519, reference run without the nudge), so they pick 2 and 0
    (margins ~0.013).
    """
    key = IOU_BIAS[backbone]
    row, amount = IOU_NUDGE[backbone]
    bias = sd[key].clone()
    bias[row] += amount
    return {**sd, key: bias}
