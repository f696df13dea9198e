"""The per-split index table: one row per cached frame, followed by every feature array's first axis."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

FrameSelection = Literal["used", "all"]


class ClipLike(Protocol):
    """What the index reads of a clip (pipeline.data.Clip has it; the cache does not import the reader)."""

    id: str
    subset: str
    split: str
    category: str | None
    frames: tuple[int, ...]
    annotated: tuple[int, ...]


@dataclass(frozen=True)
class SplitIndex:
    """Rows (video id, 1-based frame number, category, has-mask) in store order."""

    video: np.ndarray  # str
    frame: np.ndarray  # int16
    category: np.ndarray  # str ('' for MS3)
    has_mask: np.ndarray  # bool

    def __post_init__(self) -> None:
        n = len(self.video)
        if not (len(self.frame) == len(self.category) == len(self.has_mask) == n):
            raise ValueError("index columns differ in length")

    def __len__(self) -> int:
        return len(self.video)

    @classmethod
    def from_clips(cls, clips: Iterable[ClipLike], frames: FrameSelection = "used") -> SplitIndex:
        """Rows for clips: 'used' keeps only the annotated frames of a train split that annotates some of them (S4 /
        v1s train: frame 1), 'all' every frame."""
        rows = []
        for c in clips:
            # (no annotated frame at all: masks belong to expressions, Ref-AVS; every frame is used)
            only_annotated = frames == "used" and c.split == "train" and 0 < len(c.annotated) < len(c.frames)
            for k in c.frames:
                if only_annotated and k not in c.annotated:
                    continue
                rows.append((c.id, k, c.category or "", k in c.annotated))
        return cls.from_rows(rows)

    @classmethod
    def from_rows(cls, rows: list[tuple[str, int, str, bool]]) -> SplitIndex:
        """Build from (video, frame, category, has_mask) tuples."""
        video, frame, category, has_mask = zip(*rows, strict=True) if rows else ((), (), (), ())
        return cls(
            np.array(video, dtype=str).astype(object),
            np.array(frame, dtype=np.int16),
            np.array(category, dtype=str).astype(object),
            np.array(has_mask, dtype=bool),
        )

    def digest(self) -> str:
        """16 hex digits identifying the row list; a store refuses to mix rows of two indexes."""
        h = hashlib.sha256()
        for v, f, c, m in zip(self.video, self.frame, self.category, self.has_mask, strict=True):
            h.update(f"{v}\x00{int(f)}\x00{c}\x00{int(bool(m))}\n".encode())
        return h.hexdigest()[:16]

    def rows_of(self, video: str) -> np.ndarray:
        """Row numbers of one video, in frame order."""
        return np.flatnonzero(self.video == video)

    def videos(self) -> list[str]:
        """Video ids in first-appearance order."""
        return list(dict.fromkeys(self.video.tolist()))
