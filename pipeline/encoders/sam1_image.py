"""SAM 1 image features per frame, as EVF-SAM1 (and AV2T-SAM's `--evf_version evf_sam` branch) compute them.

The model is segment-anything's own `Sam` (ImageEncoderViT, PromptEncoder, MaskDecoder with its
TwoWayTransformer), built with the sizes `segment_anything.build_sam` uses (ViT-H: width 1280, 32 blocks,
16 heads, global attention at blocks 7, 15, 23, 31; 1024 px; 256-d prompts), or a preset's smaller ViT.
The whole `Sam` is kept as `encoder.sam` (training needs its prompt encoder and mask decoder).

It fills the store's SAM slot (a preset's `sam2.json` with `"impl": "sam1_image"`, as MS-CLAP fills the
CLAP slot): the output is `image_embed` (256, S/16, S/16), the neck's output, which is what EVF-SAM1 feeds
the mask decoder. With `trunk_block=k` also `trunk_in`, the ViT activation at block k's input (channels
first), from which adapters on blocks k.. train.

Preprocessing is SAM 1's: ResizeLongestSide (torchvision's resize of a PIL image: PIL bilinear on uint8, the
longest side to S), then `Sam.preprocess`: mean/std on the 0-255 scale and zero padding to S x S at the
bottom/right (a no-op for AVSBench's square frames).

Weights: an EVF-SAM1 checkpoint (`visual_model.*` of `YxZhang/evf-sam` / `evf-sam-multitask`'s
model.safetensors) or Meta's `sam_vit_h_4b8939.pth` (a bare state dict), both loaded strictly into the `Sam`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import pipeline.compat  # noqa: F401  (segment_anything imports torchvision)
from pipeline.checkpoints import CheckpointError, read_evf_sam2, read_state_dict
from pipeline.encoders.base import Encoder, seeded
from pipeline.encoders.sam_common import (
    IMAGE_EMBED,
    MEAN,
    STD,
    TRUNK_IN,
    normalize_frames_sam1,
    parameters_on_meta,
    random_or_loaded,
    resize_frames_sam1,
)

IMPLEMENTATION = "segment-anything 1.0 Sam (ImageEncoderViT)"
WEIGHTS_SOURCES = {
    "evf-sam1": "the Hugging Face repo YxZhang/evf-sam-multitask or YxZhang/evf-sam (its model.safetensors)",
    "sam": "Meta's SAM release: sam_vit_h_4b8939.pth",
}
# What segment_anything.build_sam fixes for every ViT size.
PIXEL_MEAN = [255 * m for m in MEAN]  # 123.675, 116.28, 103.53
PIXEL_STD = [255 * s for s in STD]  # 58.395, 57.12, 57.375


class VitConfig(BaseModel):
    """The image encoder's ViT (defaults: ViT-H, `build_sam_vit_h`)."""

    model_config = ConfigDict(extra="forbid")

    embed_dim: int = Field(1280, gt=0)
    depth: int = Field(32, gt=0)
    num_heads: int = Field(16, gt=0)
    global_attn_indexes: list[int] = Field(default_factory=lambda: [7, 15, 23, 31])
    window_size: int = Field(14, ge=0)


class Config(BaseModel):
    """A preset's sam2.json when it selects SAM 1 (`"impl": "sam1_image"`)."""

    model_config = ConfigDict(extra="forbid")

    vit: VitConfig = Field(default_factory=VitConfig)
    image_size: int = Field(1024, gt=0)
    """Frames: longest side resized to image_size, padded to a square; features are S/16 on a side."""
    patch_size: int = Field(16, gt=0)
    prompt_embed_dim: int = Field(256, gt=0)
    weights: str | None = None
    """Checkpoint path relative to the weights folder; None = random weights from `seed`."""
    weights_format: Literal["evf-sam1", "sam"] = "evf-sam1"
    """evf-sam1: an EVF-SAM1 model.safetensors (its visual_model.*); sam: Meta's bare state dict (.pth)."""
    trunk_block: int | None = Field(None, ge=0)
    """Also output the ViT activation at this block's input (`trunk_in`), for adapters from block k."""
    seed: int = 0


def make_sam(cfg: Config) -> nn.Module:
    """segment-anything's `Sam` with the config's sizes, as `build_sam._build_sam` assembles it."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    s, d = cfg.image_size, cfg.prompt_embed_dim
    grid = s // cfg.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.vit.depth,
            embed_dim=cfg.vit.embed_dim,
            img_size=s,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.vit.num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(cfg.vit.global_attn_indexes),
            window_size=cfg.vit.window_size,
            out_chans=d,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=d, image_embedding_size=(grid, grid), input_image_size=(s, s), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=d, mlp_dim=2048, num_heads=8),
            transformer_dim=d,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )


def build_sam(cfg: Config, empty: bool = False) -> nn.Module:
    """The `Sam` of the config: seeded random weights, or (empty=True) parameters on meta, uninitialised."""
    if empty:
        with parameters_on_meta():
            return make_sam(cfg)
    with seeded(cfg.seed):
        return make_sam(cfg)


class Sam1ImageEncoder(Encoder):
    """SAM 1 image encoder: uint8 RGB frames -> the (256, S/16, S/16) image embedding (+ trunk_in)."""

    name = "sam2"  # the store's SAM slot; config_dict names the implementation
    input = "frames"

    def __init__(self, sam: nn.Module, cfg: Config):
        super().__init__()
        depth = len(sam.image_encoder.blocks)
        if cfg.trunk_block is not None and cfg.trunk_block >= depth:
            raise ValueError(f"trunk_block {cfg.trunk_block}: the ViT has blocks 0..{depth - 1}")
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} must be a multiple of patch_size {cfg.patch_size}")
        self.sam, self.cfg = sam, cfg

    def host_input(self, batch: np.ndarray) -> torch.Tensor:
        """ResizeLongestSide on the host (PIL bilinear on uint8, as the reference): uint8 (B, h, w, 3)."""
        return resize_frames_sam1(batch, self.cfg.image_size)

    def device_input(self, x: torch.Tensor) -> torch.Tensor:
        """Resized uint8 frames -> mean/std on the 0-255 scale, zero padded to S x S (`Sam.preprocess`)."""
        return normalize_frames_sam1(x, self.cfg.image_size)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-frame image embedding (the neck's output), plus trunk_in when a trunk block is set."""
        p = next(self.sam.parameters())
        x = x.to(p.device, p.dtype)
        vit = self.sam.image_encoder
        if self.cfg.trunk_block is None:
            return {IMAGE_EMBED: vit(x)}
        xk = run_vit_blocks(vit, vit_embed(vit, x), 0, self.cfg.trunk_block)
        out = run_vit_blocks(vit, xk, self.cfg.trunk_block)
        return {IMAGE_EMBED: vit.neck(out.permute(0, 3, 1, 2)), TRUNK_IN: xk.permute(0, 3, 1, 2).contiguous()}

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """(256, 64, 64) at 1024 px; trunk_in (width, 64, 64)."""
        g = self.cfg.image_size // self.cfg.patch_size
        shapes = {IMAGE_EMBED: (self.cfg.prompt_embed_dim, g, g)}
        if self.cfg.trunk_block is not None:
            shapes[TRUNK_IN] = (self.cfg.vit.embed_dim, g, g)
        return shapes

    def config_dict(self) -> dict[str, Any]:
        """The implementation, the ViT's sizes, the image size and the outputs."""
        return {
            "implementation": IMPLEMENTATION,
            "vit": self.cfg.vit.model_dump(),
            "image_size": self.cfg.image_size,
            "patch_size": self.cfg.patch_size,
            "prompt_embed_dim": self.cfg.prompt_embed_dim,
            "outputs": list(self.output_shapes()),
            **({"trunk_block": self.cfg.trunk_block} if self.cfg.trunk_block is not None else {}),
        }

    def preprocessing_dict(self) -> dict[str, Any]:
        """SAM 1's ResizeLongestSide + Sam.preprocess."""
        return {
            "input": "uint8 RGB",
            "size": [self.cfg.image_size, self.cfg.image_size],
            "resize": "SAM-1 ResizeLongestSide: PIL bilinear on uint8, longest side to size, rounded",
            "mean": PIXEL_MEAN,
            "std": PIXEL_STD,
            "pad": "zeros, bottom/right, after normalisation",
        }


def vit_embed(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ImageEncoderViT's input to block 0: patch embedding plus the absolute position embedding (B, H, W, C)."""
    x = vit.patch_embed(x)
    return x + vit.pos_embed if vit.pos_embed is not None else x


def run_vit_blocks(
    vit: nn.Module,
    x: torch.Tensor,
    start: int,
    stop: int | None = None,
    prompts: Mapping[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """ViT blocks start..stop-1 on channels-last x, as ImageEncoderViT.forward runs them.

    prompts[i] (B, C), when given, is added to block i's input, broadcast over H and W (AV2T's adapters).
    """
    for i in range(start, len(vit.blocks) if stop is None else stop):
        if prompts is not None and i in prompts:
            x = x + prompts[i][:, None, None, :]
        x = vit.blocks[i](x)
    return x


def read_sam1_state(path: Path, weights_format: str) -> dict[str, torch.Tensor]:
    """The `Sam` state dict of an EVF-SAM1 checkpoint (its visual_model.*) or of Meta's .pth."""
    if weights_format == "evf-sam1":
        sd = read_evf_sam2(path)["visual_model."]
        if not sd:
            raise CheckpointError(f"{path}: EVF-SAM1 checkpoint holds no visual_model.* keys")
        return sd
    sd = read_state_dict(path)
    if "model" in sd and not any(k.startswith("image_encoder.") for k in sd):
        raise CheckpointError(
            f"{path}: a {{'model': ...}} container, as SAM 2 releases are; SAM 1's sam_vit_h is a bare state "
            "dict (weights_format 'sam'), or use the SAM 2 encoder for this file"
        )
    return dict(sd)


def build(cfg: Config, weights_dir: str | Path | None = None) -> Sam1ImageEncoder:
    """The encoder of a preset: seeded random SAM 1, or the official file loaded strictly."""
    sam = random_or_loaded(cfg, weights_dir, "SAM 1", WEIGHTS_SOURCES, build_sam, read_sam1_state)
    return Sam1ImageEncoder(sam, cfg).eval().requires_grad_(False)


def build_empty(cfg: Config) -> Sam1ImageEncoder:
    """The encoder with every tensor on meta, uninitialised (a checkpoint's tensors are assigned into it)."""
    return Sam1ImageEncoder(build_sam(cfg, empty=True), cfg)
