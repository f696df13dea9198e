"""Read AVSBench v1 clips from the metadata CSV, following the official loaders' path rules."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pipeline.data import layout
from pipeline.data.layout import SPLITS, SUBSETS, Subset


class DataError(ValueError):
    """A problem with an input file; the message names the file."""


@dataclass(frozen=True)
class Clip:
    """One AVSBench video: five frames, one WAV, masks for the annotated frames."""

    id: str
    subset: Subset
    split: str
    category: str | None
    frame_paths: tuple[Path, ...]
    audio_path: Path
    mask_paths: tuple[Path | None, ...]  # one per frame; None where the frame is not annotated
    annotated: tuple[int, ...]  # 1-based frame numbers with a GT mask

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


def read_meta(root: Path, subset: Subset) -> list[MetaRow]:
    """Parse the subset's metadata CSV (name column 0, category column 2 for S4, the 'split' column)."""
    if subset not in SUBSETS:
        raise DataError(f"unknown subset {subset!r}; expected one of {SUBSETS}")
    path = layout.meta_csv(root, subset)
    if not path.is_file():
        raise DataError(f"{path}: metadata CSV not found (is --root the AVSBench root?)")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV: {e}") from e
    if not rows:
        raise DataError(f"{path}: empty CSV")
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


def clip_from_row(root: Path, subset: Subset, row: MetaRow) -> Clip:
    """Build the Clip of one metadata row by the official path rules."""
    n, c, s = row.name, row.category, row.split
    annotated = layout.annotated_frames(subset, s)
    frames = range(1, layout.FRAMES_PER_VIDEO + 1)
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
    """All clips of one split, in CSV order. Rows with an unknown split value are an error."""
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    rows = read_meta(root, subset)
    bad = [r for r in rows if r.split not in SPLITS]
    if bad:
        path = layout.meta_csv(root, subset)
        raise DataError(f"{path}: line {bad[0].line}: unknown split value {bad[0].split!r}")
    return [clip_from_row(root, subset, r) for r in rows if r.split == split]
