"""Negative-audio CLAP rows in the feature store: CLAP's embedding of silence and of each row's white noise.

Written once per split by `av2t extract --negatives` beside the clap encoder's arrays, read by the cached
robustness suite (and negative-audio training) instead of running CLAP again. Layout, per split group:

    <subset>/<split>/negatives/clap@<negatives fingerprint>/
        silence (1, d)       CLAP of an all-zero segment
        noise   (n_rows, d)  CLAP of `noise_segment(seed, video, frame)` for every store row, in row order

in the clap array's dtype. The negatives fingerprint hashes the clap features' fingerprint with the spec
(kinds, seed, noise definition, segment), so rows of another seed, noise or CLAP are never read as these.
The off-screen condition needs no rows of its own: it reads the partner video's cached CLAP rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs

from cache.errors import StoreError
from cache.store import FeatureStore, SplitGroup
from pipeline.provenance import fingerprint

GROUP = "negatives"
ENCODER = "clap"
KINDS = ("silence", "noise")
COMMAND = "av2t extract --negatives"
# What the noise is; changing the generator or its scale must change this text (and so the fingerprint).
NOISE_DEFINITION = (
    "pipeline.negatives.noise_segment: uniform white noise in [-1, 1) at full scale, float32, one segment of "
    "the encoder's sample rate per row, numpy default_rng seeded by crc32(seed, 'noise', video, frame)"
)
SEGMENT = "one segment of the encoder's own length: sample_rate samples, mono"


def negatives_spec(seed: int = 0) -> dict[str, Any]:
    """What the negative rows are: kinds, seed, the noise definition and the segment."""
    return {"kinds": list(KINDS), "seed": int(seed), "noise": NOISE_DEFINITION, "segment": SEGMENT}


def negatives_fingerprint(clap_fingerprint: str, seed: int = 0) -> str:
    """The CLAP fingerprint + the negatives' spec: another seed, noise or CLAP gives another fingerprint."""
    return fingerprint({"clap": clap_fingerprint, "negatives": negatives_spec(seed)})


def _key(clap_fingerprint: str, seed: int) -> str:
    return f"{ENCODER}@{negatives_fingerprint(clap_fingerprint, seed)}"


def _how_to_write(store: str, subset: str, split: str, seed: int) -> str:
    seed_opt = f" --negatives-seed {seed}" if seed else ""
    return (
        f"write them with `{COMMAND}`: av2t extract --store {store} --subset {subset} --splits {split} "
        f"--encoders clap --negatives{seed_opt} --root <AVSBench root> --preset <preset it was extracted with>"
    )


def _held(group: SplitGroup) -> list[dict[str, Any]]:
    """Attributes of every negatives sub-group of the split."""
    if GROUP not in group.group:
        return []
    return [dict(g.attrs.asdict(), key=k) for k, g in sorted(group.group[GROUP].groups())]


def _open_split(store: str | Path, subset: str, split: str, mode: str) -> SplitGroup:
    return FeatureStore(str(store), mode=mode).split(subset, split)


def read_negative_clap(
    store: str | Path, subset: str, split: str, clap_fingerprint: str, seed: int = 0
) -> dict[str, np.ndarray]:
    """{"silence": (1, d) float32, "noise": (n_rows, d) float32 in the split's store row order}."""
    group = _open_split(store, subset, split, "r")
    key = _key(clap_fingerprint, seed)
    where = f"{group.store.url}: {subset}/{split}"
    held = _held(group)
    mine = [h for h in held if h["key"] == key and h.get("complete")]
    if not mine:
        others = "; ".join(
            f"{h['key']} (clap {h.get('clap_fingerprint')}, seed {h.get('spec', {}).get('seed')}"
            f"{'' if h.get('complete') else ', unfinished'})"
            for h in held
        )
        have = f"it holds only {others}" if held else "it holds none"
        raise StoreError(
            f"{where}: no negative-audio CLAP rows for clap fingerprint {clap_fingerprint} and seed {seed} "
            f"({have}); {_how_to_write(str(store), subset, split, seed)}"
        )
    g = group.group[GROUP][key]
    if mine[0].get("index_digest") != group.index_digest:
        raise StoreError(
            f"{where}: the negative-audio CLAP rows {key} were written for other rows (index "
            f"{mine[0].get('index_digest')}, the split's is {group.index_digest}); "
            f"{_how_to_write(str(store), subset, split, seed)}"
        )
    out = {k: np.asarray(g[k][:], dtype=np.float32) for k in KINDS}
    if out["silence"].shape[0] != 1 or out["noise"].shape[0] != group.n_rows:
        raise StoreError(
            f"{where}: the negative-audio CLAP rows {key} have shapes silence {out['silence'].shape}, noise "
            f"{out['noise'].shape}, not (1, d) and ({group.n_rows}, d): the store is damaged; delete "
            f"{GROUP}/{key} and {_how_to_write(str(store), subset, split, seed)}"
        )
    if not all(np.isfinite(x).all() for x in out.values()):
        raise StoreError(f"{where}: the negative-audio CLAP rows {key} hold inf/nan: the store is damaged")
    return out


def has_negative_clap(
    store: str | Path, subset: str, split: str, clap_fingerprint: str, seed: int = 0
) -> bool:
    """Whether the split holds finished negative rows for this CLAP fingerprint and seed."""
    group = _open_split(store, subset, split, "r")
    return any(h["key"] == _key(clap_fingerprint, seed) and h.get("complete") for h in _held(group))


def write_negative_clap(
    store: str | Path,
    subset: str,
    split: str,
    clap_fingerprint: str,
    seed: int,
    silence: np.ndarray,
    noise: np.ndarray,
    dtype: str,
) -> str:
    """Store the negative rows (replacing unfinished ones); the sub-group's key. Marked complete last."""
    group = _open_split(store, subset, split, "a")
    silence, noise = np.asarray(silence), np.asarray(noise)
    if silence.ndim != 2 or silence.shape[0] != 1 or noise.shape != (group.n_rows, silence.shape[1]):
        raise StoreError(
            f"{group.store.url}: {subset}/{split}: negative rows of shapes {silence.shape} / {noise.shape}, "
            f"expected (1, d) / ({group.n_rows}, d)"
        )
    if not (np.isfinite(silence).all() and np.isfinite(noise).all()):
        raise StoreError(
            f"{group.store.url}: {subset}/{split}: non-finite negative CLAP rows; nothing written"
        )
    key = _key(clap_fingerprint, seed)
    parent = group.group.require_group(GROUP)
    if key in parent:
        del parent[key]
    g = parent.create_group(key)
    for name, x in (("silence", silence), ("noise", noise)):
        arr = g.create_array(
            name,
            shape=x.shape,
            dtype=dtype,
            chunks=(max(len(x), 1), x.shape[1]),
            compressors=[zarr.codecs.Crc32cCodec()],  # checksummed, as every feature array
            fill_value=0,
        )
        arr[:] = x.astype(dtype)
    g.attrs.update(
        {
            "name": ENCODER,
            "fingerprint": negatives_fingerprint(clap_fingerprint, seed),
            "clap_fingerprint": clap_fingerprint,
            "spec": negatives_spec(seed),
            "index_digest": group.index_digest,
            "dtype": dtype,
        }
    )
    g.attrs["complete"] = True  # last: a kill before this leaves rows the reader refuses
    return key
