"""Zarr v3 feature store: split groups with an index table, encoder sub-groups, block-aligned writes."""

from __future__ import annotations

import asyncio
import json
import math
import mmap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import zarr
import zarr.codecs
from zarr.core.sync import sync as zarr_sync

from cache.index import SplitIndex
from pipeline.provenance import canonical_json, diff_provenance, fingerprint, precision_variants

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


class StoreDamaged(StoreError):
    """Stored chunks are missing, fail their checksum, do not decode or hold non-finite features.

    The message (damage_message) names every damaged chunk (group, encoder key, array, rows, problem) and the
    commands that repair it; `damage` holds them as Damage records.
    """

    def __init__(self, damage: list[Damage]):
        self.damage = list(damage)
        super().__init__(damage_message(self.damage, limit=20))


# Integrity: every chunk of every array written from now on carries a crc32c checksum (after the
# compressor; the shard index of a sharded array has its own by default), and every chunk of a written
# block is stored, even an all-zero one, so an absent chunk of a done row means lost data.
CHECKSUM = "crc32c"
UNCHECKED = (
    "unchecked (written before checksums: run `av2t cache verify`; re-extract into a new store to add them)"
)
CHECKSUM_MISMATCH = "checksum mismatch"
MISSING = "missing"
UNDECODABLE = "undecodable"
NON_FINITE = "non-finite"
INDEX_DIGEST = "does not match the split's index digest"
WRITE_ALL_CHUNKS = {"write_empty_chunks": True}
EXTRACT_SPLITS = ("train", "val", "test")


def _with_checksum(compressors: list[Any] | None) -> list[Any]:
    return [*(compressors or []), zarr.codecs.Crc32cCodec()]


def array_checksum(arr: zarr.Array) -> str | None:
    """The checksum every (inner) chunk of the array carries: "crc32c", or None (written before checksums)."""
    codecs = list(arr.metadata.codecs)
    for c in list(codecs):
        if isinstance(c, zarr.codecs.ShardingCodec):
            codecs = list(c.codecs)
    return CHECKSUM if any(isinstance(c, zarr.codecs.Crc32cCodec) for c in codecs) else None


@dataclass(frozen=True)
class Damage:
    """One damaged (or lost) stored chunk: where it is, the rows it holds, what is wrong, how to redo it."""

    store: str
    subset: str
    split: str
    encoder: str  # name@fingerprint; "" for the split's index
    array: str  # a feature array, "done" (the completion record) or "index/<column>"
    start: int  # rows start..stop-1 of the chunk
    stop: int
    key: str  # the stored object
    problem: str  # checksum mismatch | missing | undecodable | non-finite | does not match the index digest
    detail: str = ""
    # How `av2t extract` recomputes it: encoder names, and the options the encoder's arrays were made with.
    reextract: tuple[str, ...] = ()
    options: tuple[str, ...] = field(default=(), compare=False)

    @property
    def group(self) -> str:
        """subset/split."""
        return f"{self.subset}/{self.split}"

    def line(self) -> str:
        """One line: group, encoder key, array, rows, problem, stored object."""
        rows = f"rows {self.start}-{self.stop - 1}" if self.stop - self.start > 1 else f"row {self.start}"
        where = " ".join(x for x in (self.group, self.encoder, self.array) if x)
        detail = f" ({self.detail})" if self.detail else ""
        return f"{where} {rows}: {self.problem}{detail} [{self.key}]"

    def to_json(self) -> dict[str, Any]:
        """As `av2t cache verify --json` prints it."""
        return {
            "group": self.group,
            "subset": self.subset,
            "split": self.split,
            "encoder": self.encoder or None,
            "array": self.array,
            "rows": [self.start, self.stop],
            "key": self.key,
            "problem": self.problem,
            "detail": self.detail,
        }


def repair_command(store: str) -> str:
    """The command that takes damaged chunks out of the store and marks their rows not done."""
    return f"av2t cache verify {store} --repair"


def extract_commands(damage: Iterable[Damage]) -> list[str]:
    """`av2t extract` commands that recompute the rows a repair marked not done (one per subset and options)."""
    plans: dict[tuple[str, str, tuple[str, ...]], tuple[set[str], dict[str, None]]] = {}
    for d in damage:
        splits, names = plans.setdefault((d.store, d.subset, d.options), (set(), {}))
        splits.add(d.split)
        names.update(dict.fromkeys(d.reextract))
    out = []
    for (store, subset, options), (splits, names) in plans.items():
        ordered = [s for s in EXTRACT_SPLITS if s in splits] + sorted(splits - set(EXTRACT_SPLITS))
        out.append(
            " ".join(
                [
                    f"av2t extract --store {store} --subset {subset} --splits {' '.join(ordered)}",
                    f"--encoders {' '.join(names)} --root <AVSBench root> --preset <preset it was extracted with>",
                    *options,
                ]
            )
        )
    return out


def damage_message(damage: list[Damage], limit: int | None = None, repaired: bool = False) -> str:
    """The text naming damaged chunks and their fix: readers raise it (StoreDamaged), `cache verify` prints it."""
    if not damage:
        return "no damage"
    stores = list(dict.fromkeys(d.store for d in damage))
    shown = damage if limit is None else damage[:limit]
    lines = [f"{', '.join(stores)}: damaged data in the feature store ({len(damage)} chunk(s)):"]
    lines += [f"  {d.line()}" for d in shown]
    if len(shown) < len(damage):
        lines.append(f"  ... and {len(damage) - len(shown)} more (`av2t cache verify` lists them all)")
    if not repaired:
        lines += [
            f"repair: {repair_command(s)}   (removes the damaged blocks' chunks and marks their rows not done)"
            for s in stores
        ]
    lines += [f"then re-extract: {c}" for c in extract_commands(damage)]
    lines.append(
        "  (extract recomputes exactly the rows not done: every row of a repaired block; pass the preset and"
        " --threads of the first extraction for bit-identical features)"
    )
    return "\n".join(lines)


# Float bit patterns whose exponent bits are all ones are inf or nan: a mask test is ~5x faster than isfinite.
_EXPONENT = {
    np.dtype("float16"): (np.uint16, 0x7C00),
    np.dtype("float32"): (np.uint32, 0x7F800000),
    np.dtype("float64"): (np.uint64, 0x7FF0000000000000),
}


def non_finite_rows(x: np.ndarray) -> np.ndarray:
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


def outer_rows(arr: zarr.Array) -> int:
    """Rows per stored object along the first axis: the shard, or the chunk of an unsharded array."""
    return int((arr.shards or arr.chunks)[0])


def n_objects(arr: zarr.Array) -> int:
    """Stored objects along the first axis (the arrays are chunked whole along the others)."""
    return math.ceil(arr.shape[0] / outer_rows(arr)) if arr.shape[0] else 0


def object_rows(arr: zarr.Array, i: int) -> slice:
    """Rows of stored object i."""
    r = outer_rows(arr)
    return slice(i * r, min((i + 1) * r, arr.shape[0]))


def object_key(arr: zarr.Array, i: int) -> str:
    """Store key of object i (a shard, or a chunk of an unsharded array)."""
    return f"{arr.store_path.path}/{arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))}"


def objects_of_rows(arr: zarr.Array, rows: np.ndarray | slice | None) -> list[int]:
    """The stored objects holding these rows (all with None)."""
    if rows is None:
        return list(range(n_objects(arr)))
    if isinstance(rows, slice):
        rows = np.arange(arr.shape[0])[rows]
    return sorted({int(r) for r in np.unique(np.asarray(rows, dtype=np.int64) // outer_rows(arr))})


def stored_objects(arr: zarr.Array, objects: list[int]) -> set[int]:
    """Which of these objects are in the store: a few are looked up one by one, more by one listing."""
    if not objects:
        return set()
    store = arr.store_path.store
    keys = {object_key(arr, i): i for i in objects}
    if len(objects) <= 16:

        async def exists():
            return await asyncio.gather(*(store.exists(k) for k in keys))

        return {i for (k, i), ok in zip(keys.items(), zarr_sync(exists()), strict=True) if ok}

    async def listing():
        return [k async for k in store.list_prefix(arr.store_path.path)]

    return {keys[k] for k in zarr_sync(listing()) if k in keys}


def read_object(arr: zarr.Array, i: int) -> tuple[np.ndarray | None, list[tuple[int, int, BaseException]]]:
    """Decode stored object i: (its rows, []) or (None, [(start, stop, error)] for each chunk that fails).

    A shard whose inner chunks fail one by one names those chunks' rows; a shard that fails as a whole (its
    index) names all its rows. Storage errors (OSError: network, permissions) are not damage: they raise.
    """
    sl = object_rows(arr, i)
    try:
        return arr[sl], []
    except OSError:
        raise
    except Exception as e:
        whole = e
    inner, bad = int(arr.chunks[0]), []
    if inner < outer_rows(arr):
        for a in range(sl.start, sl.stop, inner):
            b = min(a + inner, sl.stop)
            try:
                arr[a:b]
            except OSError:
                raise
            except Exception as e:
                bad.append((a, b, e))
        if len(bad) == math.ceil((sl.stop - sl.start) / inner):
            bad = []  # every inner chunk fails: the shard (its index) is what is damaged
    return None, bad or [(sl.start, sl.stop, whole)]


def _raw_layout(arr: zarr.Array) -> tuple[Any, int, bool] | None:
    """(local path of the array, inner chunk rows, sharded) when its objects are plain bytes + crc32c on a
    local filesystem (codec none with checksums, shard index at the end), else None (read through zarr)."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
    from zarr.storage import LocalStore

    store = arr.store_path.store
    if not isinstance(store, LocalStore) or arr.metadata.zarr_format != 3:
        return None
    if tuple(arr.chunks[1:]) != tuple(arr.shape[1:]) or np.dtype(arr.dtype).byteorder == ">":
        return None
    codecs, sharded = list(arr.metadata.codecs), False
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        sh = codecs[0]
        index = list(sh.index_codecs)
        if str(getattr(sh.index_location, "value", sh.index_location)) != "end" or not (
            len(index) == 2 and isinstance(index[0], BytesCodec) and isinstance(index[1], Crc32cCodec)
        ):
            return None
        codecs, sharded = list(sh.codecs), True
    if not (len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], Crc32cCodec)):
        return None
    if (
        np.dtype(arr.dtype).itemsize > 1
        and str(getattr(codecs[0].endian, "value", codecs[0].endian)) != "little"
    ):
        return None
    return store.root, int(arr.chunks[0]), sharded


def object_rows_raw(arr: zarr.Array, i: int) -> list[np.ndarray] | None:
    """The rows of stored object i (a shard or chunk) as read-only views into the mapped file, every chunk
    checked against its crc32c first: no zarr codec pipeline, no copy (uncompressed arrays with checksums on
    a local store).

    None when the array is not stored that way or anything does not check out (absent, short, a checksum
    mismatch): the caller then reads through zarr, which raises the damage as usual (StoreDamaged).
    """
    import google_crc32c

    layout = _raw_layout(arr)
    if layout is None:
        return None
    root, inner, sharded = layout
    sl = object_rows(arr, i)
    n = sl.stop - sl.start
    row_shape, dtype = tuple(arr.shape[1:]), np.dtype(arr.dtype)
    row_bytes = math.prod(row_shape) * dtype.itemsize
    n_chunks = outer_rows(arr) // inner if sharded else 1
    try:
        with open(f"{root}/{object_key(arr, i)}", "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)  # page cache mapped: no copy into a buffer
    except (OSError, ValueError):  # absent, or empty
        return None
    data = np.frombuffer(buf, np.uint8)
    if sharded:
        idx_len = 16 * n_chunks + 4
        if len(data) < idx_len:
            return None
        idx = data[-idx_len:]
        if google_crc32c.value(idx[:-4]) != int(idx[-4:].view("<u4")[0]):
            return None
        offsets = idx[:-4].view("<u8").reshape(n_chunks, 2)
    else:
        offsets = np.array([[0, len(data)]], dtype=np.uint64)
    rows = []
    for c in range(math.ceil(n / inner)):
        off, size = (int(v) for v in offsets[c])
        if size != inner * row_bytes + 4 or off + size > len(data):
            return None
        chunk = data[off : off + size]
        if google_crc32c.value(chunk[:-4]) != int(chunk[-4:].view("<u4")[0]):
            return None
        k = min(inner, n - c * inner)
        x = chunk[: k * row_bytes].view(dtype).reshape(k, *row_shape)
        rows.extend(x[j] for j in range(k))
    return rows


_EMPTY = np.uint64(2**64 - 1)  # a shard index entry of a chunk that is not stored


def write_object_raw(arr: zarr.Array, i: int, x: np.ndarray) -> bool:
    """Write stored object i (a shard or chunk) whole, in the very bytes zarr writes (plain little-endian
    chunks, each followed by its crc32c; a sharded array's index at the end, with its own crc32c), from
    numpy: no codec pipeline and no event loop, so the writer holds the GIL for microseconds, not
    milliseconds, while the encoders' forward needs it (extraction).

    Written to a temporary file renamed into place, as zarr does, so a reader never sees half an object.
    False when the array is not stored that way (compressed, remote, ...): the caller writes through zarr.
    """
    import os
    import uuid

    import google_crc32c

    layout = _raw_layout(arr)
    if layout is None:
        return False
    root, inner, sharded = layout
    sl = object_rows(arr, i)
    n = sl.stop - sl.start
    dtype = np.dtype(arr.dtype).newbyteorder("<")
    x = np.ascontiguousarray(x, dtype=dtype)
    if x.shape != (n, *arr.shape[1:]):
        raise StoreError(f"{arr.store_path.path}: object {i} takes {(n, *arr.shape[1:])}, got {x.shape}")
    per = inner if sharded else outer_rows(arr)  # rows per chunk
    n_chunks = outer_rows(arr) // inner if sharded else 1
    index = np.full((n_chunks, 2), _EMPTY, dtype="<u8")
    parts, offset = [], 0
    for c in range(math.ceil(n / per)):
        rows = x[c * per : (c + 1) * per]
        if len(rows) < per:  # an edge chunk is stored whole, padded with the fill value (0)
            rows = np.concatenate([rows, np.zeros((per - len(rows), *rows.shape[1:]), dtype)])
        data = rows.reshape(-1).view(np.uint8)  # a view of the rows' bytes: no copy
        data.flags.writeable = False  # google_crc32c takes read-only buffers only
        parts += [data, int(google_crc32c.value(data)).to_bytes(4, "little")]
        index[c] = (offset, data.nbytes + 4)
        offset += data.nbytes + 4
    if sharded:
        raw_index = index.tobytes()
        parts += [raw_index, int(google_crc32c.value(raw_index)).to_bytes(4, "little")]
    path = f"{root}/{object_key(arr, i)}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    try:  # os.open, not mkstemp: the file gets the umask's permissions, as zarr's own files do (not 0600)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            for part in parts:
                f.write(part)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


CODECS: dict[str, Any] = {
    "none": lambda: None,
    "zstd": lambda: [zarr.codecs.ZstdCodec(level=3)],
    "blosc-lz4": lambda: [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2)],
    "blosc-zstd-bitshuffle": lambda: [
        zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=2)
    ],
}


# Uncompressed by default, measured (bench/bench_feed.py, paper-shaped rows): zstd saves only ~8-11% of the
# bytes of float16 features but makes every read decode (streaming 0.04-0.05 of a plain read vs 0.67-0.95
# uncompressed, which the readers map and check without zarr's codec pipeline). Stores written with zstd
# keep reading.
DEFAULT_CODEC = "none"


@dataclass(frozen=True)
class ArraySpec:
    """One feature array of an encoder: the per-row shape, dtype and codec."""

    shape: tuple[int, ...]
    dtype: str = "float16"
    codec: str = DEFAULT_CODEC

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


Owners = Mapping[str, "tuple[EncoderGroup, str]"]


def read_rows_many(
    arrays: dict[str, zarr.Array], rows: np.ndarray, owners: Owners | None = None
) -> dict[str, np.ndarray]:
    """Sorted rows of several arrays, read as runs of consecutive rows, all in one event-loop round trip.

    A shuffled training batch is many small reads; issued one by one, zarr's per-call overhead
    (~1-2 ms) dominated the batch. Gathered on zarr's own loop, they overlap.

    owners (field -> (encoder group, array name)): a chunk that fails its checksum or does not decode raises
    StoreDamaged naming it; so do non-finite values read from an array written before checksums.
    """
    rows = np.asarray(rows, dtype=np.int64)
    runs = row_runs(rows)
    if not runs:
        return {name: np.empty((0, *arr.shape[1:]), arr.dtype) for name, arr in arrays.items()}

    async def gather():
        return await asyncio.gather(
            *(arr._async_array.getitem(slice(a, b)) for arr in arrays.values() for a, b in runs)
        )

    try:
        parts = iter(zarr_sync(gather()))
    except OSError:
        raise
    except Exception as e:
        if owners is None:
            raise
        damage = [d for f, (enc, name) in owners.items() for d in enc.scan(name, rows)]
        if not damage:
            raise
        raise StoreDamaged(damage) from e
    out = {name: np.concatenate([np.asarray(next(parts)) for _ in runs]) for name in arrays}
    for f, (enc, name) in (owners or {}).items():
        enc.check_finite(name, rows, out[f])
    return out


def read_rows(
    arrays: dict[str, zarr.Array], rows: np.ndarray, owners: Owners | None = None
) -> dict[str, np.ndarray]:
    """Rows of several arrays in the order given (any order, repeats allowed): read sorted, then put back."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    out = {}
    for name, x in read_rows_many(arrays, rows[order], owners).items():
        out[name] = np.empty_like(x)
        out[name][order] = x
    return out


def _missing_filesystem(url: str, e: ImportError) -> StoreError:
    """An fsspec URL whose filesystem package (s3fs, gcsfs, adlfs, ...) is not installed."""
    from fsspec.registry import known_implementations

    scheme = url.split("://", 1)[0]
    pkg = e.name or known_implementations.get(scheme, {}).get("class", "").split(".")[0]
    return StoreError(
        f"{url}: the {scheme}:// filesystem needs a package that is not installed ({e}): "
        f"pip install {pkg or 'the fsspec implementation for ' + scheme}"
    )


def _bad_metadata_file(url: str) -> str | None:
    """The first zarr.json of a local store that is not valid JSON (None for other stores, or if none)."""
    import os

    root = url.removeprefix("file://")
    if "://" in root or not os.path.isdir(root):
        return None
    for folder, _, files in os.walk(root):
        if "zarr.json" in files:
            path = os.path.join(folder, "zarr.json")
            try:
                with open(path, "rb") as f:
                    json.loads(f.read())
            except (OSError, ValueError):
                return path
    return None


def _damaged(url: str, e: json.JSONDecodeError) -> StoreError:
    """A zarr.json that is not JSON (a copy cut short, a full disk in an old zarr version's write)."""
    where = _bad_metadata_file(url) or f"a zarr.json under {url}"
    return StoreError(
        f"{where}: the feature store's metadata is not valid JSON ({e.msg}: line {e.lineno} column "
        f"{e.colno}): the store is damaged; restore it from a copy, or delete it and extract again"
    )


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
        except ImportError as e:  # an fsspec URL (s3://...) whose filesystem package is missing
            raise _missing_filesystem(self.url, e) from e
        except json.JSONDecodeError as e:
            raise _damaged(self.url, e) from e
        if mode != "r" and "av2t_store" not in self.root.attrs:
            self.root.attrs["av2t_store"] = STORE_VERSION

    def __repr__(self) -> str:
        return f"FeatureStore({self.url!r})"

    def groups(self) -> list[tuple[str, str]]:
        """(subset, split) of every split group, sorted."""
        out = []
        try:
            for subset, g in self.root.groups():
                out += [(subset, split) for split, _ in g.groups()]
        except json.JSONDecodeError as e:
            raise _damaged(self.url, e) from e
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
            encoders[0].extract_options(frames=False) if encoders else (),
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
            raise _damaged(self.store.url, e) from e

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
                f"{self.store.url}: {self.path} has no '{name}' features; add {name} to the encoders you "
                f"extract: av2t extract --root AVSBENCH_ROOT --subset {self.subset} --splits {self.split} "
                f"--encoders {name} --store {self.store.url} (the extract-features/extract deployment: "
                f"""--param 'encoders=[..., "{name}"]')"""
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
            _create_feature_array(g, arr_name, spec, self.n_rows, self.block_rows)
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
        compressors=_with_checksum(CODECS[spec.codec]()),  # crc32c after the compressor, in every inner chunk
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
        self._checksums: dict[str, str | None] = {}
        self._writable: dict[str, zarr.Array] = {}
        self._extract_options: dict[bool, tuple[str, ...]] = {}

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
            raise _damaged(self.split.store.url, e) from e

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
        except OSError:
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
            done = self._done_tolerant()
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

    def _done_tolerant(self) -> np.ndarray:
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
        bad = non_finite_rows(x) & done[sl]
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
        nonfinite = non_finite_rows(x)
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
            self.extract_options(),
        )

    def extract_options(self, frames: bool = True) -> tuple[str, ...]:
        """`av2t extract` options that remake this encoder's arrays as they are (other than defaults)."""
        if frames not in self._extract_options:
            self._extract_options[frames] = self._make_extract_options(frames)
        return self._extract_options[frames]

    def _make_extract_options(self, frames: bool) -> tuple[str, ...]:
        from cache.quant import scale_names  # cache.quant imports this module

        opts = []
        scales = scale_names(self.specs)
        # the float32 scales of int8 arrays are not the group's float dtype
        floats = {s.dtype for k, s in self.specs.items() if np.dtype(s.dtype).kind == "f" and k not in scales}
        if floats and floats != {"float16"}:
            opts.append(f"--dtype {sorted(floats)[0]}")
        if scales:
            opts.append("--quantize int8")
        codecs = {s.codec for s in self.specs.values()}
        if codecs and codecs != {DEFAULT_CODEC}:
            opts.append(f"--codec {sorted(codecs)[0]}")
        sp = self.split
        if frames and sp.subset == "s4" and sp.split == "train" and sp.n_rows:
            try:
                if (sp.index.frame != 1).any():
                    opts.append("--frames all")
            except StoreError:
                pass
        if len([e for e in sp.encoders() if e.name == self.name]) > 1:
            opts.append("--allow-other-fingerprints")
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
            except OSError:
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
