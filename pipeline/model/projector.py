"""AV2T's `Projector`: normalise, project and fuse the CLIP and CLAP embeddings, and the MLP into BEiT-3's
token space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.config import HeadConfig
from pipeline.model.fusion import FUSIONS, kaiming_init

AUTO_SCALE_SAMPLES = 256  # random unit inputs used to measure the fused feature's RMS at init


class Projector(nn.Module):
    """L2-normalise, project and fuse (B, d_clip) and (B, d_clap) into (B, d_shared); map that to tokens.

    Parameter names follow the reference (`vision_proj`, `audio_proj`, `to_text_space`), so its checkpoints
    map onto this module one to one for the `mul`, `clip` and `clap` fusions.
    """

    def __init__(self, cfg: HeadConfig, d_clip: int, d_clap: int, token_dim: int):
        super().__init__()
        self.fusion = cfg.fusion
        self._fusion = FUSIONS[cfg.fusion]
        self.n_tokens, self.token_dim = cfg.n_tokens, token_dim
        d = cfg.d_shared
        for name, layer in self._fusion.layers(d_clip, d_clap, d).items():
            setattr(self, name, layer)
        self.to_text_space = nn.Sequential(
            nn.Linear(d, cfg.mlp_hidden), nn.ReLU(), nn.Linear(cfg.mlp_hidden, cfg.n_tokens * token_dim)
        )
        kaiming_init(self)
        if cfg.fused_scale != 1.0:
            self.register_buffer("fused_scale", torch.tensor(1.0))
            value = self._init_scale(d_clip, d_clap) if cfg.fused_scale == "auto" else cfg.fused_scale
            self.fused_scale.fill_(value)
        else:
            self.fused_scale = None  # the reference: no factor, and no extra key in the state dict

    @torch.no_grad()
    def _init_scale(self, d_clip: int, d_clap: int) -> float:
        """1 / RMS of the unscaled fused feature for random unit-norm inputs (uses the caller's RNG)."""
        p = self.to_text_space[0].weight
        v = torch.randn(AUTO_SCALE_SAMPLES, d_clip, device=p.device, dtype=p.dtype)
        a = torch.randn(AUTO_SCALE_SAMPLES, d_clap, device=p.device, dtype=p.dtype)
        rms = self._fuse(v, a).pow(2).mean().sqrt().item()
        return 1.0 / rms if rms > 0 else 1.0

    def _fuse(self, clip: torch.Tensor, clap: torch.Tensor) -> torch.Tensor:
        v = F.normalize(clip, p=2, dim=-1)
        a = F.normalize(clap, p=2, dim=-1)
        return self._fusion.fuse(self, v, a)

    def forward(self, clip: torch.Tensor, clap: torch.Tensor) -> torch.Tensor:
        """(B, d_clip), (B, d_clap) -> the fused feature (B, d_shared)."""
        f = self._fuse(clip, clap)
        return f if self.fused_scale is None else f * self.fused_scale

    def tokens(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, d_shared) -> (B, n_tokens, token_dim): token t is output slice t (the reference's reshape)."""
        return self.to_text_space(fused).view(fused.shape[0], self.n_tokens, self.token_dim)
