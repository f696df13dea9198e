"""Summaries of a store for `av2t cache info`."""

from __future__ import annotations

from typing import Any

from cache.store import FeatureStore


def store_info(store: FeatureStore) -> dict[str, Any]:
    """Groups, encoders, fingerprints, rows done / total, bytes stored and compression ratio."""
    groups = []
    for subset, split in store.groups():
        g = store.split(subset, split)
        encoders = {}
        for e in g.encoders():
            raw, stored = e.nbytes(), e.nbytes_stored()
            encoders[e.key] = {
                "name": e.name,
                "fingerprint": e.fingerprint,
                "rows_done": e.rows_done(),
                "rows_total": g.n_rows,
                "bytes_stored": stored,
                "bytes_raw": raw,
                "compression_ratio": round(raw / stored, 3) if stored else None,
                "arrays": e.specs_json,
                "provenance": e.provenance,
            }
        groups.append(
            {
                "subset": subset,
                "split": split,
                "rows": g.n_rows,
                "videos": len(g.index.videos()),
                "block_rows": g.block_rows,
                "index_digest": g.index_digest,
                "encoders": encoders,
            }
        )
    return {"store": store.url, "groups": groups}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def info_text(info: dict[str, Any]) -> str:
    """A human table of store_info."""
    lines = [f"store {info['store']}"]
    if not info["groups"]:
        lines.append("  (no groups)")
    for g in info["groups"]:
        lines.append(
            f"{g['subset']}/{g['split']}: {g['videos']} videos, {g['rows']} rows (index {g['index_digest']})"
        )
        if not g["encoders"]:
            lines.append("  (no encoders)")
        for key, e in g["encoders"].items():
            ratio = f"{e['compression_ratio']:.2f}x" if e["compression_ratio"] else "-"
            arrays = ", ".join(f"{k} {tuple(v['shape'])} {v['dtype']}" for k, v in e["arrays"].items())
            lines.append(
                f"  {key:<32} rows {e['rows_done']}/{e['rows_total']}  {_size(e['bytes_stored']):>10} on disk  "
                f"{ratio:>6}  [{arrays}]"
            )
    return "\n".join(lines)
