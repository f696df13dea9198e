"""Clips (one video's frames, WAV and masks) and the AVSBench v1 (object) release's CSV reader, following the
official loaders' path rules; `read_clips` reads any registered release (pipeline.data.releases)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.data import layout
from pipeline.data.errors import DataError
from pipeline.data.layout import SPLITS, Subset
from pipeline.data.names import name_problem
from pipeline.data.releases import release_of

MaskKind = Literal["binary", "colour"]
__all__ = ["Clip", "DataError", "MetaRow", "read_clips"]  # DataError re-exported: `from ...clips import` it


@dataclass(frozen=True)
class Clip:
    """One AVSBench video: its frames, one WAV, masks for the annotated frames.

    mask_kind says how its masks are read (pipeline.data.images.load_clip_mask): "binary" masks of the object
    release (foreground = value > 0), or "colour" masks of the semantic release (foreground = colour differs
    from mask_background, the palette colour of label2idx.json's "background").
    """

    id: str
    subset: Subset
    split: str
    category: str | None
    frame_paths: tuple[Path, ...]
    audio_path: Path
    mask_paths: tuple[Path | None, ...]  # one per frame; None where the frame is not annotated
    annotated: tuple[int, ...]  # 1-based frame numbers with a GT mask
    mask_kind: MaskKind = "binary"
    mask_background: tuple[int, int, int] | None = None  # RGB; colour masks only

    @property
    def frames(self) -> tuple[int, ...]:
        """1-based frame numbers."""
        return tuple(range(1, len(self.frame_paths) + 1))


@dataclass(frozen=True)
class MetaRow:
    """One row of a metadata CSV, with its 1-based line number for error messages."""

    line: int
    name: str
    category: str | None
    split: str


def read_meta_csv(path: Path, release: str) -> list[list[str]]:
    """A metadata CSV's rows, header first; a missing, unreadable or empty file is a DataError naming it."""
    if not path.is_file():
        raise DataError(
            f"{path}: metadata CSV not found (is root, the --root option or root parameter, the {release} root?)"
        )
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV: {e}") from e
    if not rows:
        raise DataError(f"{path}: empty CSV")
    return rows


def read_meta(root: Path, subset: Subset) -> list[MetaRow]:
    """Parse an object-release subset's metadata CSV (name column 0, category column 2 for S4, the 'split'
    column)."""
    path = layout.object_meta_csv(root, subset)
    rows = read_meta_csv(path, "AVSBench")
    header = [h.strip() for h in rows[0]]
    if "split" not in header:
        raise DataError(f"{path}: header has no 'split' column: {header}")
    split_col = header.index("split")
    need = max(split_col, 2 if subset == "s4" else 0) + 1
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < need:
            raise DataError(f"{path}: line {line} has {len(row)} columns, expected at least {need}")
        category = row[2].strip() if subset == "s4" else None
        out.append(MetaRow(line, row[0].strip(), category, row[split_col].strip()))
    return out


FIX_ROW = "fix or remove that row"
MAX_LISTED = 20  # CSV problems listed in one error, before "... and N more"


def row_name_problems(row: MetaRow) -> list[str]:
    """'line N: video id '...' <why>: fix or remove that row' for each name of the row that is not a name."""
    named = [("video id", row.name)] + ([("category", row.category)] if row.category is not None else [])
    return [
        f"line {row.line}: {what} {name!r} {why}: {FIX_ROW}"
        for what, name in named
        if (why := name_problem(name)) is not None
    ]


def duplicate_rows(rows: list[MetaRow]) -> list[tuple[MetaRow, MetaRow]]:
    """(row, first row with the same video id) for every repeat of a video id, in any split."""
    first: dict[str, MetaRow] = {}
    out = []
    for row in rows:
        if row.name in first:
            out.append((row, first[row.name]))
        else:
            first[row.name] = row
    return out


def csv_problems(rows: list[MetaRow]) -> list[str]:
    """Every row read_clips refuses: unknown split values, names that are not names, repeated video ids."""
    problems = []
    for row in rows:
        if row.split not in SPLITS:
            problems.append(f"line {row.line}: unknown split value {row.split!r}")
        problems += row_name_problems(row)
    for row, first in duplicate_rows(rows):
        where = f"line {first.line}, split {first.split!r}"
        problems.append(f"line {row.line}: video id {row.name!r} repeats {where}: {FIX_ROW}")
    return problems


def clip_from_row(root: Path, subset: Subset, row: MetaRow) -> Clip:
    """Build the Clip of one metadata row by the official path rules."""
    n, c, s = row.name, row.category, row.split
    annotated = layout.annotated_frames(subset, s)
    frames = range(1, layout.frames_per_video(subset) + 1)
    return Clip(
        id=n,
        subset=subset,
        split=s,
        category=c,
        frame_paths=tuple(layout.frame_path(root, subset, s, n, c, k) for k in frames),
        audio_path=layout.audio_path(root, subset, s, n, c),
        mask_paths=tuple(
            layout.mask_path(root, subset, s, n, c, k) if k in annotated else None for k in frames
        ),
        annotated=annotated,
    )


def read_clips(root: str | Path, subset: Subset, split: str) -> list[Clip]:
    """All clips of one split of any registered release's subset, in its metadata order.

    The whole metadata file must be sound, whichever split is read: a row with an unknown split value, a
    video id or category that is not a plain name (see pipeline.data.names) or a video id seen before (in
    any split) is an error naming the file, every such row and what to do, before any file is read.
    """
    release = release_of(subset)
    if split not in release.splits:
        raise DataError(f"unknown split {split!r}; expected one of {release.splits}")
    return release.read_clips(Path(root), subset, split)


def read_object_clips(root: Path, subset: Subset, split: str) -> list[Clip]:
    """All clips of one split of an AVSBench v1 (object) subset, in CSV order (see read_clips)."""
    rows = read_meta(root, subset)
    problems = csv_problems(rows)
    csv_path = layout.object_meta_csv(root, subset)
    if len(problems) == 1:
        raise DataError(f"{csv_path}: {problems[0]}")
    if problems:
        listed = [f"  {p}" for p in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            listed.append(f"  ... and {len(problems) - MAX_LISTED} more")
        head = f"{csv_path}: {len(problems)} problems in its rows:"
        raise DataError("\n".join([head, *listed]))
    return [clip_from_row(root, subset, r) for r in rows if r.split == split]
