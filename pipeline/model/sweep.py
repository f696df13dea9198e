"""Sweep files: several heads trained in one pass, each a name (its folder under --out) and head fields."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.data.errors import DataError
from pipeline.files import safe_name
from pipeline.model.config import HeadConfig, head_config


def load_sweep(path: str | Path, preset: str = "tiny") -> dict[str, HeadConfig]:
    """A sweep file: JSON {name: HeadConfig fields} (or a list of {"name": ..., **fields}) over the preset's head."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise DataError(f"{path}: cannot read the sweep file: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"{e.msg}: line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else e
        raise DataError(f"{path}: the sweep file is not valid JSON: {where}") from e
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(d, dict) and "name" in d for d in raw):
        items = [(d["name"], {k: v for k, v in d.items() if k != "name"}) for d in raw]
    else:
        raise DataError(
            f'{path}: a sweep file holds {{name: head fields}} or a list of {{"name": ..., head fields}}'
        )
    if not items:
        raise DataError(f"{path}: the sweep file names no head")
    heads = {}
    for name, fields in items:
        safe_name(name, f"{path}: head")  # it becomes a folder under --out
        if not isinstance(fields, dict):
            raise DataError(f"{path}: head {name!r}: expected an object of head fields, got {fields!r}")
        try:
            heads[str(name)] = head_config(preset, **fields)
        except (ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError
            errs = e.errors(include_url=False) if hasattr(e, "errors") else None
            why = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in errs) if errs else e
            raise DataError(f"{path}: head {name!r}: invalid head config: {why}") from e
    return heads
