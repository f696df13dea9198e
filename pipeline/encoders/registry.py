"""Build any encoder by name from a preset: `build_encoder("clip", "tiny")`."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

import torch

from pipeline.devices import resolve_device
from pipeline.encoders.base import Encoder
from pipeline.presets import encoder_config
from pipeline.provenance import canonical_json

# encoder name -> its default module under pipeline.encoders; each module has `Config` (pydantic) and `build`.
MODULES = {
    "clip": "clip_image",
    "clap": "clap_audio",
    "sam2": "sam2_image",
    "beit3": "beit3",
    "gt": "gt_mask",
}
# The same tuple as pipeline.settings.ENCODER_NAMES (the light copy the CLI reads; tests/test_presets.py checks).
ENCODER_NAMES: tuple[str, ...] = tuple(MODULES)
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


def check_overrides(preset: str | Path, overrides: dict[str, dict[str, Any]]) -> None:
    """Refuse overrides that name no encoder or no field of the encoder's config (ValueError, one line).

    Validated as build_encoder will, against the preset's config, so a bad override is refused before any
    file is written rather than at the first build; a preset that cannot be read is left to its own error.
    """
    import difflib

    from pydantic import ValidationError

    for name, fields in overrides.items():
        if name not in MODULES:
            near = difflib.get_close_matches(name, MODULES, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"unknown encoder {name!r}{hint}; the encoders are {', '.join(MODULES)}")
        try:
            raw = {**encoder_config(preset, name), **fields}
        except ValueError:
            continue
        mod = encoder_module(name, raw.pop(IMPL_KEY, None))
        try:
            mod.Config.model_validate(raw)
        except ValidationError as e:
            problems = []
            for err in e.errors(include_url=False):
                where = ".".join(str(x) for x in (name, *err["loc"]))
                text = err["msg"]
                if err["type"] == "extra_forbidden":
                    near = difflib.get_close_matches(str(err["loc"][-1]), mod.Config.model_fields, n=1)
                    text = "no such field" + (f" (did you mean {near[0]!r}?)" if near else "")
                problems.append(f"{where}: {text}")
            raise ValueError("; ".join(problems)) from None


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
