"""Build any encoder by name from a preset: `build_encoder("clip", "tiny")`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from pipeline.config import encoder_config
from pipeline.encoders.base import Encoder

# encoder name -> module under pipeline.encoders; each module has `Config` (pydantic) and `build`.
MODULES = {
    "clip": "clip_image",
    "clap": "clap_audio",
    "sam2": "sam2_image",
    "beit3": "beit3",
    "gt": "gt_mask",
}
ENCODER_NAMES = tuple(MODULES)


def encoder_module(name: str):
    """The module implementing an encoder."""
    if name not in MODULES:
        raise ValueError(f"unknown encoder {name!r}; choose from {ENCODER_NAMES}")
    return importlib.import_module(f"pipeline.encoders.{MODULES[name]}")


def build_encoder(
    name: str,
    preset: str | Path = "tiny",
    weights_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    overrides: dict[str, Any] | None = None,
) -> Encoder:
    """A frozen encoder in eval mode on device, configured by the preset (plus overrides), loaded strictly."""
    mod = encoder_module(name)
    cfg = mod.Config.model_validate({**encoder_config(preset, name), **(overrides or {})})
    enc = mod.build(cfg, weights_dir=weights_dir)
    return enc.eval().requires_grad_(False).to(device)
