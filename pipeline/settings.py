"""The stages' settings: the one source of every default and help text (the CLI and the flows derive theirs).

Light on purpose (pydantic and the preset files only): `av2t --help` builds its options from these models
without importing torch, zarr or Prefect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.data.layout import SPLITS
from pipeline.data.releases import all_splits, known_split, known_subset, splits_of, subsets
from pipeline.model.config import HeadConfig, head_config
from pipeline.presets import preset_file

# The encoder names a store holds (pipeline.encoders.registry maps each to its module).
ENCODER_NAMES: tuple[str, ...] = ("clip", "clap", "sam2", "beit3", "gt")
DEFAULT_STORE = "runs/store.zarr"


def _split_enum(schema: dict[str, Any]) -> None:
    """Every registered release's split names as the JSON schema's enum."""
    schema["enum"] = list(all_splits())


# A split of any registered release (AVSBench: train / val / test; Ref-AVS adds test_s / test_u / test_n).
Split = Annotated[str, AfterValidator(known_split), Field(json_schema_extra=_split_enum)]


@dataclass(frozen=True)
class Choices:
    """Field metadata: the valid values come from a registry (the CLI offers them as choices)."""

    values: Callable[[], Sequence[str]]


def _subset_enum(schema: dict[str, Any]) -> None:
    """The registered subsets as the JSON schema's enum (the Prefect UI's drop-down)."""
    schema["enum"] = list(subsets())


# A subset of any registered data release (pipeline.data.releases): a new release needs no change here.
SubsetName = Annotated[
    str, AfterValidator(known_subset), Choices(subsets), Field(json_schema_extra=_subset_enum)
]
EvalMode = Literal["cached", "end-to-end"]
OnRegression = Literal["fail", "warn"]
RunnerKind = Literal["threads", "dask"]
PrecisionName = Literal["auto", "fp32", "bf16"]
FeedMode = Literal["auto", "resident", "streaming"]


class ExtractConfig(BaseModel):
    """What to extract, from where, into where."""

    model_config = ConfigDict(extra="forbid")

    root: Path = Field(description="AVSBench root (the folder holding Single-source/ and Multi-sources/)")
    subset: SubsetName = Field(
        "s4", description="AVSBench subset: s4 / ms3 (object release), v1s / v1m / v2 (semantic release)"
    )
    splits: list[Split] = Field(default_factory=lambda: list(SPLITS), description="splits to extract")
    encoders: list[str] = Field(
        default_factory=lambda: list(ENCODER_NAMES),
        description="encoders to run ('gt' caches the GT masks)",
    )
    preset: str = Field("tiny", description="encoder preset: a shipped name (tiny, paper, ...) or a folder")
    store: str = Field(DEFAULT_STORE, description="feature store path or fsspec URL")
    batch_size: int | None = Field(
        None, ge=1, description="rows per encoder forward, every encoder (default: the preset's extract.json)"
    )
    device: str = Field("auto", description="auto (cuda if present), cpu, cuda, cuda:1, ...")
    precision: PrecisionName = Field(
        "auto",
        description="encoder compute: auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16; bf16 "
        "features get another fingerprint, so they never mix with fp32 ones in a store",
    )
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="a bad input file: stop (rows done so far are kept), or skip its rows"
    )
    dtype: Literal["float16", "float32"] = Field("float16", description="storage dtype of float features")
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="int8: store the (C, H, W) feature maps (SAM 2) as int8 with a float32 scale per row and "
        "channel, half the bytes of float16 (docs/feature-store.md, int8 feature maps)",
    )
    decode_workers: int | None = Field(
        None,
        ge=1,
        description="threads decoding frames / audio ahead of the encoders (default: 1 when they run "
        "on the CPU, 4 beside a GPU)",
    )
    frames: Literal["used", "all"] = Field(
        "used", description="used: S4 train frame 1 only (the annotated one); all: every frame"
    )
    weights_dir: Path | None = Field(
        None, description="folder of the official checkpoints (default: $AV2T_WEIGHTS, else ./weights)"
    )
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='per-encoder config overrides, e.g. {"sam2": {"trunk_block": 44}}'
    )

    @field_validator("overrides")
    @classmethod
    def _known_overrides(
        cls, v: dict[str, dict[str, Any]], info: ValidationInfo
    ) -> dict[str, dict[str, Any]]:
        """Every override names an encoder and fields of its config: refused here, before any file is written."""
        if v and info.data.get("preset") is not None:
            from pipeline.encoders.registry import check_overrides  # imports torch: only when there are some

            check_overrides(info.data["preset"], v)
        return v

    block_rows: int = Field(32, ge=1, description="rows per write block (= zarr shard)")
    codec: str = Field(
        "none",
        description="compressor of the feature arrays (none, zstd, blosc-lz4, ...); none: zstd saves ~10% of "
        "float16 features and makes reads 8-19x slower (docs/feature-store.md)",
    )
    allow_other_fingerprints: bool = Field(
        False, description="keep features of other encoder fingerprints beside the new ones in one group"
    )
    threads: int = Field(
        0, ge=0, description="torch threads per worker (0: leave as is); same count -> bit-identical features"
    )
    negatives: bool = Field(
        False,
        description="also store CLAP's embedding of silence and of each row's white noise beside the clap "
        "features (the cached robustness suite, `av2t evaluate --robustness`, reads them)",
    )
    negatives_seed: int = Field(0, description="seed of the negative rows' white noise (--negatives)")

    @model_validator(mode="after")
    def _release_splits(self) -> ExtractConfig:
        """Splits default to the subset's release's; a split the release lacks is refused."""
        own = splits_of(self.subset)
        if "splits" not in self.model_fields_set:
            self.splits = list(own)
        elif bad := [s for s in self.splits if s not in own]:
            raise ValueError(f"splits {bad} are not splits of {self.subset!r}; expected some of {own}")
        return self


class ExtractPreset(BaseModel):
    """A preset's extract.json: rows per forward for each encoder (what fits and keeps the device busy)."""

    model_config = ConfigDict(extra="forbid")
    batch_sizes: dict[str, int] = Field(default_factory=dict, description="encoder name -> rows per forward")


def encoder_batch_size(cfg: ExtractConfig, name: str, default: int = 8) -> int:
    """Rows per forward of one encoder: --batch-size when given, else the preset's, else `default`."""
    if cfg.batch_size is not None:
        return cfg.batch_size
    path = preset_file(cfg.preset, "extract.json")
    sizes = ExtractPreset.model_validate_json(path.read_text()).batch_sizes if path is not None else {}
    return int(sizes.get(name, default))


class OptimConfig(BaseModel):
    """AdamW with a cosine schedule to min_lr (the paper: lr 2e-4, wd 0.01, 40 epochs, batch 8)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(20, ge=1, description="training epochs")
    batch_size: int = Field(8, ge=1, description="rows per optimiser step")
    lr: float = Field(2e-4, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    min_lr: float = Field(1e-7, ge=0, description="learning rate at the end of the cosine schedule")


def preset_optim(preset: str | Path) -> OptimConfig:
    """The preset's training defaults (its train.json, or that of the preset it extends)."""
    path = preset_file(preset, "train.json")
    return OptimConfig.model_validate_json(path.read_text()) if path is not None else OptimConfig()


class TrainConfig(BaseModel):
    """One training run: where the features are, the head, the optimiser, where outputs go."""

    model_config = ConfigDict(extra="forbid")
    store: str = Field(DEFAULT_STORE, description="feature store written by extract-features")
    subset: SubsetName = Field("s4", description="AVSBench subset the head trains on")
    train_split: Split = Field("train", description="split the head trains on")
    val_split: Split = Field("val", description="split scored after every epoch (best.pt = best M_J)")
    preset: str = Field("tiny", description="encoder preset the features were extracted with")
    weights_dir: Path | None = Field(
        None, description="folder of the official checkpoints (default: $AV2T_WEIGHTS, else ./weights)"
    )
    head: HeadConfig | None = Field(None, description="head config (default: the preset's head.json)")
    optim: OptimConfig | None = Field(None, description="optimiser (default: the preset's train.json)")
    seed: int = Field(0, description="seed of the shuffling and of the torch RNG")
    device: str = Field("auto", description="auto (cuda if present), cpu, cuda, cuda:1, ...")
    out: Path = Field(Path("runs/train"), description="folder for best.pt, last.pt, metrics.csv, curves.png")
    resume: bool = Field(True, description="continue from out/last.pt when it is there")
    threads: int = Field(0, ge=0, description="torch threads (0: leave as is)")
    max_steps: int | None = Field(
        None, ge=1, description="stop each epoch after this many steps (benchmarks)"
    )
    stop_after: int | None = Field(
        None, ge=1, description="leave after this many epochs of this invocation (resume later)"
    )
    progress: bool = Field(True, description="show a progress bar and per-epoch lines")
    feed: FeedMode = Field(
        "auto",
        description="how batches are read: resident (each split read once into memory, batches indexed there), "
        "streaming (whole blocks decoded ahead in threads), auto (resident when the split fits the budget)",
    )
    memory_budget_gib: float | None = Field(
        None,
        gt=0,
        description="memory a resident split may take, GiB (default: 80% of free GPU memory on CUDA, else 50% "
        "of available host RAM)",
    )
    shuffle_window: int = Field(
        8,
        ge=1,
        description="blocks (shards) whose rows are shuffled together; the block order is shuffled too",
    )
    reader_threads: int = Field(4, ge=1, description="threads decoding store blocks")
    precision: PrecisionName = Field(
        "auto", description="auto (bf16 on CUDA, fp32 on the CPU), fp32, or bf16 autocast (TF32 on CUDA)"
    )
    val_every: int = Field(1, ge=1, description="validate every this many epochs (and always on the last)")
    val_rows: int | None = Field(
        None,
        ge=1,
        description="validate on a fixed, seeded subset of whole videos holding about this many rows",
    )
    compile: bool = Field(False, description="torch.compile the head's forward (static batch: drop_last)")
    negatives_seed: int = Field(
        0,
        description="seed of the noise rows `av2t extract --negatives` wrote (read by heads with negatives)",
    )
    world_size: int | None = Field(
        None,
        ge=1,
        description="take the global batches of an N-rank data-parallel run in this one process (its "
        "single-process equivalent; default: torchrun's world size, else 1)",
    )
    step_log: bool = Field(False, description="also write steps.csv: every step's loss (the global batch's)")
    collective_timeout_s: float = Field(
        300.0, gt=0, description="data parallel: a rank waiting longer than this on the others fails the run"
    )

    def head_config(self) -> HeadConfig:
        """The effective head."""
        return self.head or head_config(self.preset)

    def optimiser(self) -> OptimConfig:
        """The effective optimiser settings."""
        return self.optim or preset_optim(self.preset)


class EvalConfig(BaseModel):
    """One evaluation: which head, on which data, from where, and what to write."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path = Field(description="a head checkpoint (best.pt) written by the train stage")
    root: Path = Field(description="AVSBench root (clip list, frames for overlays, raw data end to end)")
    subset: SubsetName = Field("s4", description="AVSBench subset to score")
    split: Split = Field("test", description="split to score")
    mode: EvalMode = Field(
        "cached", description="cached: features from the store; end-to-end: raw frames and audio in"
    )
    store: str | None = Field(None, description="feature store (cached mode)")
    device: str = Field("auto", description="auto (cuda if present), cpu, cuda, cuda:1, ...")
    out: Path = Field(Path("runs/eval"), description="folder for report.json, report.md, tables, overlays")
    batch_size: int = Field(8, ge=1, description="rows per forward (cached mode; end to end: one video)")
    vision_bias: bool = Field(False, description="also score with swapped and silent audio")
    robustness: bool = Field(
        False,
        description="also score negative audio (silence, white noise, an off-screen video's audio): FPR per "
        "condition and the combined score (cached mode reads the rows `av2t extract --negatives` wrote)",
    )
    robustness_seed: int = Field(
        0, description="seed of the robustness suite's noise and off-screen partners"
    )
    weights_dir: Path | None = Field(
        None, description="folder of the official checkpoints (default: $AV2T_WEIGHTS, else ./weights)"
    )
    threads: int = Field(0, ge=0, description="torch threads (0: leave as is)")
    save_masks: bool = Field(False, description="write predicted probabilities as PNG under out/masks")
    overlays: int = Field(3, ge=0, description="overlay PNGs of this many best and worst videos")
    allow_other_subset: bool = Field(
        False, description="score a head trained on another subset (refused otherwise; the report warns)"
    )
    progress: bool = Field(True, description="show a progress bar")
    precision: PrecisionName = Field(
        "auto", description="auto (bf16 on CUDA, fp32 on the CPU), fp32, or bf16 autocast (TF32 on CUDA)"
    )
    compare_with: Path | None = Field(
        None,
        description="an earlier report folder (report.json), or a folder of reports (its latest of the same "
        "subset, split and mode): compare the scores with it and write comparison.json",
    )
    tolerance: float = Field(
        0.005, ge=0, description="a metric lower than the previous report's by more than this is a regression"
    )

    @model_validator(mode="after")
    def _store_for_cached(self) -> EvalConfig:
        """Cached mode reads a store."""
        if self.mode == "cached" and not self.store:
            raise ValueError("mode 'cached' needs a store")
        return self


VIDEO_SUFFIXES = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".ts",
    ".flv",
    ".ogv",
    ".3gp",
)
AudioChoice = Literal["own", "own-or-silence", "silence"]


class SegmentConfig(BaseModel):
    """Segment video files with a head: masks, an overlay video and segments.json per video."""

    model_config = ConfigDict(extra="forbid")

    videos: list[Path] = Field(
        min_length=1,
        description="video files, or folders of them ("
        + " ".join(VIDEO_SUFFIXES)
        + "), any codec FFmpeg reads",
    )
    checkpoint: Path = Field(
        description="a head checkpoint (best.pt of train), or a published AV2T-SAM {name}_best.pth (imported "
        "into OUT/official-import first)"
    )
    out: Path = Field(Path("runs/segment"), description="folder for one output folder per video")
    preset: str | None = Field(
        None,
        description="encoder preset: a head checkpoint's own (given: must match it); for a published "
        "checkpoint, paper-official (SAM 2) or paper-official-sam1 by default",
    )
    fps: float | None = Field(
        None,
        gt=0,
        le=120,
        description="output frames per second, each frame with the 1-s audio window centred on it "
        "(default: AVSBench's pairing, 1 frame per second at 15/16 of each second with that second's audio)",
    )
    audio: AudioChoice = Field(
        "own",
        description="own: the video's audio (a file without audio is refused); own-or-silence: silence for "
        "files without audio; silence: every video on silence (recorded in segments.json)",
    )
    audio_from: Path | None = Field(
        None, description="take the audio of this file instead (swap: the same frames with another sound)"
    )
    overlay: bool = Field(
        True, description="write overlay.mp4 (H.264 + AAC, the masks blended on the frames)"
    )
    batch_size: int = Field(8, ge=1, description="frames per forward")
    device: str = Field("auto", description="auto (cuda if present), cpu, cuda, cuda:1, ...")
    precision: PrecisionName = Field(
        "auto", description="auto (bf16 on CUDA, fp32 on the CPU), fp32, or bf16 autocast (TF32 on CUDA)"
    )
    weights_dir: Path | None = Field(
        None, description="folder of the official checkpoints (default: $AV2T_WEIGHTS, else ./weights)"
    )
    threads: int = Field(0, ge=0, description="torch threads (0: leave as is)")
    progress: bool = Field(True, description="show a progress bar over frames")
