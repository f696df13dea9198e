"""Zarr v3 feature store: split groups with an index table, encoder sub-groups, block-aligned writes.

FeatureStore, SplitGroup and EncoderGroup, with the lock that makes one creator of groups at a time. What an
array is stored as is in cache.specs, how its stored objects are read and written in cache.shards, and the
errors and Damage in cache.errors.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import dask.array as da
import numpy as np
import zarr
import zarr.codecs
from zarr.core.sync import sync as zarr_sync

from cache.errors import (
    CHECKSUM_MISMATCH,
    EXTRACT,
    EXTRACT_AGAIN,
    INDEX_DIGEST,
    MISSING,
    NON_FINITE,
    OTHER_FINGERPRINTS,
    STORAGE_ERRORS,
    UNDECODABLE,
    Damage,
    FingerprintMismatch,
    IndexMismatch,
    StoreDamaged,
    StoreError,
    damaged_metadata,
    missing_filesystem,
)
from cache.index import SplitIndex
from cache.remote import CheckedStore, bucket_missing, is_remote
from cache.shards import (
    n_objects,
    object_key,
    object_rows,
    objects_of_rows,
    outer_rows,
    read_object,
    read_rows,
    stored_objects,
    write_object_raw,
)
from cache.specs import CHECKSUM, CODECS, DEFAULT_CODEC, ArraySpec, array_checksum, chunk_rows, scale_names
from pipeline.provenance import canonical_json, diff_provenance, fingerprint, precision_variants

STORE_VERSION = 1
INDEX_COLUMNS = ("video", "frame", "category", "has_mask")
# A group's attributes are written last, once its arrays exist: a reader that finds a group without them waits
# this long for the writer creating it, then calls it a creation cut short.
CREATING_WAIT_S = 10.0
SPLIT_ATTRS = ("n_rows", "block_rows", "index_digest")
ENCODER_ATTRS = ("name", "fingerprint", "provenance", "arrays")
# Every chunk of a written block is stored, even an all-zero one, so an absent chunk of a done row means lost
# data (and every chunk carries a crc32c checksum after the compressor: _with_checksum).
WRITE_ALL_CHUNKS = {"write_empty_chunks": True}


def _with_checksum(compressors: list[Any] | None) -> list[Any]:
    return [*(compressors or []), zarr.codecs.Crc32cCodec()]


# Float bit patterns whose exponent bits are all ones are inf or nan: a mask test is ~5x faster than isfinite.
_EXPONENT = {
    np.dtype("float16"): (np.uint16, 0x7C00),
    np.dtype("float32"): (np.uint32, 0x7F800000),
    np.dtype("float64"): (np.uint64, 0x7FF0000000000000),
}


def nonfinite_array_rows(x: np.ndarray) -> np.ndarray:
    """Per row (first axis), whether it holds any inf or nan."""
    x = np.ascontiguousarray(x)
    if x.dtype in _EXPONENT:
        u, m = _EXPONENT[x.dtype]
        bad = (x.view(u) & u(m)) == u(m)
    else:
        bad = ~np.isfinite(x)
    return bad.reshape(len(x), -1).any(1)


def _problem(e: BaseException) -> tuple[str, str]:
    text = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    if isinstance(e, ValueError) and "checksum" in str(e).lower():
        return CHECKSUM_MISMATCH, ""
    return UNDECODABLE, f"{type(e).__name__}: {text}"


def _local_root(url: str) -> str | None:
    """The folder of a local store (None for a remote one)."""
    root = url.removeprefix("file://")
    return None if "://" in root else root


def _complete_attrs(store: FeatureStore, group: zarr.Group, keys: tuple[str, ...]) -> dict[str, Any]:
    """A group's attributes once they hold `keys`: another writer may be creating it (waits a little).

    A group that still lacks them is a creation cut short (a killed extraction): refused, naming the way out.
    """
    attrs = group.attrs.asdict()
    deadline = time.monotonic() + CREATING_WAIT_S
    while not all(k in attrs for k in keys):
        if time.monotonic() > deadline:
            raise StoreError(
                f"{store.url}: group {group.path} is incomplete (its creation was cut short): extracting into "
                "this store again recreates it",
                EXTRACT_AGAIN,
                store=store.url,
            )
        time.sleep(0.1)
        attrs = zarr.open_group(store=group.store, path=group.path, mode="r", zarr_format=3).attrs.asdict()
    return attrs


def _open_root(store: Any, mode: str, kw: dict[str, Any]) -> zarr.Group:
    """The root group; in mode "a", a root that another process created between zarr's look and its create is
    opened, not an error (writers starting together on a new store)."""
    try:
        return zarr.open_group(store=store, mode=mode, zarr_format=3, **kw)
    except zarr.errors.ContainsGroupError:
        if mode != "a":
            raise
        return zarr.open_group(store=store, mode=mode, zarr_format=3, **kw)


class FeatureStore:
    """A Zarr v3 store on any fsspec filesystem (local path, file://, memory://, s3://, ...)."""

    def __init__(self, url: str, mode: str = "a", storage_options: dict[str, Any] | None = None):
        self.url = str(url)
        self.storage_options = storage_options
        kw = {"storage_options": storage_options} if storage_options else {}
        store: Any = self.url
        try:
            if is_remote(self.url):  # its failures (network, credentials, bucket) named (cache.remote)
                store = CheckedStore.from_url(self.url, mode == "r", storage_options)
                kw = {}
            self.root = _open_root(store, mode, kw)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            if isinstance(store, CheckedStore):
                raise zarr_sync(bucket_missing(self.url, store.fs_of(), storage_options)) or StoreError(
                    f"{self.url}: no feature store here"
                ) from e
            raise StoreError(f"{self.url}: no feature store here") from e
        except ImportError as e:  # an fsspec URL (s3://...) whose filesystem package is missing
            raise missing_filesystem(self.url, e) from e
        except json.JSONDecodeError as e:
            raise damaged_metadata(self.url, e) from e
        if mode != "r" and "av2t_store" not in self.root.attrs:
            self.root.attrs["av2t_store"] = STORE_VERSION

    def __repr__(self) -> str:
        return f"FeatureStore({self.url!r})"

    @contextlib.contextmanager
    def creating(self) -> Iterator[None]:
        """One creator of groups at a time in a local store (a flock on its folder, released if the process
        dies): two extractions starting together never see each other's half-made group. Writing rows needs
        no lock (each block is its own shard); remote stores have none (docs/guarantees.md: concurrent use)."""
        root = _local_root(self.url)
        if root is None or not os.path.isdir(root):
            yield
            return
        fd = os.open(root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _reopen(self) -> None:
        """Re-read the root group (another process may have added groups since it was opened)."""
        self.root = zarr.open_group(store=self.root.store, mode="a", zarr_format=3)

    def groups(self) -> list[tuple[str, str]]:
        """(subset, split) of every split group, sorted."""
        out = []
        try:
            for subset, g in self.root.groups():
                out += [(subset, split) for split, _ in g.groups()]
        except json.JSONDecodeError as e:
            raise damaged_metadata(self.url, e) from e
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
        """Open the split group, creating it with this index; refuse if its rows differ.

        Safe when several writers start together (one creates, under `creating`; the others open it).
        """
        with self.creating():
            self._reopen()
            return self._require_split(subset, split, index, block_rows)

    def _require_split(self, subset: str, split: str, index: SplitIndex, block_rows: int) -> SplitGroup:
        if self.has_split(subset, split) and not all(
            k in self.root[f"{subset}/{split}"].attrs for k in SPLIT_ATTRS
        ):
            del self.root[subset][split]  # a creation cut short (we hold the creation lock): made again
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
        arr = ig.create_array(
            col,
            shape=(len(index),),
            dtype=dtype,
            chunks=(n,),
            compressors=_with_checksum([zarr.codecs.ZstdCodec(level=0)]),
        )
        if len(index):
            arr.with_config(WRITE_ALL_CHUNKS)[:] = getattr(index, col)


class SplitGroup:
    """One (subset, split): the index table and the encoder sub-groups that follow it."""

    def __init__(self, store: FeatureStore, group: zarr.Group, subset: str, split: str):
        self.store, self.group, self.subset, self.split = store, group, subset, split
        attrs = _complete_attrs(store, group, SPLIT_ATTRS)
        self.n_rows = int(attrs["n_rows"])
        self.block_rows = int(attrs["block_rows"])
        self.index_digest = str(attrs["index_digest"])
        self._index: SplitIndex | None = None

    def __repr__(self) -> str:
        return f"SplitGroup({self.store.url!r}, {self.subset}/{self.split}, rows={self.n_rows})"

    @property
    def path(self) -> str:
        """Group path inside the store."""
        return f"{self.subset}/{self.split}"

    @property
    def index(self) -> SplitIndex:
        """The index table, read once; a damaged one (checksum, decoding, or not its digest) raises StoreDamaged."""
        if self._index is None:
            index, damage = self.read_index()
            if damage:
                raise StoreDamaged(damage)
            self._index = index
        return self._index

    def read_index(self) -> tuple[SplitIndex | None, list[Damage]]:
        """The index table and its damage: undecodable columns, or rows that are not the recorded digest."""
        ig = self.group["index"]
        cols, damage = {}, []
        for c in INDEX_COLUMNS:
            if not self.n_rows:
                cols[c] = np.zeros(0, ig[c].dtype)
                continue
            x, bad = read_object(ig[c], 0)
            cols[c] = x
            damage += [self._index_damage(f"index/{c}", object_key(ig[c], 0), *_problem(e)) for *_, e in bad]
        if damage:
            return None, damage
        index = SplitIndex(
            np.asarray(cols["video"], dtype=object),
            cols["frame"].astype(np.int16),
            np.asarray(cols["category"], dtype=object),
            cols["has_mask"].astype(bool),
        )
        if index.digest() != self.index_digest:
            detail = f"the rows hash to {index.digest()}, recorded {self.index_digest}"
            return None, [self._index_damage("index", f"{ig.store_path.path}/*", INDEX_DIGEST, detail)]
        return index, []

    def _index_damage(self, array: str, key: str, problem: str, detail: str) -> Damage:
        encoders = self.encoders()
        return Damage(
            self.store.url,
            self.subset,
            self.split,
            "",
            array,
            0,
            self.n_rows,
            key,
            problem,
            detail,
            tuple(dict.fromkeys(e.name for e in encoders)),
            encoders[0].extract_settings(frames=False) if encoders else (),
        )

    def index_checksum(self) -> str | None:
        """crc32c when every index column carries checksums."""
        sums = {array_checksum(self.group["index"][c]) for c in INDEX_COLUMNS}
        return CHECKSUM if sums == {CHECKSUM} else None

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
        try:
            if "encoders" not in self.group:
                return []
            return [EncoderGroup(self, g) for _, g in sorted(self.group["encoders"].groups())]
        except json.JSONDecodeError as e:
            raise damaged_metadata(self.store.url, e) from e

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
            raise StoreError(
                f"{self.store.url}: {self.path} has no '{name}' features; add {name} to the encoders you extract",
                EXTRACT,
                store=self.store.url,
                subset=self.subset,
                split=self.split,
                encoders=(name,),
            )
        if len(found) > 1:
            keys = ", ".join(e.key for e in found)
            raise StoreError(
                f"{self.store.url}: {self.path} has several '{name}' fingerprints ({keys}); name one"
            )
        return found[0]

    def encoder_for(self, name: str, provenance: dict[str, Any]) -> EncoderGroup:
        """An encoder's features computed by this provenance, in any compute precision (fp32 first).

        The store fingerprints bf16 features apart (they never mix with fp32 ones), but a head built from the
        same encoders reads either: training and cached evaluation find them here.
        """
        fps = precision_variants(provenance)
        found = [e for e in self.encoders() if e.name == name and e.fingerprint in fps]
        if found:
            return min(found, key=lambda e: fps[e.fingerprint] != "fp32")
        return self.encoder(name, fingerprint(provenance))  # the mismatch error, naming what is held

    def require_encoder(
        self,
        name: str,
        provenance: dict[str, Any],
        arrays: dict[str, ArraySpec],
        allow_other_fingerprints: bool = False,
        extracted_with: dict[str, str] | None = None,
    ) -> EncoderGroup:
        """Open or create the sub-group for (name, fingerprint of provenance) with these arrays.

        extracted_with: the extraction's root / preset settings (kept beside the fingerprint, not in it), which
        the re-extraction hint names.

        Safe when several writers start together (one creates, under the store's `creating`; the others open
        it and check its arrays).
        """
        with self.store.creating():
            enc = self._require_encoder(name, provenance, arrays, allow_other_fingerprints)
            if extracted_with and not enc.extracted_with:
                enc.group.attrs["extracted_with"] = dict(extracted_with)
                enc.extracted_with = dict(extracted_with)
            return enc

    def _require_encoder(
        self,
        name: str,
        provenance: dict[str, Any],
        arrays: dict[str, ArraySpec],
        allow_other_fingerprints: bool,
    ) -> EncoderGroup:
        fp = fingerprint(provenance)
        key = f"{name}@{fp}"
        parent = self.group.require_group("encoders")
        if key in parent and not all(k in parent[key].attrs for k in ENCODER_ATTRS):
            del parent[key]  # a creation cut short (we hold the creation lock): made again
        others = [e for e in self.encoders() if e.name == name and e.fingerprint != fp]
        if others and not allow_other_fingerprints:
            diffs = "; ".join(diff_provenance(others[0].provenance, provenance)[:5])
            raise FingerprintMismatch(
                f"{self.store.url}: {self.path} already holds '{name}' features under fingerprint "
                f"{others[0].fingerprint}, and these would have {fp} ({diffs}). The store is never reused "
                "under another fingerprint: use a new store, or allow a second fingerprint side by side.",
                OTHER_FINGERPRINTS,
            )
        if key in parent:
            enc = EncoderGroup(self, parent[key])
            want = {k: v.to_json() for k, v in arrays.items()}
            # The codec is how the arrays were written, not what they hold: a store written with another
            # codec (zstd, the default before) is resumed with its own.
            held = {k: {**v, "codec": want.get(k, v).get("codec")} for k, v in enc.specs_json.items()}
            if canonical_json(held) != canonical_json(want):
                raise StoreError(
                    f"{self.store.url}: {self.path}/{key} was created with arrays {enc.specs_json}, "
                    f"now asked for {want}"
                )
            return enc
        g = parent.create_group(key)
        for arr_name, spec in arrays.items():
            create_feature_array(g, arr_name, spec, self.n_rows, self.block_rows)
        g.create_array(
            "done",
            shape=(self.n_rows,),
            dtype="uint8",
            chunks=(self.block_rows,),
            fill_value=0,
            compressors=_with_checksum([zarr.codecs.ZstdCodec(level=0)]),
        )
        g.attrs.update(
            {
                "name": name,
                "fingerprint": fp,
                "provenance": json.loads(canonical_json(provenance)),
                "arrays": {k: v.to_json() for k, v in arrays.items()},
            }
        )
        return EncoderGroup(self, g)


def create_feature_array(g: zarr.Group, name: str, spec: ArraySpec, n_rows: int, block_rows: int) -> None:
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
        compressors=_with_checksum(CODECS[spec.codec]()),  # crc32c after the compressor, in every inner chunk
        fill_value=0,
        **kw,
    )


class EncoderGroup:
    """Features of one encoder fingerprint: arrays on the split's rows plus the completion record."""

    def __init__(self, split: SplitGroup, group: zarr.Group):
        self.split, self.group = split, group
        attrs = _complete_attrs(split.store, group, ENCODER_ATTRS)
        self.name: str = attrs["name"]
        self.fingerprint: str = attrs["fingerprint"]
        self.provenance: dict[str, Any] = attrs["provenance"]
        self.specs_json: dict[str, Any] = attrs["arrays"]
        self.extracted_with: dict[str, str] = dict(attrs.get("extracted_with") or {})
        self.specs = {
            k: ArraySpec(tuple(v["shape"]), v["dtype"], v["codec"]) for k, v in self.specs_json.items()
        }
        self._checksums: dict[str, str | None] = {}
        self._writable: dict[str, zarr.Array] = {}
        self._extract_settings: dict[bool, tuple[tuple[str, str | bool], ...]] = {}

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
        try:
            return self.group[name]
        except json.JSONDecodeError as e:
            raise damaged_metadata(self.split.store.url, e) from e

    def writable(self, name: str) -> zarr.Array:
        """An array to write: every chunk stored, an all-zero one too (an absent chunk then means lost data).

        Opened once per sub-group object: every open reads and parses the array's metadata, which the
        extract stage's writer would otherwise do for each block (the arrays' metadata never changes)."""
        if name not in self._writable:  # the completion record keeps zarr's default (a 0 chunk: not done)
            arr = self.group["done"] if name == "done" else self.array(name).with_config(WRITE_ALL_CHUNKS)
            self._writable[name] = arr
        return self._writable[name]

    def checksum(self, name: str) -> str | None:
        """crc32c for an array (or "done") written with checksums, None for one written before."""
        if name not in self._checksums:
            self._checksums[name] = array_checksum(self.group[name])
        return self._checksums[name]

    def done_record(self) -> np.ndarray:
        """The completion record as stored (bools): rows marked done, whether or not their chunks are there."""
        if not self.split.n_rows:
            return np.zeros(0, bool)
        try:
            return self.group["done"][:].astype(bool)
        except STORAGE_ERRORS:
            raise
        except Exception as e:
            damage = self.scan("done")
            if not damage:
                raise
            raise StoreDamaged(damage) from e

    def missing(
        self, names: Iterable[str] | None = None, rows=None, done: np.ndarray | None = None
    ) -> list[Damage]:
        """Absent stored objects (shards) of feature arrays holding rows the completion record marks done.

        Such rows would read as zeros. Arrays written with checksums store every chunk of a written block,
        so an absent one is lost; arrays written before skipped all-zero chunks, so there an absent chunk
        of a non-float array (GT masks) may be an empty mask and is not counted.
        """
        done = self.done_record() if done is None else done
        out = []
        for name in self.specs if names is None else names:
            arr = self.group[name]
            if self.checksum(name) is None and np.dtype(arr.dtype).kind != "f":
                continue
            want = [i for i in objects_of_rows(arr, rows) if done[object_rows(arr, i)].any()]
            have = stored_objects(arr, want)
            for i in want:
                if i not in have:
                    sl = object_rows(arr, i)
                    k = int(done[sl].sum())
                    detail = f"{k} row(s) recorded done would read as zeros"
                    out.append(self._damage(name, sl.start, sl.stop, object_key(arr, i), MISSING, detail))
        return out

    def done_mask(self) -> np.ndarray:
        """Rows done: marked done in the completion record, and every chunk holding them stored."""
        done = self.done_record()
        for d in self.missing(done=done):
            done[d.start : d.stop] = False
        return done

    def rows_done(self) -> int:
        """Rows whose features are written (and whose chunks are all in the store)."""
        return int(self.done_mask().sum())

    def scan(self, name: str, rows=None, done: np.ndarray | None = None) -> list[Damage]:
        """Decode every stored object of an array holding these rows (all with None); the damaged ones.

        Checks checksums and decoding, and (float arrays) that the rows marked done are finite. Absent
        objects read as fill values and are skipped here: `missing` names those of done rows.
        """
        arr = self.group[name]
        objects = objects_of_rows(arr, rows)
        present = stored_objects(arr, objects)
        float_rows = np.dtype(arr.dtype).kind == "f" and name != "done"
        if float_rows and done is None:
            done = self.done_tolerant()
        out = []
        for i in objects:
            if i not in present:
                continue
            x, bad = read_object(arr, i)
            key = object_key(arr, i)
            out += [self._damage(name, a, b, key, *_problem(e)) for a, b, e in bad]
            if x is not None and float_rows:
                out += self._non_finite(name, object_rows(arr, i), x, done, key)
        return out

    def done_tolerant(self) -> np.ndarray:
        """The completion record with the rows of damaged record chunks taken as not done."""
        try:
            return self.done_record()
        except StoreDamaged:
            arr, done = self.group["done"], np.zeros(self.split.n_rows, bool)
            for i in range(n_objects(arr)):
                x, _ = read_object(arr, i)
                if x is not None:
                    done[object_rows(arr, i)] = x.astype(bool)
            return done

    def _non_finite(self, name: str, sl: slice, x: np.ndarray, done: np.ndarray, key: str) -> list[Damage]:
        bad = nonfinite_array_rows(x) & done[sl]
        if not bad.any():
            return []
        rows = (np.flatnonzero(bad) + sl.start).tolist()
        shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
        return [self._damage(name, sl.start, sl.stop, key, NON_FINITE, f"inf/nan in done row(s) {shown}")]

    def check_finite(self, name: str, rows: np.ndarray, x: np.ndarray) -> None:
        """Refuse non-finite values read from a float array written before checksums (StoreDamaged).

        Arrays with checksums never hold them: writes refuse non-finite features and corruption fails the
        checksum. Without checksums, a damaged uncompressed chunk reads back as silently changed values.
        """
        if np.dtype(x.dtype).kind != "f" or self.checksum(name) is not None or not len(x):
            return
        nonfinite = nonfinite_array_rows(x)
        if not nonfinite.any():
            return
        bad = np.asarray(rows, dtype=np.int64)[nonfinite]
        damage = self.scan(name, bad) or [
            self._damage(name, int(r), int(r) + 1, self.group[name].store_path.path, NON_FINITE, "inf/nan")
            for r in np.unique(bad)
        ]
        raise StoreDamaged(damage)

    def refuse_missing(self, names: Iterable[str], rows=None) -> None:
        """Raise StoreDamaged if a chunk holding any of these rows that is marked done is absent."""
        damage = self.missing(names, rows)
        if damage:
            raise StoreDamaged(damage)

    def _damage(self, array: str, start: int, stop: int, key: str, problem: str, detail: str = "") -> Damage:
        sp = self.split
        return Damage(
            sp.store.url,
            sp.subset,
            sp.split,
            self.key,
            array,
            int(start),
            int(stop),
            key,
            problem,
            detail,
            (self.name,),
            self.extract_settings(),
        )

    def extract_settings(self, frames: bool = True) -> tuple[tuple[str, str | bool], ...]:
        """The extraction settings (name, value; True for a switch) that remake this encoder's arrays as they
        are, other than defaults: dtype, quantize, codec, frames, allow_other_fingerprints, root, preset."""
        if frames not in self._extract_settings:
            self._extract_settings[frames] = self._make_extract_settings(frames)
        return self._extract_settings[frames]

    def _make_extract_settings(self, frames: bool) -> tuple[tuple[str, str | bool], ...]:
        opts: list[tuple[str, str | bool]] = []
        scales = scale_names(self.specs)
        # the float32 scales of int8 arrays are not the group's float dtype
        floats = {s.dtype for k, s in self.specs.items() if np.dtype(s.dtype).kind == "f" and k not in scales}
        if floats and floats != {"float16"}:
            opts.append(("dtype", sorted(floats)[0]))
        if scales:
            opts.append(("quantize", "int8"))
        codecs = {s.codec for s in self.specs.values()}
        if codecs and codecs != {DEFAULT_CODEC}:
            opts.append(("codec", sorted(codecs)[0]))
        sp = self.split
        if frames and sp.subset == "s4" and sp.split == "train" and sp.n_rows:
            try:
                if (sp.index.frame != 1).any():
                    opts.append(("frames", "all"))
            except StoreError:
                pass
        if len([e for e in sp.encoders() if e.name == self.name]) > 1:
            opts.append(("allow_other_fingerprints", True))
        for key in (
            "root",
            "preset",
        ):  # as the extraction was given them (stores of older versions: not known)
            if self.extracted_with.get(key):
                opts.append((key, self.extracted_with[key]))
        return tuple(opts)

    def pending_blocks(self) -> list[int]:
        """Blocks with any row not yet written."""
        done = self.done_mask()
        sp = self.split
        return [b for b in range(sp.n_blocks) if not done[sp.block_slice(b)].all()]

    def write_block(
        self, b: int, data: dict[str, np.ndarray], ok: np.ndarray | None = None, checked: bool = False
    ) -> None:
        """Write all arrays of block b, then mark its rows done (a kill before that leaves them pending).

        `ok` (bools, one per row of the block) marks only those rows done: rows whose input failed stay
        pending. Rows already done stay done. `checked`: the caller has refused non-finite values already
        (extraction checks on the device, in the storage dtype), so the host scan is skipped.
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
            if not checked and x.dtype.kind == "f" and not np.isfinite(x).all():
                bad = sorted(
                    {str(v) for v in self.split.index.video[sl][~np.isfinite(x).reshape(n, -1).all(1)]}
                )
                raise StoreError(f"{self.key}/{name}: non-finite features for video(s) {bad[:5]}")
            arr, x = self.writable(name), x.astype(spec.dtype, copy=False)
            if outer_rows(arr) != self.split.block_rows or not write_object_raw(arr, b, x):
                arr[sl] = x
        done = self.writable("done")
        if ok is None:
            done[sl] = 1
        else:
            done[sl] = (done[sl].astype(bool) | np.asarray(ok, bool)).astype(np.uint8)

    def read_block(self, b: int) -> dict[str, np.ndarray]:
        """All arrays of block b as stored; damaged or absent chunks of done rows raise StoreDamaged."""
        sl = self.split.block_slice(b)
        return {name: self.read(name, sl) for name in self.specs}

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
        """Rows of one array, in the order given.

        Raises StoreDamaged (naming the chunks and the fix) rather than return what a damaged store holds:
        a chunk of a done row that is absent, fails its checksum or does not decode (or, written before
        checksums, holds non-finite values).
        """
        arr = self.array(name)
        self.refuse_missing([name], rows)
        if isinstance(rows, slice):
            try:
                x = arr[rows]
            except STORAGE_ERRORS:
                raise
            except Exception as e:
                damage = self.scan(name, rows)
                if not damage:
                    raise
                raise StoreDamaged(damage) from e
            self.check_finite(name, np.arange(arr.shape[0])[rows], x)
            return x
        return read_rows({name: arr}, rows, {name: (self, name)})[name]

    def dask(self, name: str) -> da.Array:
        """One array as a dask array chunked like the store."""
        return da.from_zarr(self.array(name))

    def nbytes(self) -> int:
        """Uncompressed bytes of all feature arrays."""
        return sum(self.group[k].nbytes for k in self.specs)

    def nbytes_stored(self) -> int:
        """Bytes on disk of the sub-group (arrays, completion record, metadata)."""
        return sum(self.group[k].nbytes_stored() for k in [*self.specs, "done"])
