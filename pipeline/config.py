"""Presets as data: pipeline/presets/<preset>/<encoder>.json, validated by each encoder's pydantic Config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).parent / "presets"
WEIGHTS_ENV = "AV2T_WEIGHTS"


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.name for p in PRESETS_DIR.iterdir() if p.is_dir())


def preset_dir(preset: str | Path) -> Path:
    """A shipped preset by name, or a folder of the same shape given by path."""
    p = Path(preset)
    if p.is_dir():
        return p
    d = PRESETS_DIR / str(preset)
    if not d.is_dir():
        raise ValueError(f"unknown preset {preset!r}; shipped presets: {list_presets()} (or pass a folder)")
    return d


def encoder_config(preset: str | Path, encoder: str) -> dict[str, Any]:
    """The raw JSON config of one encoder in a preset."""
    path = preset_dir(preset) / f"{encoder}.json"
    if not path.is_file():
        raise ValueError(f"{path}: preset {preset!r} has no config for encoder {encoder!r}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from e


def weights_dir(explicit: str | Path | None = None) -> Path:
    """Where official checkpoints live: the argument, else $AV2T_WEIGHTS, else ./weights."""
    return Path(explicit or os.environ.get(WEIGHTS_ENV) or "weights").expanduser()


def resolve_weights(rel: str | None, wdir: str | Path | None) -> Path | None:
    """A preset's weights entry (relative to the weights folder, or absolute) as a path; None = random."""
    if rel is None:
        return None
    p = Path(rel).expanduser()
    return p if p.is_absolute() else weights_dir(wdir) / p
