"""The AV2T-SAM head's configuration: fusion, pseudo-token MLP, adapters, loss weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.negatives import CONDITIONS
from pipeline.presets import preset_file


class HeadConfig(BaseModel):
    """What trains on top of the frozen encoders (defaults: the paper's AV2T-SAM, `projector_type=mul`)."""

    model_config = ConfigDict(extra="forbid")

    fusion: str = "mul"
    """mul: the paper, f_CLIP * f_CLAP of the L2-normalised, projected embeddings. clip / clap: one projected
    embedding (the paper's ablations). sum: f_CLIP + f_CLAP. concat: one projection of [v; a]. gated:
    g * f_CLIP + (1 - g) * f_CLAP with g = sigmoid(W [f_CLIP; f_CLAP])."""
    d_shared: int = Field(512, gt=0)
    """Width of the shared space (the reference's common_dim)."""
    fused_scale: float | Literal["auto"] = 1.0
    """Fixed factor on the fused feature. 1.0 = the reference. "auto" = 1 / the feature's RMS at init,
    measured on seeded random unit inputs, so it starts at unit RMS per dimension (stored as a buffer)."""
    n_tokens: int = Field(3, gt=0)
    """Pseudo-tokens that replace BEiT-3's word embeddings."""
    mlp_hidden: int = Field(512, gt=0)
    """Hidden width of `to_text_space`: Linear(d_shared, mlp_hidden) -> ReLU -> Linear(., n_tokens * D)."""
    adapters: bool = False
    """Add a projection of the fused feature to the input of the SAM image encoder's blocks (Hiera or ViT)
    adapter_start_block..end."""
    adapter_start_block: int = Field(0, ge=0)
    """First adapted block; 0 = every block (the paper). Blocks before it are cached."""
    adapter_hidden: int = Field(512, gt=0)
    """Adapter: Linear(d_shared, adapter_hidden) -> GELU -> Linear(., C_i), C_i = block i's input width (SAM 2);
    on SAM 1 the last Linear is one `shared_mlp` for every block, as the reference's."""
    mask_size: int = Field(224, gt=0)
    """Side of the output logits (the reference upsamples to 224, where loss and metrics are computed)."""
    bce_weight: float = Field(1.0, ge=0)
    iou_weight: float = Field(1.0, ge=0)
    """Weight of the soft IoU loss 1 - sum(p g) / (sum(p) + sum(g) - sum(p g)), p = sigmoid(logits)."""
    iou_loss_weight: float = Field(0.0, ge=0)
    """Weight of the optional IoU-prediction loss: MSE between the decoder's predicted IoU and the actual IoU
    of the thresholded mask with the ground truth. 0 = the reference (that head gets no gradient)."""
    iou_pred_target: Literal["chosen", "all"] = "chosen"
    """Which masks the IoU-prediction loss covers: the chosen one, or all three multimask outputs."""
    text: Literal["none", "only", "concat", "gated"] = "none"
    """What enters BEiT-3's text stream (after the vision tokens). none: the n_tokens pseudo-tokens (AV2T, AVSBench).
    only: the expression's word embeddings alone (EVF-SAM as is; the projector is unused). concat: the expression's
    tokens, then the pseudo-tokens, padded text positions masked. gated: as concat, the pseudo-tokens multiplied by
    g = sigmoid(W mean(text embeddings) + b), one gate per pseudo-token, conditioned on the sentence (Ref-AVS)."""
    seed: int = 0
    """Seed of the head's random init (projections, MLP, adapters, text_hidden_fcs when not loaded)."""
    negatives: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of each training batch's rows that get negative audio (another video's, silence or "
        "noise) and an empty target mask; 0 = none (the paper)",
    )
    negative_conditions: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(CONDITIONS, 1.0),
        description="relative weight of each negative-audio condition (silence, noise, offscreen) among the "
        "negative rows; a condition at 0 is never drawn",
    )

    @field_validator("fusion")
    @classmethod
    def _known_fusion(cls, name: str) -> str:
        """A fusion registered in pipeline.model.fusion (imported here, on first use: it needs torch)."""
        from pipeline.model.fusion import FUSIONS

        if name not in FUSIONS:
            raise ValueError(f"unknown fusion {name!r}; registered: {sorted(FUSIONS)}")
        return name

    @field_validator("negative_conditions")
    @classmethod
    def _known_conditions(cls, weights: dict[str, float]) -> dict[str, float]:
        """Known conditions, weights >= 0, at least one above 0."""
        unknown = sorted(set(weights) - set(CONDITIONS))
        if unknown:
            raise ValueError(f"unknown negative conditions {unknown}; known: {list(CONDITIONS)}")
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"negative condition weights must be >= 0 with one above 0, got {weights}")
        return weights

    def negative_weights(self) -> dict[str, float]:
        """The conditions negative rows are drawn from, with their probabilities (empty without negatives)."""
        if self.negatives == 0:
            return {}
        total = sum(self.negative_conditions.values())
        return {c: w / total for c, w in self.negative_conditions.items() if w > 0}


# Head settings per encoder preset. tiny: random encoders give the fused feature ~1e-2 per dimension
# (product of two kaiming projections of unit vectors: 2 / sqrt(d_clip d_clap)), which BEiT-3 barely
# notices; "auto" starts it at unit RMS. paper: the reference's init, unchanged.
def head_config(preset: str | Path = "tiny", **changes: Any) -> HeadConfig:
    """The preset's head defaults (its head.json, or that of the preset it extends), with some fields changed."""
    path = preset_file(preset, "head.json")
    base = json.loads(path.read_text()) if path is not None else {}
    return HeadConfig.model_validate(base | changes)
