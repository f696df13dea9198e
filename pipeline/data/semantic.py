"""The AVSBench-semantic release read as binary AVS: path rules, its metadata.csv, label2idx.json, the palette.

Layout (0-based files; our Clip API numbers frames from 1, so frame k is `frames/{k-1}.jpg`):
    <root>/metadata.csv                         vid,uid,s_min,s_sec,a_obj,split,label
    <root>/label2idx.json                       class name -> palette index ("background" among them)
    <root>/<label>/<uid>/frames/<i>.jpg         i = 0..4 (v1s, v1m) or 0..9 (v2)
    <root>/<label>/<uid>/audio.wav
    <root>/<label>/<uid>/labels_rgb/<i>.png     one palette colour per class
A colour mask becomes binary as "colour differs from the background class's palette colour".
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.data import layout
from pipeline.data.avsbench_semantic import SUBSETS
from pipeline.data.clips import FIX_ROW, Clip, MetaRow, read_meta_csv, row_name_problems
from pipeline.data.errors import DataError
from pipeline.data.layout import SPLITS, Subset

META_COLUMNS = ("vid", "uid", "s_min", "s_sec", "a_obj", "split", "label")
PALETTE_SIZE = 71  # the release's classes, background included
BACKGROUND = "background"
FIX_LABELS = (
    "use the label2idx.json shipped with the AVSBench-semantic release (or rewrite it with `av2t synth`)"
)
Colour = tuple[int, int, int]


def meta_csv(root: Path, subset: Subset | None = None) -> Path:
    """The release's one metadata CSV, every subset in it."""
    return Path(root) / "metadata.csv"


def label2idx_path(root: Path) -> Path:
    """Class name -> palette index."""
    return Path(root) / "label2idx.json"


def video_dir(root: Path, subset: Subset, uid: str) -> Path:
    """A video's folder: <root>/<label>/<uid>."""
    return Path(root) / subset / uid


def frame_path(root: Path, subset: Subset, uid: str, k: int) -> Path:
    """Frame k (1-based) -> frames/{k-1}.jpg."""
    return video_dir(root, subset, uid) / "frames" / f"{k - 1}.jpg"


def audio_path(root: Path, subset: Subset, uid: str) -> Path:
    """The video's WAV."""
    return video_dir(root, subset, uid) / "audio.wav"


def mask_path(root: Path, subset: Subset, uid: str, k: int) -> Path:
    """Colour mask of frame k (1-based) -> labels_rgb/{k-1}.png."""
    return video_dir(root, subset, uid) / "labels_rgb" / f"{k - 1}.png"


def palette(n: int = PALETTE_SIZE) -> np.ndarray:
    """(n, 3) uint8: the VOC-style colour of index j, whose bits (low first, three at a time: R, G, B) are set
    into each channel from its high bit down."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for j in range(n):
        rest, shift = j, 7
        while rest:
            for channel in range(3):
                out[j, channel] |= ((rest >> channel) & 1) << shift
            rest >>= 3
            shift -= 1
    return out


def read_label2idx(root: Path) -> dict[str, int]:
    """label2idx.json as {class: index}: a JSON object of distinct palette indices with a "background"."""
    path = label2idx_path(root)
    if not path.is_file():
        raise DataError(f"{path}: not found; the colour masks cannot be read without it: {FIX_LABELS}")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable JSON ({e}): {FIX_LABELS}") from e
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in table.items()
    ):
        raise DataError(f"{path}: expected one JSON object of class name -> integer index: {FIX_LABELS}")
    if BACKGROUND not in table:
        raise DataError(
            f"{path}: has no {BACKGROUND!r} class, so the background colour is unknown: {FIX_LABELS}"
        )
    bad = {k: v for k, v in table.items() if not 0 <= v < PALETTE_SIZE}
    if bad:
        raise DataError(f"{path}: indices outside the palette 0..{PALETTE_SIZE - 1}: {bad}: {FIX_LABELS}")
    if len(set(table.values())) != len(table):
        raise DataError(f"{path}: two classes share an index: {FIX_LABELS}")
    return table


def background_colour(root: Path) -> Colour:
    """The palette colour of the "background" class of label2idx.json (not assumed black)."""
    r, g, b = palette()[read_label2idx(root)[BACKGROUND]].tolist()
    return (r, g, b)


def read_meta(root: Path, subset: Subset) -> list[MetaRow]:
    """The rows of metadata.csv whose `label` is the subset (uid as the name, a_obj as category, '' -> None)."""
    if subset not in SUBSETS:
        raise DataError(f"{subset!r} is not a subset of the AVSBench-semantic release {tuple(SUBSETS)}")
    path = meta_csv(root)
    rows = read_meta_csv(path, "AVSBench-semantic")
    header = [h.strip() for h in rows[0]]
    if missing := [c for c in META_COLUMNS if c not in header]:
        raise DataError(f"{path}: header lacks the columns {missing} (expected {', '.join(META_COLUMNS)})")
    col = {c: header.index(c) for c in META_COLUMNS}
    need = max(col.values()) + 1
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < need:
            raise DataError(f"{path}: line {line} has {len(row)} columns, expected {need}")
        if row[col["label"]].strip() != subset:
            continue
        category = row[col["a_obj"]].strip() or None
        out.append(MetaRow(line, row[col["uid"]].strip(), category, row[col["split"]].strip()))
    return out


def row_problems(rows: list[MetaRow]) -> list[tuple[MetaRow, str]]:
    """(row, problem) for unknown splits, uids that are not names and repeated uids; a_obj is no file name."""
    out, first = [], {}
    for row in rows:
        if row.split not in SPLITS:
            out.append((row, f"line {row.line}: unknown split value {row.split!r}: {FIX_ROW}"))
        out += [(row, p.replace("video id", "uid")) for p in row_name_problems(replace(row, category=None))]
        if row.name in first:
            seen = first[row.name]
            out.append((row, f"line {row.line}: uid {row.name!r} repeats line {seen.line}: {FIX_ROW}"))
        else:
            first[row.name] = row
    return out


def clip_from_row(root: Path, subset: Subset, row: MetaRow, background: Colour) -> Clip:
    """The Clip of one metadata row; its masks are colour masks read against `background`."""
    annotated = layout.annotated_frames(subset, row.split)
    frames = range(1, layout.frames_per_video(subset) + 1)
    return Clip(
        id=row.name,
        subset=subset,
        split=row.split,
        category=row.category,
        frame_paths=tuple(frame_path(root, subset, row.name, k) for k in frames),
        audio_path=audio_path(root, subset, row.name),
        mask_paths=tuple(mask_path(root, subset, row.name, k) if k in annotated else None for k in frames),
        annotated=annotated,
        mask_kind="colour",
        mask_background=background,
    )


def read_clips(root: Path, subset: Subset, split: str) -> list[Clip]:
    """All clips of one split of a semantic subset, in CSV order; the subset's rows must all be sound."""
    rows = read_meta(root, subset)
    if problems := [p for _, p in row_problems(rows)]:
        head = f"{meta_csv(root)}: {len(problems)} problem{'s' if len(problems) > 1 else ''} in its {subset} rows:"
        raise DataError("\n".join([head, *(f"  {p}" for p in problems[:20])]))
    background = background_colour(root)
    return [clip_from_row(root, subset, r, background) for r in rows if r.split == split]
