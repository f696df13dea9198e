"""Summaries of a store for `av2t cache info`."""

from __future__ import annotations

from typing import Any

from cache.errors import UNCHECKED, VERIFY_IT, StoreDamaged
from cache.specs import SCALE_SUFFIX, scale_names
from cache.store import FeatureStore


def store_info(store: FeatureStore) -> dict[str, Any]:
    """Groups, encoders, fingerprints, rows done / total, bytes stored, compression ratio, checksums.

    rows_done counts rows marked done whose chunks are all in the store; rows_missing_chunks the rows marked
    done whose chunks are absent (lost: `av2t cache verify` names them). checksums: per array "crc32c", or
    None for an array written before checksums. quantized: the int8 arrays stored with a float32
    `<name>_scale` companion (extract --quantize int8), empty otherwise.
    """
    groups = []
    for subset, split in store.groups():
        g = store.split(subset, split)
        encoders = {}
        for e in g.encoders():
            raw, stored = e.nbytes(), e.nbytes_stored()
            try:
                recorded, done, damaged = int(e.done_record().sum()), e.rows_done(), None
            except StoreDamaged as err:  # the completion record itself: verify names it
                recorded, done, damaged = None, None, str(err).splitlines()[1].strip()
            encoders[e.key] = {
                "name": e.name,
                "fingerprint": e.fingerprint,
                "rows_done": done,
                "rows_total": g.n_rows,
                "rows_missing_chunks": None if done is None else recorded - done,
                "completion_record_damaged": damaged,
                "bytes_stored": stored,
                "bytes_raw": raw,
                "compression_ratio": round(raw / stored, 3) if stored else None,
                "arrays": e.specs_json,
                "quantized": sorted(k.removesuffix(SCALE_SUFFIX) for k in scale_names(e.specs)),
                "checksums": {k: e.checksum(k) for k in [*e.specs, "done"]},
                "provenance": e.provenance,
            }
        groups.append(
            {
                "subset": subset,
                "split": split,
                "rows": g.n_rows,
                "videos": _videos(g),
                "block_rows": g.block_rows,
                "index_digest": g.index_digest,
                "index_checksum": g.index_checksum(),
                "encoders": encoders,
            }
        )
    return {"store": store.url, "groups": groups}


def _videos(g) -> int | None:
    try:
        return len(g.index.videos())
    except StoreDamaged:
        return None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _checksums(sums: dict[str, str | None]) -> str:
    checked = [k for k, v in sums.items() if v]
    unchecked = [k for k, v in sums.items() if not v]
    parts = []
    if checked:
        parts.append(f"checked (crc32c): {', '.join(checked)}")
    if unchecked:
        parts.append(f"{UNCHECKED}: {', '.join(unchecked)}")
    return "; ".join(parts)


def info_text(info: dict[str, Any]) -> str:
    """A human table of store_info."""
    lines = [f"store {info['store']}"]
    if not info["groups"]:
        lines.append("  (no groups)")
    for g in info["groups"]:
        videos = f"? (index damaged: {VERIFY_IT})" if g["videos"] is None else g["videos"]
        lines.append(
            f"{g['subset']}/{g['split']}: {videos} videos, {g['rows']} rows (index {g['index_digest']}, "
            f"{'checked (crc32c)' if g['index_checksum'] else 'unchecked'})"
        )
        if not g["encoders"]:
            lines.append("  (no encoders)")
        for key, e in g["encoders"].items():
            ratio = f"{e['compression_ratio']:.2f}x" if e["compression_ratio"] else "-"
            arrays = ", ".join(f"{k} {tuple(v['shape'])} {v['dtype']}" for k, v in e["arrays"].items())
            done = "?" if e["rows_done"] is None else e["rows_done"]
            lines.append(
                f"  {key:<32} rows {done}/{e['rows_total']}  {_size(e['bytes_stored']):>10} on disk  "
                f"{ratio:>6}  [{arrays}]"
            )
            lines.append(f"    {_checksums(e['checksums'])}")
            if e.get("quantized"):
                lines.append(
                    f"    int8 with a float32 scale per row and channel: {', '.join(e['quantized'])}"
                )
            if e["completion_record_damaged"]:
                lines.append(f"    completion record damaged: {e['completion_record_damaged']}")
            if e["rows_missing_chunks"]:
                lines.append(
                    f"    {e['rows_missing_chunks']} row(s) marked done have missing chunks and are not counted: "
                    f"{VERIFY_IT}"
                )
    return "\n".join(lines)
