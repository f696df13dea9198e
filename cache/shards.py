"""Raw zarr v3 object I/O: the stored objects (shards, or chunks of unsharded arrays) along the rows, read and
written whole; plain uncompressed ones mapped and checked against their crc32c, and written in zarr's very bytes,
without zarr's codec pipeline. The one place that relies on zarr's internals and parses shard bytes by hand.
"""

from __future__ import annotations

import asyncio
import math
import mmap
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import zarr
from zarr.core.sync import sync as zarr_sync

from cache.errors import STORAGE_ERRORS, Damage, StoreDamaged, StoreError


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
    except STORAGE_ERRORS:
        raise
    except Exception as e:
        whole = e
    inner, bad = int(arr.chunks[0]), []
    if inner < outer_rows(arr):
        for a in range(sl.start, sl.stop, inner):
            b = min(a + inner, sl.stop)
            try:
                arr[a:b]
            except STORAGE_ERRORS:
                raise
            except Exception as e:
                bad.append((a, b, e))
        if len(bad) == math.ceil((sl.stop - sl.start) / inner):
            bad = []  # every inner chunk fails: the shard (its index) is what is damaged
    return None, bad or [(sl.start, sl.stop, whole)]


def raw_layout(arr: zarr.Array) -> tuple[Any, int, bool] | None:
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

    layout = raw_layout(arr)
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

    layout = raw_layout(arr)
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


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted row numbers as (start, stop) runs of consecutive rows."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


class Owner(Protocol):
    """What names the damage of a read (cache.store.EncoderGroup): its chunks' damage, non-finite rows."""

    def scan(self, name: str, rows: Any = None) -> list[Damage]: ...

    def check_finite(self, name: str, rows: np.ndarray, x: np.ndarray) -> None: ...


Owners = Mapping[str, "tuple[Owner, str]"]


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
    except STORAGE_ERRORS:
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
