"""The (video, expression) level of a split group (Ref-AVS): an expression table whose rows point at the split's
frame rows, and per-expression arrays (text tokens per tokenizer fingerprint, GT masks) beside it.

Per-video features stay where they are (one row per frame in the split's index, shared by every expression of
the video): nothing is copied. Layout inside <subset>/<split>:
    expressions/table/{uid, video, text}      str (n,)
    expressions/table/fid                     int32 (n,)
    expressions/table/frame_rows              int32 (n, frames): the index rows of the expression's video
    expressions/<name>-<fingerprint>/...      per-expression arrays (n, ...) and `done` (n,) bool
Adding expressions appends rows (existing rows keep their numbers); arrays grow with the table and only rows not
yet done are computed. AVSBench groups never get an `expressions` group, so their layout and fingerprints stay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import zarr

from cache.errors import StoreError
from cache.store import SplitGroup
from pipeline.provenance import canonical_json, fingerprint

GROUP = "expressions"
TABLE = "table"


class ExpressionLike(Protocol):
    """What the table reads of an expression (pipeline.data.ref_avs_read.Expression has it)."""

    uid: str
    video: str
    fid: int
    text: str


@dataclass(frozen=True)
class ExpressionTable:
    """Rows (uid, video, fid, text) and each row's frame rows in the split's index."""

    uid: np.ndarray
    video: np.ndarray
    fid: np.ndarray
    text: np.ndarray
    frame_rows: np.ndarray  # (n, frames) int32

    def __len__(self) -> int:
        return len(self.uid)

    def row_of(self, uid: str) -> int:
        """The table row of an expression."""
        hits = np.flatnonzero(self.uid == uid)
        if not len(hits):
            raise KeyError(uid)
        return int(hits[0])


def _group(split: SplitGroup) -> zarr.Group:
    return split.group.require_group(GROUP)


def has_expressions(split: SplitGroup) -> bool:
    """Whether the split group has an expression level."""
    return GROUP in split.group and TABLE in split.group[GROUP]


def read_table(split: SplitGroup) -> ExpressionTable:
    """The expression table (empty when there is none)."""
    if not has_expressions(split):
        empty = np.zeros(0, dtype=object)
        return ExpressionTable(empty, empty, np.zeros(0, np.int32), empty, np.zeros((0, 0), np.int32))
    t = split.group[GROUP][TABLE]
    return ExpressionTable(
        np.asarray(t["uid"][:], dtype=object),
        np.asarray(t["video"][:], dtype=object),
        np.asarray(t["fid"][:], dtype=np.int32),
        np.asarray(t["text"][:], dtype=object),
        np.asarray(t["frame_rows"][:], dtype=np.int32),
    )


def _write_array(g: zarr.Group, name: str, data: np.ndarray, dtype: Any) -> None:
    """Replace one small array (the table's columns are rewritten whole: they are small)."""
    if name in g:
        del g[name]
    shape = data.shape
    chunks = tuple(max(1, s) for s in shape)
    arr = g.create_array(
        name, shape=shape, dtype=dtype, chunks=chunks, compressors=[zarr.codecs.ZstdCodec(level=3)]
    )
    if data.size:
        arr[...] = data


def add_expressions(split: SplitGroup, rows: Sequence[ExpressionLike]) -> tuple[ExpressionTable, list[int]]:
    """Merge expressions into the table: new uids appended, known ones kept; returns the table and the new rows.

    A known uid whose video, fid or text changed is refused (the cached arrays would no longer be its)."""
    table = read_table(split)
    known = {u: i for i, u in enumerate(table.uid.tolist())}
    index = split.index
    new = []
    for r in rows:
        if r.uid in known:
            i = known[r.uid]
            if (table.video[i], int(table.fid[i]), table.text[i]) != (r.video, int(r.fid), r.text):
                raise StoreError(
                    f"{split.store.url}: {split.path}: expression {r.uid!r} is cached with other content "
                    f"({table.video[i]!r}, fid {int(table.fid[i])}, {table.text[i]!r}); use a new store"
                )
            continue
        frames = index.rows_of(r.video)
        if not len(frames):
            raise StoreError(
                f"{split.store.url}: {split.path}: video {r.video!r} of expression {r.uid!r} has no frame rows; "
                "extract the video first (its per-video features)"
            )
        new.append((r, frames))
        known[r.uid] = len(known)
    if not new:
        return table, []
    width = max([table.frame_rows.shape[1] if len(table) else 0] + [len(f) for _, f in new])
    frame_rows = np.full((len(table) + len(new), width), -1, dtype=np.int32)
    if len(table):
        frame_rows[: len(table), : table.frame_rows.shape[1]] = table.frame_rows
    for j, (_, f) in enumerate(new):
        frame_rows[len(table) + j, : len(f)] = f
    uid = np.array([*table.uid.tolist(), *(r.uid for r, _ in new)], dtype=object)
    video = np.array([*table.video.tolist(), *(r.video for r, _ in new)], dtype=object)
    text = np.array([*table.text.tolist(), *(r.text for r, _ in new)], dtype=object)
    fid = np.array([*table.fid.tolist(), *(int(r.fid) for r, _ in new)], dtype=np.int32)
    t = _group(split).require_group(TABLE)
    _write_array(t, "uid", uid.astype(str), str)
    _write_array(t, "video", video.astype(str), str)
    _write_array(t, "text", text.astype(str), str)
    _write_array(t, "fid", fid, "int32")
    _write_array(t, "frame_rows", frame_rows, "int32")
    t.attrs["n_rows"] = len(uid)
    return read_table(split), list(range(len(table), len(uid)))


def feature_key(name: str, provenance: dict[str, Any]) -> str:
    """The sub-group of one per-expression feature: <name>-<fingerprint>."""
    return f"{name}-{fingerprint(provenance)}"


def require_feature(
    split: SplitGroup,
    name: str,
    provenance: dict[str, Any],
    compute: Callable[[list[int]], dict[str, np.ndarray]],
) -> tuple[str, list[int]]:
    """Per-expression arrays of one fingerprinted producer (a tokenizer, the GT reader): rows not yet done are
    computed by `compute(rows)` (arrays whose first axis follows `rows`) and written; returns the sub-group's key
    and the table rows computed now (empty when everything was cached)."""
    table = read_table(split)
    key = feature_key(name, provenance)
    g = _group(split).require_group(key)
    if "provenance" in g.attrs and g.attrs["provenance"] != canonical_json(provenance):
        raise StoreError(
            f"{split.store.url}: {split.path}/{GROUP}/{key}: provenance differs from its fingerprint"
        )
    g.attrs["provenance"] = canonical_json(provenance)
    done = np.zeros(len(table), dtype=bool)
    if "done" in g:
        old = np.asarray(g["done"][:], dtype=bool)
        done[: len(old)] = old
    rows = [int(i) for i in np.flatnonzero(~done)]
    if not rows:
        return key, []
    out = compute(rows)
    for arr_name, values in out.items():
        full_shape = (len(table), *values.shape[1:])
        merged = np.zeros(full_shape, dtype=values.dtype)
        if arr_name in g:
            old = np.asarray(g[arr_name][:])
            merged[: len(old)] = old
        merged[rows] = values
        _write_array(g, arr_name, merged, values.dtype)
    done[rows] = True
    _write_array(g, "done", done, "bool")
    return key, rows


def read_feature(
    split: SplitGroup, key: str, name: str, rows: np.ndarray | slice | None = None
) -> np.ndarray:
    """One per-expression array of a sub-group, for table rows `rows` (all by default)."""
    g = split.group[GROUP][key]
    done = np.asarray(g["done"][:], dtype=bool)
    sel = slice(None) if rows is None else rows
    if not done[sel].all():
        raise StoreError(f"{split.store.url}: {split.path}/{GROUP}/{key}: rows not computed yet; run extract")
    return np.asarray(g[name][sel])
