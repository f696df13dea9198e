"""Fusions of the CLIP and CLAP embeddings, a registry (`@register_fusion`); pipeline.model.projector uses them."""

from __future__ import annotations

import torch
from torch import nn


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
