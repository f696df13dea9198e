"""Build any encoder by name from a preset: `build_encoder("clip", "tiny")`."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

import torch

from pipeline.config import encoder_config
from pipeline.encoders.base import Encoder
from pipeline.provenance import canonical_json
from pipeline.settings import ENCODER_NAMES

# encoder name -> its default module under pipeline.encoders; each module has `Config` (pydantic) and `build`.
MODULES = {
    "clip": "clip_image",
    "clap": "clap_audio",
    "sam2": "sam2_image",
    "beit3": "beit3",
    "gt": "gt_mask",
}
assert tuple(MODULES) == ENCODER_NAMES, "pipeline.settings.ENCODER_NAMES lists the store's encoders"
# Other implementations an encoder name may take: a preset's <encoder>.json picks one with "impl". The store
# and the head still see the encoder name; its outputs' widths come from the implementation.
IMPLEMENTATIONS = {name: (module,) for name, module in MODULES.items()} | {
    "clap": ("clap_audio", "msclap_audio"),
    "sam2": ("sam2_image", "sam1_image"),  # the SAM slot: SAM 2 (EVF-SAM2) or SAM 1 (EVF-SAM1)
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


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' is the GPU when there is one."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_SHARED: dict[tuple, Encoder] = {}
_SHARED_LOCK = threading.Lock()


def get_encoder(
    name: str,
    preset: str | Path = "tiny",
    weights_dir: str | Path | None = None,
    device: str | torch.device = "auto",
    overrides: dict[str, Any] | None = None,
) -> Encoder:
    """One built encoder per (name, preset, weights, device, overrides) per process, shared by its threads.

    Encoders are frozen (eval, no grad), so sharing one between the stages and threads of a process is safe.
    """
    dev = resolve_device(device)
    key = (name, str(preset), str(weights_dir), str(dev), canonical_json(overrides or {}))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = build_encoder(name, preset, weights_dir, dev, overrides)
        return _SHARED[key]
