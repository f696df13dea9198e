"""Provenance and fingerprints, the one module cache/ and pipeline/ share: digests of what decides features."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal content hashes equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(provenance: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical provenance."""
    return hashlib.sha256(canonical_json(provenance).encode()).hexdigest()[:16]


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones as 'absent')."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "absent"
    return out


def diff_provenance(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of the fields where two provenances differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        path = f"{prefix}{k}"
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_provenance(va, vb, path + ".")
        elif canonical_json(va) != canonical_json(vb):
            out.append(f"{path}: {va!r} != {vb!r}")
    return out
