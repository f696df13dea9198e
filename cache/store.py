"""Zarr v3 feature store: split groups with an index table, encoder sub-groups, block-aligned writes."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr
import zarr.codecs
from zarr.core.sync import sync as zarr_sync

from cache.index import SplitIndex
from pipeline.provenance import canonical_json, diff_provenance, fingerprint

STORE_VERSION = 1
INDEX_COLUMNS = ("video", "frame", "category", "has_mask")
# Inner chunks of a shard hold about this much; big rows (feature maps) get one row per chunk.
TARGET_CHUNK_BYTES = 1 << 20


class StoreError(RuntimeError):
    """A feature-store problem; the message names the store and group."""


class FingerprintMismatch(StoreError):
    """Features exist under another encoder fingerprint than the one asked for."""


class IndexMismatch(StoreError):
    """The store's rows for a split differ from the rows asked for."""


CODECS: dict[str, Any] = {
    "none": lambda: None,
    "zstd": lambda: [zarr.codecs.ZstdCodec(level=3)],
    "blosc-lz4": lambda: [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2)],
    "blosc-zstd-bitshuffle": lambda: [
        zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=2)
    ],
}


@dataclass(frozen=True)
class ArraySpec:
    """One feature array of an encoder: the per-row shape, dtype and codec."""

    shape: tuple[int, ...]
    dtype: str = "float16"
    codec: str = "zstd"

    def row_bytes(self) -> int:
        """Uncompressed bytes of one row."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        """As stored in attributes."""
        return {"shape": list(self.shape), "dtype": self.dtype, "codec": self.codec}


def chunk_rows(spec: ArraySpec, block_rows: int) -> int:
    """Rows per inner chunk: the largest divisor of block_rows under TARGET_CHUNK_BYTES (at least 1)."""
    best = 1
    for c in range(1, block_rows + 1):
        if block_rows % c == 0 and c * spec.row_bytes() <= TARGET_CHUNK_BYTES:
            best = c
    return best


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted row numbers as (start, stop) runs of consecutive rows."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


def read_rows_many(arrays: dict[str, zarr.Array], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Sorted rows of several arrays, read as runs of consecutive rows, all in one event-loop round trip.

    A shuffled training batch is many small reads; issued one by one, zarr's per-call overhead
    (~1-2 ms) dominated the batch. Gathered on zarr's own loop, they overlap.
    """
    runs = row_runs(np.asarray(rows, dtype=np.int64))
    if not runs:
        return {name: np.empty((0, *arr.shape[1:]), arr.dtype) for name, arr in arrays.items()}

    async def gather():
        return await asyncio.gather(
            *(arr._async_array.getitem(slice(a, b)) for arr in arrays.values() for a, b in runs)
        )

    parts = iter(zarr_sync(gather()))
    return {name: np.concatenate([np.asarray(next(parts)) for _ in runs]) for name in arrays}


def read_rows(arrays: dict[str, zarr.Array], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Rows of several arrays in the order given (any order, repeats allowed): read sorted, then put back."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    out = {}
    for name, x in read_rows_many(arrays, rows[order]).items():
        out[name] = np.empty_like(x)
        out[name][order] = x
    return out


class FeatureStore:
    """A Zarr v3 store on any fsspec filesystem (local path, file://, memory://, s3://, ...)."""

    def __init__(self, url: str, mode: str = "a", storage_options: dict[str, Any] | None = None):
        self.url = str(url)
        self.storage_options = storage_options
        kw = {"storage_options": storage_options} if storage_options else {}
        try:
            self.root = zarr.open_group(store=self.url, mode=mode, zarr_format=3, **kw)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise StoreError(f"{self.url}: no feature store here") from e
        if mode != "r" and "av2t_store" not in self.root.attrs:
            self.root.attrs["av2t_store"] = STORE_VERSION

    def __repr__(self) -> str:
        return f"FeatureStore({self.url!r})"

    def groups(self) -> list[tuple[str, str]]:
        """(subset, split) of every split group, sorted."""
        out = []
        for subset, g in self.root.groups():
            out += [(subset, split) for split, _ in g.groups()]
        return sorted(out)

    def has_split(self, subset: str, split: str) -> bool:
        """Whether a split group exists."""
        return (subset, split) in self.groups()

    def split(self, subset: str, split: str) -> SplitGroup:
        """Open an existing split group."""
        if not self.has_split(subset, split):
            raise StoreError(f"{self.url}: no group {subset}/{split} (groups: {self.groups()})")
        return SplitGroup(self, self.root[f"{subset}/{split}"], subset, split)

    def require_split(self, subset: str, split: str, index: SplitIndex, block_rows: int = 32) -> SplitGroup:
        """Open the split group, creating it with this index; refuse if its rows differ."""
        if self.has_split(subset, split):
            g = self.split(subset, split)
            if g.index_digest != index.digest():
                raise IndexMismatch(
                    f"{self.url}: group {subset}/{split} holds {g.n_rows} rows (index {g.index_digest}), "
                    f"but the data gives {len(index)} rows (index {index.digest()}); the clip list changed. "
                    "Use a new store, or delete the group."
                )
            return g
        grp = self.root.require_group(subset).create_group(split)
        _write_index(grp, index)
        grp.attrs.update(
            {
                "subset": subset,
                "split": split,
                "n_rows": len(index),
                "block_rows": int(block_rows),
                "index_digest": index.digest(),
            }
        )
        return SplitGroup(self, grp, subset, split)


def _write_index(grp: zarr.Group, index: SplitIndex) -> None:
    """Write the index columns as 1-D arrays (one chunk each: they are small)."""
    ig = grp.create_group("index")
    n = max(len(index), 1)
    for col, dtype in zip(INDEX_COLUMNS, (str, "int16", str, "bool"), strict=True):
        arr = ig.create_array(col, shape=(len(index),), dtype=dtype, chunks=(n,))
        if len(index):
            arr[:] = getattr(index, col)


class SplitGroup:
    """One (subset, split): the index table and the encoder sub-groups that follow it."""

    def __init__(self, store: FeatureStore, group: zarr.Group, subset: str, split: str):
        self.store, self.group, self.subset, self.split = store, group, subset, split
        self.n_rows = int(group.attrs["n_rows"])
        self.block_rows = int(group.attrs["block_rows"])
        self.index_digest = str(group.attrs["index_digest"])
        self._index: SplitIndex | None = None

    def __repr__(self) -> str:
        return f"SplitGroup({self.store.url!r}, {self.subset}/{self.split}, rows={self.n_rows})"

    @property
    def path(self) -> str:
        """Group path inside the store."""
        return f"{self.subset}/{self.split}"

    @property
    def index(self) -> SplitIndex:
        """The index table, read once."""
        if self._index is None:
            ig = self.group["index"]
            cols = {c: (ig[c][:] if self.n_rows else np.zeros(0, ig[c].dtype)) for c in INDEX_COLUMNS}
            self._index = SplitIndex(
                np.asarray(cols["video"], dtype=object),
                cols["frame"].astype(np.int16),
                np.asarray(cols["category"], dtype=object),
                cols["has_mask"].astype(bool),
            )
        return self._index

    @property
    def n_blocks(self) -> int:
        """Write units: every array's shards and the completion record align to them."""
        return math.ceil(self.n_rows / self.block_rows)

    def block_slice(self, b: int) -> slice:
        """Rows of block b."""
        if not 0 <= b < self.n_blocks:
            raise IndexError(f"block {b} out of range 0..{self.n_blocks - 1}")
        return slice(b * self.block_rows, min((b + 1) * self.block_rows, self.n_rows))

    def encoders(self) -> list[EncoderGroup]:
        """Every encoder sub-group, sorted by key."""
        if "encoders" not in self.group:
            return []
        return [EncoderGroup(self, g) for _, g in sorted(self.group["encoders"].groups())]

    def encoder(self, name: str, fingerprint: str | None = None) -> EncoderGroup:
        """Open an encoder's features; with a fingerprint, refuse any other."""
        found = [e for e in self.encoders() if e.name == name]
        if fingerprint is not None:
            exact = [e for e in found if e.fingerprint == fingerprint]
            if exact:
                return exact[0]
            if found:
                have = ", ".join(e.fingerprint for e in found)
                raise FingerprintMismatch(
                    f"{self.store.url}: {self.path} holds '{name}' features under fingerprint(s) {have}, "
                    f"not {fingerprint}: they were computed by another encoder config, weights or "
                    "preprocessing. Re-extract into this store or use a store made with these encoders."
                )
        if not found:
            raise StoreError(f"{self.store.url}: {self.path} has no '{name}' features; run extract-features")
        if len(found) > 1:
            keys = ", ".join(e.key for e in found)
            raise StoreError(
                f"{self.store.url}: {self.path} has several '{name}' fingerprints ({keys}); name one"
            )
        return found[0]

    def require_encoder(
        self,
        name: str,
        provenance: dict[str, Any],
        arrays: dict[str, ArraySpec],
        allow_other_fingerprints: bool = False,
    ) -> EncoderGroup:
        """Open or create the sub-group for (name, fingerprint of provenance) with these arrays."""
        fp = fingerprint(provenance)
        others = [e for e in self.encoders() if e.name == name and e.fingerprint != fp]
        if others and not allow_other_fingerprints:
            diffs = "; ".join(diff_provenance(others[0].provenance, provenance)[:5])
            raise FingerprintMismatch(
                f"{self.store.url}: {self.path} already holds '{name}' features under fingerprint "
                f"{others[0].fingerprint}, and these would have {fp} ({diffs}). The store is never reused "
                "under another fingerprint: use a new store, or allow a second fingerprint side by side."
            )
        key = f"{name}@{fp}"
        parent = self.group.require_group("encoders")
        if key in parent:
            enc = EncoderGroup(self, parent[key])
            want = {k: v.to_json() for k, v in arrays.items()}
            if canonical_json(enc.specs_json) != canonical_json(want):
                raise StoreError(
                    f"{self.store.url}: {self.path}/{key} was created with arrays {enc.specs_json}, "
                    f"now asked for {want}"
                )
            return enc
        g = parent.create_group(key)
        for arr_name, spec in arrays.items():
            _create_feature_array(g, arr_name, spec, self.n_rows, self.block_rows)
        g.create_array("done", shape=(self.n_rows,), dtype="uint8", chunks=(self.block_rows,), fill_value=0)
        g.attrs.update(
            {
                "name": name,
                "fingerprint": fp,
                "provenance": json.loads(canonical_json(provenance)),
                "arrays": {k: v.to_json() for k, v in arrays.items()},
            }
        )
        return EncoderGroup(self, g)


def _create_feature_array(g: zarr.Group, name: str, spec: ArraySpec, n_rows: int, block_rows: int) -> None:
    """A feature array whose shards are exactly one write block, so writers never share a shard."""
    if spec.codec not in CODECS:
        raise StoreError(f"unknown codec {spec.codec!r}; choose from {sorted(CODECS)}")
    c = chunk_rows(spec, block_rows)
    kw: dict[str, Any] = {"chunks": (c, *spec.shape)}
    if c < block_rows:
        kw["shards"] = (block_rows, *spec.shape)
    else:
        kw["chunks"] = (block_rows, *spec.shape)
    g.create_array(
        name,
        shape=(n_rows, *spec.shape),
        dtype=spec.dtype,
        compressors=CODECS[spec.codec](),
        fill_value=0,
        **kw,
    )


class EncoderGroup:
    """Features of one encoder fingerprint: arrays on the split's rows plus the completion record."""

    def __init__(self, split: SplitGroup, group: zarr.Group):
        self.split, self.group = split, group
        attrs = group.attrs.asdict()
        self.name: str = attrs["name"]
        self.fingerprint: str = attrs["fingerprint"]
        self.provenance: dict[str, Any] = attrs["provenance"]
        self.specs_json: dict[str, Any] = attrs["arrays"]
        self.specs = {
            k: ArraySpec(tuple(v["shape"]), v["dtype"], v["codec"]) for k, v in self.specs_json.items()
        }

    @property
    def key(self) -> str:
        """Sub-group name: encoder@fingerprint."""
        return f"{self.name}@{self.fingerprint}"

    def __repr__(self) -> str:
        return f"EncoderGroup({self.split.path}/{self.key})"

    def array(self, name: str) -> zarr.Array:
        """One feature array."""
        if name not in self.specs:
            raise StoreError(
                f"{self.split.store.url}: {self.key} has no array {name!r} (has {sorted(self.specs)})"
            )
        return self.group[name]

    def done_mask(self) -> np.ndarray:
        """Per-row completion record as bools."""
        n = self.split.n_rows
        return self.group["done"][:].astype(bool) if n else np.zeros(0, bool)

    def rows_done(self) -> int:
        """Rows whose features are written."""
        return int(self.done_mask().sum())

    def pending_blocks(self) -> list[int]:
        """Blocks with any row not yet written."""
        done = self.done_mask()
        sp = self.split
        return [b for b in range(sp.n_blocks) if not done[sp.block_slice(b)].all()]

    def write_block(self, b: int, data: dict[str, np.ndarray], ok: np.ndarray | None = None) -> None:
        """Write all arrays of block b, then mark its rows done (a kill before that leaves them pending).

        `ok` (bools, one per row of the block) marks only those rows done: rows whose input failed stay
        pending. Rows already done stay done.
        """
        sl = self.split.block_slice(b)
        n = sl.stop - sl.start
        if set(data) != set(self.specs):
            raise StoreError(
                f"{self.key}: block {b} gives arrays {sorted(data)}, expected {sorted(self.specs)}"
            )
        for name, spec in self.specs.items():
            x = np.asarray(data[name])
            if x.shape != (n, *spec.shape):
                raise StoreError(
                    f"{self.key}/{name}: block {b} has shape {x.shape}, expected {(n, *spec.shape)}"
                )
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                bad = sorted(
                    {str(v) for v in self.split.index.video[sl][~np.isfinite(x).reshape(n, -1).all(1)]}
                )
                raise StoreError(f"{self.key}/{name}: non-finite features for video(s) {bad[:5]}")
            self.group[name][sl] = x.astype(spec.dtype, copy=False)
        if ok is None:
            self.group["done"][sl] = 1
        else:
            self.group["done"][sl] = (self.group["done"][sl].astype(bool) | np.asarray(ok, bool)).astype(
                np.uint8
            )

    def read_block(self, b: int) -> dict[str, np.ndarray]:
        """All arrays of block b as stored."""
        sl = self.split.block_slice(b)
        return {name: self.group[name][sl] for name in self.specs}

    def record_failures(self, b: int, failures: list[dict[str, Any]]) -> None:
        """Replace block b's failure records (each block has its own object, so writers never share one)."""
        parent = self.group.require_group("failures")
        key = f"block{b:06d}"
        if key in parent:
            del parent[key]
        if failures:
            parent.create_group(key).attrs["failures"] = failures

    def failures(self) -> list[dict[str, Any]]:
        """Every recorded input failure (row, video, frame, path, error), by row."""
        if "failures" not in self.group:
            return []
        out = [f for _, g in self.group["failures"].groups() for f in g.attrs["failures"]]
        return sorted(out, key=lambda f: f["row"])

    def read(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        """Rows of one array, in the order given."""
        arr = self.array(name)
        if isinstance(rows, slice):
            return arr[rows]
        return read_rows({name: arr}, rows)[name]

    def dask(self, name: str) -> da.Array:
        """One array as a dask array chunked like the store."""
        return da.from_zarr(self.array(name))

    def nbytes(self) -> int:
        """Uncompressed bytes of all feature arrays."""
        return sum(self.group[k].nbytes for k in self.specs)

    def nbytes_stored(self) -> int:
        """Bytes on disk of the sub-group (arrays, completion record, metadata)."""
        return sum(self.group[k].nbytes_stored() for k in [*self.specs, "done"])
