"""BEiT-3, EVF-SAM's multimodal encoder, built from torchscale's own class.

Extraction caches only the vision patch embedding (`beit3.vision_embed(image)`: CLS + patches, before
positions), because training feeds learned pseudo-tokens through the frozen encoder in every step:
`forward_tokens(cached_patches, pseudo_tokens)` then runs the multiway encoder exactly as torchscale's
`BEiT3.forward` would with those tokens in place of the word embeddings.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from pipeline.checkpoints import (
    load_strict,
    read_evf_sam2,
    require_file,
    require_materialised,
    to_empty_keeping_buffers,
)
from pipeline.encoders.base import Encoder, frames_tensor, seeded
from pipeline.presets import resolve_weights

with warnings.catch_warnings():  # torchscale 0.3.0 imports timm's deprecated `timm.models.layers`
    warnings.filterwarnings("ignore", message="Importing from timm.models.layers", category=FutureWarning)
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3

PREFIX = "mm_extractor.beit3."
SOURCE = "the EVF-SAM2 checkpoint, HF YxZhang/evf-sam2-multitask (model.safetensors)"
OUTPUT = "beit3_patches"
MEAN = STD = 0.5  # EVF-SAM/AV2T: Normalize(mean=(0.5,)*3, std=(0.5,)*3) on [0, 1] pixels


class Config(BaseModel):
    """BEiT-3 architecture (defaults: EVF-SAM's `_get_large_config`), weights and preprocessing."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = None  # EVF-SAM2 model.safetensors, relative to the weights folder; None = random
    img_size: int = Field(224, gt=0)  # frames are resized (bicubic) to this square size
    patch_size: int = Field(16, gt=0)
    embed_dim: int = Field(1024, gt=0)
    layers: int = Field(24, gt=0)
    heads: int = Field(16, gt=0)
    ffn_dim: int = Field(4096, gt=0)
    vocab_size: int = Field(64010, gt=0)
    max_source_positions: int = Field(1024, gt=2)  # rows of the text position table (text uses 2..T+1)
    seed: int = 0  # random init only
    # Random init only: torchscale draws both position tables from N(0, 1), which drowns small
    # pseudo-tokens in a random model (DESIGN.md §6); the tables are multiplied by this after init.
    # Loaded weights overwrite the tables, so it must stay 1.0 when `weights` is set.
    position_init_scale: float = Field(1.0, gt=0)
    # Both references resize a float tensor with torchvision's legacy default (no antialias);
    # it only matters for frames that are not already img_size x img_size.
    antialias: bool = False

    @model_validator(mode="after")
    def _check(self) -> Config:
        """Reject combinations torchscale or the loader would misuse silently."""
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by heads {self.heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.weights is not None and self.position_init_scale != 1.0:
            raise ValueError("position_init_scale only applies to random init; set it to 1.0 with weights")
        return self


def torchscale_config(cfg: Config) -> EncoderConfig:
    """The torchscale EncoderConfig that EVF-SAM's `_get_large_config` builds, at cfg's sizes."""
    return EncoderConfig(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        vocab_size=cfg.vocab_size,
        multiway=True,
        layernorm_embedding=False,
        normalize_output=True,
        no_output_layer=True,
        drop_path_rate=0.0,
        encoder_embed_dim=cfg.embed_dim,
        encoder_attention_heads=cfg.heads,
        encoder_ffn_embed_dim=cfg.ffn_dim,
        encoder_layers=cfg.layers,
        max_source_positions=cfg.max_source_positions,
        checkpoint_activations=False,
    )


def _trunc_normal_(w: torch.Tensor, std: float) -> None:
    """N(0, std) cut at ±std by inverse CDF, the algorithm of timm's trunc_normal_ that EVF calls.

    torch's own trunc_normal_ (2.13) rejection-samples the whole tensor until every value fits, which
    took seconds even for the tiny model.
    """
    edge = math.erf(1 / math.sqrt(2))  # 2 * Phi(1) - 1: the uniform range that maps onto [-std, std]
    w.uniform_(-edge, edge).erfinv_().mul_(std * math.sqrt(2)).clamp_(-std, std)


def _wrapper_init(m: nn.Module) -> None:
    """EVF's BEiT3Wrapper._init_weights: truncated normal Linear (std .02, cut at ±std), unit LayerNorm."""
    if isinstance(m, nn.Linear):
        _trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def make_beit3(cfg: Config, device: str | torch.device = "cpu") -> BEiT3:
    """torchscale's BEiT3 at cfg's sizes, default-initialised (use device="meta" for shapes only)."""
    with torch.device(device):
        return BEiT3(torchscale_config(cfg))


def random_beit3(cfg: Config) -> BEiT3:
    """A seeded random BEiT3 initialised like EVF's BEiT3Wrapper, position tables scaled."""
    with seeded(cfg.seed), torch.no_grad():
        model = make_beit3(cfg)
        model.apply(_wrapper_init)  # embeddings keep torchscale's own init, as in EVF
        for table in (model.encoder.embed_positions.A, model.encoder.embed_positions.B):
            table.weight.mul_(cfg.position_init_scale)
    return model


def load_beit3(cfg: Config, path: Path) -> BEiT3:
    """BEiT3 loaded strictly from the `mm_extractor.beit3.*` part of an EVF-SAM2 checkpoint."""
    sd = read_evf_sam2(path)[PREFIX]  # the SAM 2 and fcs parts are dropped here
    model = make_beit3(cfg, device="meta")
    own = model.state_dict()
    # Cast file tensors (often fp16) one by one now, so load_strict's own cast is a no-op and the
    # half-precision copies are freed as we go: peak RAM stays near two float32 copies of BEiT-3.
    for k in list(sd):
        if k in own:
            sd[k] = sd[k].to(own[k].dtype)
    to_empty_keeping_buffers(model, "cpu")
    load_strict(model, sd, path)
    require_materialised(model, path)
    return model


def preprocess_frames(batch: np.ndarray | torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """uint8 RGB (B, H, W, 3) to (B, 3, size, size) in [-1, 1]: ToTensor, bicubic resize, Normalize(.5, .5)
    (on the frames' device)."""
    x = frames_tensor(batch).permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-2:] != (size, size):  # torchvision returns the input itself when the size matches
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias)
    return x.sub_(MEAN).div_(STD)  # in place (same values); the layout the patch embedding sees is unchanged


class Beit3Encoder(Encoder):
    """Frozen torchscale BEiT-3: caches the vision patch embedding, runs pseudo-tokens in training."""

    name = "beit3"
    input = "frames"

    def __init__(self, cfg: Config, beit3: BEiT3):
        super().__init__()
        self.cfg = cfg
        self.beit3 = beit3

    @property
    def num_vision_tokens(self) -> int:
        """CLS + patches (197 at 224 px / 16)."""
        return self.beit3.vision_embed.num_position_embeddings()

    @property
    def max_text_tokens(self) -> int:
        """Longest text part the position table holds (positions start at 2, as in fairseq)."""
        return self.cfg.max_source_positions - 2

    def host_input(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 frames as they are."""
        return frames_tensor(batch)

    def device_input(self, x: torch.Tensor) -> torch.Tensor:
        """Frames to the [-1, 1] img_size input of EVF-SAM's `images_evf` (224 px in the paper)."""
        return preprocess_frames(x, self.cfg.img_size, self.cfg.antialias)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The vision token embeddings the encoder consumes before positions are added."""
        w = self.beit3.vision_embed.proj.weight
        return {OUTPUT: self.beit3.vision_embed(x.to(device=w.device, dtype=w.dtype))}

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> BEiT-3's word embeddings (B, T, D), as `BEiT3.forward` takes them (`text_embed`)."""
        w = self.beit3.text_embed.weight
        return self.beit3.text_embed(torch.as_tensor(ids).to(device=w.device, dtype=torch.long))

    def forward_tokens(
        self,
        vision_patches: torch.Tensor,
        text_tokens: torch.Tensor,
        text_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, V, D) cached patches + (B, T, D) pseudo-tokens -> (B, D) output token 0 after the final LN.

        Same computation as torchscale's `BEiT3.forward(visual_tokens, textual_tokens,
        text_padding_position=zeros)` with `text_tokens` in place of `text_embed(ids)`: vision expert and
        vision positions for the first V tokens, language expert and text rows 2..T+1 for the rest.
        Differentiable in its inputs; the parameters stay frozen. `text_padding` (B, T) bool marks padded text
        positions (torchscale's `text_padding_position`): zeroed and ignored as attention keys.
        """
        b, v, d = vision_patches.shape
        if v != self.num_vision_tokens or d != self.cfg.embed_dim:
            raise ValueError(
                f"vision_patches {tuple(vision_patches.shape)}: expected (B, {self.num_vision_tokens}, "
                f"{self.cfg.embed_dim})"
            )
        if text_tokens.ndim != 3 or text_tokens.shape[0] != b or text_tokens.shape[2] != d:
            raise ValueError(f"text_tokens {tuple(text_tokens.shape)}: expected ({b}, T, {d})")
        if not 0 < text_tokens.shape[1] <= self.max_text_tokens:
            raise ValueError(f"text_tokens: T={text_tokens.shape[1]} not in 1..{self.max_text_tokens}")
        w = self.beit3.text_embed.weight
        x = torch.cat([vision_patches.to(w.device, w.dtype), text_tokens.to(w.device, w.dtype)], dim=1)
        if text_padding is None:
            # No padding mask: torchscale then builds an all-False one, as BEiT3.forward does for zeros.
            out = self.beit3.encoder(src_tokens=None, token_embeddings=x, multiway_split_position=v)
        else:
            if tuple(text_padding.shape) != tuple(text_tokens.shape[:2]):
                raise ValueError(
                    f"text_padding {tuple(text_padding.shape)}: expected {tuple(text_tokens.shape[:2])}"
                )
            vision_pad = torch.zeros(b, v, dtype=torch.bool, device=x.device)
            mask = torch.cat([vision_pad, text_padding.to(device=x.device, dtype=torch.bool)], dim=1)
            out = self.beit3.encoder(
                src_tokens=None, token_embeddings=x, encoder_padding_mask=mask, multiway_split_position=v
            )
        return out["encoder_out"][:, 0]

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """(197, 1024) for BEiT-3-L at 224 px."""
        return {OUTPUT: (self.num_vision_tokens, self.cfg.embed_dim)}

    def config_dict(self) -> dict[str, Any]:
        """The architecture and init (the weights file itself is covered by the weights digest)."""
        return self.cfg.model_dump(exclude={"weights", "antialias"})

    def preprocessing_dict(self) -> dict[str, Any]:
        """Resize, scaling and normalisation of `images_evf`."""
        return {
            "input": "uint8 RGB",
            "resize": [self.cfg.img_size, self.cfg.img_size],
            "interpolation": "bicubic",
            "antialias": self.cfg.antialias,
            "scale": 1 / 255,
            "mean": [MEAN] * 3,
            "std": [STD] * 3,
        }


def build(cfg: Config, weights_dir: str | Path | None = None) -> Beit3Encoder:
    """A frozen Beit3Encoder: random seeded init when cfg.weights is None, else strictly loaded."""
    if cfg.weights is None:
        model = random_beit3(cfg)
    else:
        path = require_file(resolve_weights(cfg.weights, weights_dir), "EVF-SAM2 BEiT-3", SOURCE)
        model = load_beit3(cfg, path)
    return Beit3Encoder(cfg, model).eval().requires_grad_(False)
