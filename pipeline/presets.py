"""Presets as data: pipeline/presets/<preset>/<encoder>.json, validated by each encoder's pydantic Config.

A preset may extend another: its preset.json, `{"extends": "paper", "description": "..."}`, names the parent
(a shipped preset, or a folder relative to this one), and the preset holds only the files that differ; every
other file (<encoder>.json, head.json, train.json) comes from the nearest preset up the chain (`preset_file`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).parent / "presets"
WEIGHTS_ENV = "AV2T_WEIGHTS"
META = "preset.json"  # {"extends": <preset>, "description": <text>}, both optional
META_KEYS = frozenset({"extends", "description"})


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


def _parent_dir(child: Path, parent: Any) -> Path:
    """The folder of the preset `child` extends: a shipped preset by name, else a folder (relative to child)."""
    meta = child / META
    if not isinstance(parent, str) or not parent:
        raise ValueError(f"{meta}: 'extends' must name a preset, got {parent!r}")
    shipped = PRESETS_DIR / parent
    if Path(parent).name == parent and shipped.is_dir():
        return shipped
    folder = (child / Path(parent).expanduser()).resolve()  # an absolute path stays as it is
    if not folder.is_dir():
        raise ValueError(
            f"{meta}: extends unknown preset {parent!r}; shipped presets: {list_presets()} "
            f"(or a folder, relative to {child})"
        )
    return folder


def _extends(folder: Path) -> Any:
    """The `extends` entry of a preset folder's preset.json (None: a preset of its own)."""
    meta = folder / META
    if not meta.is_file():
        return None
    try:
        raw = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta}: invalid JSON: {e}") from e
    if not isinstance(raw, dict) or set(raw) - META_KEYS:
        raise ValueError(f"{meta}: expected an object with keys among {sorted(META_KEYS)}, got {raw!r}")
    return raw.get("extends")


def preset_chain(preset: str | Path) -> list[Path]:
    """The preset's folder, then the folder of the preset it extends (its preset.json), and so on."""
    chain = [preset_dir(preset)]
    while (parent := _extends(chain[-1])) is not None:
        folder = _parent_dir(chain[-1], parent)
        if folder.resolve() in {c.resolve() for c in chain}:
            cycle = " -> ".join(str(c) for c in [*chain, folder])
            raise ValueError(f"preset {str(preset)!r} extends itself: {cycle}")
        chain.append(folder)
    return chain


def preset_file(preset: str | Path, name: str) -> Path | None:
    """A preset's file `name` (e.g. "clip.json", "head.json"): its own, else the nearest one up the chain of
    presets it extends; None when no preset of the chain has one."""
    return next((d / name for d in preset_chain(preset) if (d / name).is_file()), None)


def encoder_config(preset: str | Path, encoder: str) -> dict[str, Any]:
    """The raw JSON config of one encoder in a preset (or in the preset it extends)."""
    path = preset_file(preset, f"{encoder}.json")
    if path is None:
        raise ValueError(f"preset {str(preset)!r} has no config for encoder {encoder!r} ({encoder}.json)")
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
