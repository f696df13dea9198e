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


# Extraction precision is part of what decides features: bf16 ones get their own fingerprint. fp32 adds
# nothing, so stores extracted before the setting existed keep theirs.
PRECISION_KEY = "compute_precision"


def with_precision(provenance: dict[str, Any], precision: str) -> dict[str, Any]:
    """An encoder's provenance as the store records it for features computed in `precision`."""
    return provenance if precision == "fp32" else {**provenance, PRECISION_KEY: precision}


def precision_of(provenance: dict[str, Any]) -> str:
    """The compute precision a recorded provenance names (fp32 when it names none)."""
    return str(provenance.get(PRECISION_KEY, "fp32"))


def precision_variants(
    provenance: dict[str, Any], precisions: tuple[str, ...] = ("fp32", "bf16")
) -> dict[str, str]:
    """fingerprint -> precision, for this encoder's features in each compute precision."""
    return {fingerprint(with_precision(provenance, p)): p for p in precisions}
