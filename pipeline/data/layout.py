"""Path rules of the official AVSBench-object tree (Single-source = S4, Multi-sources = MS3), and which
subsets live in which release (the AVSBench-semantic release's path rules are in pipeline.data.semantic)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Subset = Literal["s4", "ms3", "v1s", "v1m", "v2"]
SUBSETS: tuple[Subset, ...] = ("s4", "ms3", "v1s", "v1m", "v2")
# s4/ms3 are read from the AVSBench-object tree; v1s/v1m/v2 (v1s = the S4 videos, v1m = the MS3 videos,
# v2 = new 10-second videos) from the AVSBench-semantic tree, as binary masks.
OBJECT_SUBSETS: tuple[Subset, ...] = ("s4", "ms3")
SEMANTIC_SUBSETS: tuple[Subset, ...] = ("v1s", "v1m", "v2")
DataLayout = Literal["avsbench-object", "avsbench-semantic"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
FRAMES_PER_VIDEO = 5  # AVSBench-object and the semantic release's v1s / v1m
SUBSET_FRAMES: dict[str, int] = {"s4": 5, "ms3": 5, "v1s": 5, "v1m": 5, "v2": 10}
# Subsets with one annotated frame per training video (the first); all others annotate every frame.
FIRST_FRAME_TRAIN: tuple[Subset, ...] = ("s4", "v1s")
FRAME_SIZE = (224, 224)  # (width, height) of the official frames and masks
WAV_RATE = 16_000

# Header row we write in synthetic CSVs. The reader uses the official loaders' rules: the name is
# column 0, the category (S4) column 2, and the split is the column named "split".
CSV_HEADER = {"s4": ["name", "start", "category", "split"], "ms3": ["video_id", "split"]}


def data_layout(subset: Subset) -> DataLayout:
    """Which release a subset is read from: 'avsbench-object' (s4, ms3) or 'avsbench-semantic' (v1s, v1m, v2)."""
    if subset in OBJECT_SUBSETS:
        return "avsbench-object"
    if subset in SEMANTIC_SUBSETS:
        return "avsbench-semantic"
    raise ValueError(f"unknown subset {subset!r}; expected one of {SUBSETS}")


# How each release stores its masks: 0/255 PNGs (object), or one palette colour per class (semantic).
MASK_KINDS: dict[DataLayout, str] = {"avsbench-object": "binary", "avsbench-semantic": "colour"}


def mask_kind(subset: Subset) -> str:
    """'binary' or 'colour': how a subset's GT masks are read (pipeline.data.images.protocol_mask)."""
    return MASK_KINDS[data_layout(subset)]


def frames_per_video(subset: Subset) -> int:
    """Frames (and one-second audio segments) of every video of a subset: 10 for v2, else 5."""
    return SUBSET_FRAMES[subset]


def subset_dir(root: Path, subset: Subset) -> Path:
    """The subset's top folder under the AVSBench root."""
    return Path(root) / ("Single-source" if subset == "s4" else "Multi-sources")


def meta_csv(root: Path, subset: Subset) -> Path:
    """The subset's metadata CSV (the semantic release has one for all its subsets, at its root)."""
    if data_layout(subset) == "avsbench-semantic":
        return Path(root) / "metadata.csv"
    return subset_dir(root, subset) / f"{subset}_meta_data.csv"


def data_dir(root: Path, subset: Subset) -> Path:
    """The subset's data folder (s4_data / ms3_data)."""
    return subset_dir(root, subset) / f"{subset}_data"


def frame_dir(root: Path, subset: Subset, split: str, name: str, category: str | None) -> Path:
    """Folder of a video's frames; MS3 frames have no split level."""
    base = data_dir(root, subset) / "visual_frames"
    return base / split / str(category) / name if subset == "s4" else base / name


def frame_path(root: Path, subset: Subset, split: str, name: str, category: str | None, k: int) -> Path:
    """Frame k (1-based); MS3 keeps the '.mp4' of the source video in the file name."""
    stem = f"{name}_{k}" if subset == "s4" else f"{name}.mp4_{k}"
    return frame_dir(root, subset, split, name, category) / f"{stem}.png"


def audio_path(root: Path, subset: Subset, split: str, name: str, category: str | None) -> Path:
    """The video's 16 kHz WAV."""
    base = data_dir(root, subset) / "audio_wav" / split
    return (base / str(category) if subset == "s4" else base) / f"{name}.wav"


def mask_dir(root: Path, subset: Subset, split: str, name: str, category: str | None) -> Path:
    """Folder of a video's ground-truth masks."""
    base = data_dir(root, subset) / "gt_masks" / split
    return (base / str(category) if subset == "s4" else base) / name


def mask_path(root: Path, subset: Subset, split: str, name: str, category: str | None, k: int) -> Path:
    """Ground-truth mask of frame k (1-based), 0/255 PNG."""
    return mask_dir(root, subset, split, name, category) / f"{name}_{k}.png"


def annotated_frames(subset: Subset, split: str) -> tuple[int, ...]:
    """Frames with a GT mask: S4 / v1s train annotate only frame 1; everything else every frame."""
    if subset in FIRST_FRAME_TRAIN and split == "train":
        return (1,)
    return tuple(range(1, frames_per_video(subset) + 1))
