"""Build any encoder by name from a preset: `build_encoder("clip", "tiny")`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from pipeline.config import encoder_config
from pipeline.encoders.base import Encoder

# encoder name -> its default module under pipeline.encoders; each module has `Config` (pydantic) and `build`.
MODULES = {
    "clip": "clip_image",
    "clap": "clap_audio",
    "sam2": "sam2_image",
    "beit3": "beit3",
    "gt": "gt_mask",
}
ENCODER_NAMES = tuple(MODULES)
# Other implementations an encoder name may take: a preset's <encoder>.json picks one with "impl". The store
# and the head still see the encoder name; its outputs' widths come from the implementation.
IMPLEMENTATIONS = {name: (module,) for name, module in MODULES.items()} | {
    "clap": ("clap_audio", "msclap_audio"),
}
IMPL_KEY = "impl"


def encoder_module(name: str, impl: str | None = None):
    """The module implementing an encoder (its default one unless impl names another)."""
    if name not in MODULES:
        raise ValueError(f"unknown encoder {name!r}; choose from {ENCODER_NAMES}")
    impl = impl or MODULES[name]
    if impl not in IMPLEMENTATIONS[name]:
        raise ValueError(f"encoder {name!r}: unknown impl {impl!r}; choose from {IMPLEMENTATIONS[name]}")
    return importlib.import_module(f"pipeline.encoders.{impl}")


def build_encoder(
    name: str,
    preset: str | Path = "tiny",
    weights_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    overrides: dict[str, Any] | None = None,
) -> Encoder:
    """A frozen encoder in eval mode on device, configured by the preset (plus overrides), loaded strictly."""
    raw = {**encoder_config(preset, name), **(overrides or {})}
    mod = encoder_module(name, raw.pop(IMPL_KEY, None))
    cfg = mod.Config.model_validate(raw)
    enc = mod.build(cfg, weights_dir=weights_dir)
    if enc.name != name:
        raise ValueError(f"{mod.__name__} builds encoder {enc.name!r}, not {name!r}")
    return enc.eval().requires_grad_(False).to(device)
