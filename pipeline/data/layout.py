"""Path rules of the official AVSBench-object tree (Single-source = S4, Multi-sources = MS3), and the per-subset
facts every release shares, looked up in the release registry (pipeline.data.releases)."""

from __future__ import annotations

from pathlib import Path

from pipeline.data.releases import release_of, subset_info

Subset = str  # a registered subset: pipeline.data.releases.subsets()
SPLITS: tuple[str, ...] = ("train", "val", "test")
FRAMES_PER_VIDEO = 5  # AVSBench-object and the semantic release's v1s / v1m
FRAME_SIZE = (224, 224)  # (width, height) of the official frames and masks
WAV_RATE = 16_000

# Header row we write in synthetic CSVs. The reader uses the official loaders' rules: the name is
# column 0, the category (S4) column 2, and the split is the column named "split".
CSV_HEADER = {"s4": ["name", "start", "category", "split"], "ms3": ["video_id", "split"]}


def data_layout(subset: Subset) -> str:
    """Which release a subset is read from, by its registered name ('avsbench-object', 'avsbench-semantic')."""
    return release_of(subset).name


def mask_kind(subset: Subset) -> str:
    """'binary' or 'colour': how a subset's GT masks are read (pipeline.data.images.protocol_mask)."""
    return release_of(subset).mask_kind


def frames_per_video(subset: Subset) -> int:
    """Frames (and one-second audio segments) of every video of a subset: 10 for v2, else 5."""
    return subset_info(subset).frames


def meta_csv(root: Path, subset: Subset) -> Path:
    """The subset's metadata CSV, where its release keeps it."""
    return release_of(subset).meta_csv(Path(root), subset)


def annotated_frames(subset: Subset, split: str) -> tuple[int, ...]:
    """Frames with a GT mask: S4 / v1s train annotate only frame 1; everything else every frame."""
    if subset_info(subset).first_frame_train and split == "train":
        return (1,)
    return tuple(range(1, frames_per_video(subset) + 1))


# ---------------------------------------------------------------- the object release's path rules


def subset_dir(root: Path, subset: Subset) -> Path:
    """The subset's top folder under the AVSBench root."""
    return Path(root) / ("Single-source" if subset == "s4" else "Multi-sources")


def object_meta_csv(root: Path, subset: Subset) -> Path:
    """An object-release subset's metadata CSV: Single-source/s4_meta_data.csv, Multi-sources/ms3_meta_data.csv."""
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
