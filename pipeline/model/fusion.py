"""Fusion of the CLIP and CLAP embeddings and the MLP into BEiT-3's token space (AV2T's `Projector`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.config import HeadConfig

AUTO_SCALE_SAMPLES = 256  # random unit inputs used to measure the fused feature's RMS at init


def kaiming_init(module: nn.Module) -> None:
    """The reference Projector's init: kaiming normal weights (fan_in, gain sqrt 2), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)


class Fusion:
    """One way to fuse the L2-normalised embeddings: the layers it adds to the Projector, and the fusion.

    The layers are attributes of the Projector itself (not of a sub-module), so that the reference's key
    names (`projector.vision_proj.weight`, ...) hold; they are created in the order `layers` lists them.
    """

    name: str = ""

    @staticmethod
    def layers(d_clip: int, d_clap: int, d: int) -> dict[str, nn.Module]:
        """The fusion's trainable layers by attribute name."""
        raise NotImplementedError

    @staticmethod
    def fuse(m: nn.Module, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, d_clip), (B, d_clap) normalised embeddings -> (B, d_shared), with the layers on m."""
        raise NotImplementedError


FUSIONS: dict[str, type[Fusion]] = {}


def register_fusion(name: str):
    """Class decorator: make a fusion selectable as a head's `"fusion": name`."""

    def add(cls: type[Fusion]) -> type[Fusion]:
        cls.name = name
        FUSIONS[name] = cls
        return cls

    return add


def _projections(d_clip: int, d_clap: int, d: int) -> dict[str, nn.Module]:
    return {"vision_proj": nn.Linear(d_clip, d), "audio_proj": nn.Linear(d_clap, d)}


@register_fusion("mul")
class Mul(Fusion):
    """The paper: f_CLIP * f_CLAP of the projected embeddings."""

    layers = staticmethod(_projections)

    @staticmethod
    def fuse(m: nn.Module, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return m.audio_proj(a) * m.vision_proj(v)


@register_fusion("clip")
class ClipOnly(Fusion):
    """The paper's image-only ablation: the projected CLIP embedding."""

    @staticmethod
    def layers(d_clip: int, d_clap: int, d: int) -> dict[str, nn.Module]:
        return {"vision_proj": nn.Linear(d_clip, d)}

    @staticmethod
    def fuse(m: nn.Module, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return m.vision_proj(v)


@register_fusion("clap")
class ClapOnly(Fusion):
    """The paper's audio-only ablation: the projected CLAP embedding."""

    @staticmethod
    def layers(d_clip: int, d_clap: int, d: int) -> dict[str, nn.Module]:
        return {"audio_proj": nn.Linear(d_clap, d)}

    @staticmethod
    def fuse(m: nn.Module, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return m.audio_proj(a)


@register_fusion("sum")
class Sum(Fusion):
    """f_CLIP + f_CLAP."""

    layers = staticmethod(_projections)

    @staticmethod
    def fuse(m: nn.Module, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return m.vision_proj(v) + m.audio_proj(a)


@register_fusion("concat")
class Concat(Fusion):
    """One projection of [v; a]."""

    @staticmethod
    def layers(d_clip: int, d_clap: int, d: int) -> dict[str, nn.Module]:
        return {"joint_proj": nn.Linear(d_clip + d_clap, d)}

    @staticmethod
    def fuse(m: nn.Module, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return m.joint_proj(torch.cat([v, a], dim=-1))


@register_fusion("gated")
class Gated(Fusion):
    """g * f_CLIP + (1 - g) * f_CLAP with g = sigmoid(W [f_CLIP; f_CLAP])."""

    @staticmethod
    def layers(d_clip: int, d_clap: int, d: int) -> dict[str, nn.Module]:
        return {**_projections(d_clip, d_clap, d), "gate": nn.Linear(2 * d, d)}

    @staticmethod
    def fuse(m: nn.Module, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        fv, fa = m.vision_proj(v), m.audio_proj(a)
        g = torch.sigmoid(m.gate(torch.cat([fv, fa], dim=-1)))
        return g * fv + (1 - g) * fa


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
