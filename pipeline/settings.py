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
    create_model,
    field_validator,
    model_validator,
)

from pipeline.data.errors import DataError
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


# The flows' own settings: a stage's config plus what only the flow decides (where tasks run, what to compare).
# Their fields are the flows' parameters (flows.params) and the `av2t` options (flows.options).


def _like(model: type[BaseModel], name: str, default: Any, description: str = "") -> Any:
    """A field of `model` with another default (and optionally more words), its description kept."""
    base = model.model_fields[name].description or ""
    return Field(default, description=f"{base} {description}".strip())


class RunnerSettings(BaseModel):
    """Where a flow's tasks run: threads of this process, or a Dask cluster."""

    model_config = ConfigDict(extra="forbid")
    task_runner: RunnerKind = Field("threads", description="threads: here; dask: a Dask cluster")
    workers: int = Field(1, ge=1, description="threads, or processes of the local Dask cluster")
    dask_address: str | None = Field(
        None, description="scheduler address of an existing Dask cluster (default: start a local one)"
    )


class ExtractFlowSettings(RunnerSettings, ExtractConfig):
    """The extract-features flow: what the extract stage needs, and where its shard tasks run."""

    def stage(self) -> ExtractConfig:
        """The extract stage's part."""
        return ExtractConfig.model_validate(self.model_dump(include=set(ExtractConfig.model_fields)))


def _bounds(f: Any) -> dict[str, Any]:
    """A field's numeric bounds (ge, gt, le, lt) as Field keywords."""
    return {k: getattr(m, k) for m in f.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}


# Each optimiser setting as an optional override of the preset's train.json, its constraints (ge=1, gt=0)
# kept: `--epochs 0` is refused when the options are read, not deep inside the flow.
OptimOverrides: type[BaseModel] = create_model(
    "OptimOverrides",
    __config__=ConfigDict(extra="forbid"),
    **{
        name: (
            f.annotation | None,
            Field(None, description=f"{f.description} (default: the preset's train.json)", **_bounds(f)),
        )
        for name, f in OptimConfig.model_fields.items()
    },
)


class TrainFlowSettings(OptimOverrides, TrainConfig):
    """The train-head flow: one head (`head`) or a sweep file of heads, optimiser settings over the preset's."""

    sweep_file: Path | None = Field(
        None,
        description="JSON file {name: HeadConfig fields}: every head trained in one pass (replaces head)",
    )
    nproc: int = Field(
        1,
        ge=1,
        description="data-parallel ranks on this node (torchrun's --nproc-per-node; one GPU each on CUDA, gloo on "
        "the CPU); the preset's batch size is the global batch",
    )
    nnodes: int = Field(1, ge=1, description="nodes of a multi-node run (with --rdzv-endpoint)")
    node_rank: int = Field(0, ge=0, description="this node's rank in a multi-node run")
    rdzv_endpoint: str | None = Field(
        None, description="multi-node: host:port of the rendezvous (node 0's address), as torchrun takes it"
    )
    rdzv_id: str = Field("av2t", description="multi-node: the run's id, the same on every node")
    rdzv_timeout_s: float = Field(60.0, gt=0, description="how long a node waits for the others to join")
    master_port: int | None = Field(
        None, ge=1, le=65535, description="one node: the port rank 0 listens on (default: a free one)"
    )

    @model_validator(mode="before")
    @classmethod
    def _head_over_preset(cls, data: Any) -> Any:
        """A head given as fields changes only those fields of the preset's head (as a sweep entry)."""
        if isinstance(data, dict) and isinstance(data.get("head"), dict):
            preset = data.get("preset", cls.model_fields["preset"].default)
            data = data | {"head": head_config(preset, **data["head"])}
        return data

    def stage(self) -> TrainConfig:
        """The train stage's part, with the effective optimiser."""
        cfg = TrainConfig.model_validate(self.model_dump(include=set(TrainConfig.model_fields)))
        given = {k: v for k in OptimConfig.model_fields if (v := getattr(self, k)) is not None}
        return cfg.model_copy(update={"optim": OptimConfig(**(cfg.optimiser().model_dump() | given))})


class EvalFlowSettings(EvalConfig):
    """The evaluate flow: score a head (default: the newest), compare with the previous report, publish."""

    checkpoint: Path | None = _like(
        EvalConfig, "checkpoint", None, "(default: the newest best.pt under checkpoints)"
    )
    checkpoints: Path = Field(Path("runs"), description="folder searched for the newest best.pt")
    root: Path = _like(EvalConfig, "root", Path("data/synth"))
    mode: EvalMode = _like(EvalConfig, "mode", "end-to-end")
    reports: Path = Field(
        Path("runs/reports"),
        description="each run writes reports/<time>-<subset>-<split>/; the latest earlier one is the reference",
    )
    tolerance: float = Field(
        0.005, ge=0, description="a metric lower than the previous report's by more than this is a regression"
    )
    on_regression: OnRegression = Field(
        "warn",
        description="a regression: fail (the run ends Failed, named Regression) or warn (it ends Completed, "
        "named 'Completed with regression')",
    )

    def stage(self, checkpoint: Path, out: Path) -> EvalConfig:
        """The evaluate stage's part, for this checkpoint and report folder."""
        fields = self.model_dump(include=set(EvalConfig.model_fields))
        return EvalConfig.model_validate(fields | {"checkpoint": checkpoint, "out": out, "progress": False})


class NightlySettings(EvalFlowSettings):
    """The nightly re-evaluation: every subset asked, each with its newest head, compared with its last report."""

    root: Path = Field(
        description="AVSBench root holding every subset re-evaluated (Single-source/, Multi-sources/)"
    )
    checkpoints: Path = Field(
        description="folder searched for each subset's newest best.pt (a head trained on it)"
    )
    reports: Path = Field(
        description="each subset writes reports/<time>-<subset>-<split>/ and compares with the latest earlier "
        "one of the same subset, split and mode (keep the folder for the nightly: any report there is a reference)"
    )
    subsets: list[SubsetName] = Field(
        default_factory=lambda: ["s4", "ms3"],
        min_length=1,
        description="subsets re-evaluated, one after the other, each with its own newest head",
    )
    on_regression: OnRegression = _like(EvalFlowSettings, "on_regression", "fail")

    def subset_settings(self, subset: str) -> EvalFlowSettings:
        """The evaluate flow's settings for one subset (its newest head: checkpoint left unset)."""
        fields = self.model_dump(include=set(EvalFlowSettings.model_fields) - {"checkpoint", "subset"})
        return EvalFlowSettings.model_validate(fields | {"subset": subset})


class DemoSettings(BaseModel):
    """The demo flow: synthetic S4 and MS3 -> extract-features -> train-head -> evaluate, `tiny` preset."""

    model_config = ConfigDict(extra="forbid")
    out: Path = Field(Path("runs/demo"), description="folder for the data, stores, heads and reports")
    s4_videos: int = Field(80, ge=3, description="synthetic S4 videos (S4 trains on frame 1 only, so more)")
    ms3_videos: int = Field(24, ge=3, description="synthetic MS3 videos")
    epochs: int = Field(15, ge=1, description="training epochs per subset")
    seed: int = Field(0, ge=0, description="seed of the synthetic data")
    preset: str = Field(
        "tiny", description="encoder preset of random weights: tiny (SAM 2) or tiny-sam1 (the SAM 1 backbone)"
    )


# The options of the `av2t` commands that run no flow.


def _subset_from_release(data: Any) -> Any:
    """`release` names a release: its subset when it has one and none is given; a given subset must be its."""
    if not isinstance(data, dict):
        return data
    if data.get("release") is None:
        if data.get("subset") is None:
            raise ValueError(f"name the subset (--subset {'|'.join(subsets())}) or a release (--release)")
        return data
    from pipeline.data.releases import release_named

    try:
        release = release_named(str(data["release"]))
    except DataError as e:
        raise ValueError(str(e)) from None
    if data.get("subset") is None:
        if len(release.subsets) != 1:
            raise ValueError(f"release {release.name!r} has subsets {tuple(release.subsets)}: name one")
        return {**data, "subset": next(iter(release.subsets))}
    if data["subset"] not in release.subsets:
        raise ValueError(f"subset {data['subset']!r} is not a subset of release {release.name!r}")
    return data


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthOptions(_Options):
    """av2t synth."""

    out: Path = Field(description="AVSBench root to write")
    subset: SubsetName = Field(None, description="AVSBench subset to write (or name --release)")  # type: ignore[assignment]
    release: str | None = Field(None, description="a release with one subset (ref-avs) instead of --subset")

    _subset_of_release = model_validator(mode="before")(lambda cls, data: _subset_from_release(data))
    videos: int = Field(24, ge=3, description="total videos, split ~70/15/15 (at least one per split)")
    seed: int = Field(0, ge=0, description="seed (the same seed writes byte-identical files)")


class DataCheckOptions(_Options):
    """av2t data check."""

    root: Path = Field(description="AVSBench root to validate")
    subset: SubsetName = Field(None, description="AVSBench subset to validate (or name --release)")  # type: ignore[assignment]
    release: str | None = Field(None, description="a release with one subset (ref-avs) instead of --subset")

    _subset_of_release = model_validator(mode="before")(lambda cls, data: _subset_from_release(data))
    as_json: bool = Field(False, description="print one JSON object")
    workers: int = Field(8, ge=1, description="decode threads")


class CacheInfoOptions(_Options):
    """av2t cache info."""

    store: str = Field(description="feature store path or fsspec URL")
    as_json: bool = Field(False, description="print one JSON object")


class CacheVerifyOptions(_Options):
    """av2t cache verify."""

    store: str = Field(description="feature store path or fsspec URL")
    as_json: bool = Field(False, description="print one JSON object")
    repair: bool = Field(
        False,
        description="delete the damaged blocks' chunks and mark their rows not done, for `av2t extract` to redo",
    )


class CacheExportOptions(_Options):
    """av2t cache export."""

    store: str = Field(description="feature store path or fsspec URL")
    h5: Path = Field(description="HDF5 file to write")
    group: list[str] | None = Field(
        None, description="SUBSET/SPLIT groups to export, e.g. s4/train (default: all)"
    )


class CacheImportOptions(_Options):
    """av2t cache import."""

    store: str = Field(description="feature store path or fsspec URL")
    h5: Path = Field(description="HDF5 file written by `av2t cache export`")
    overwrite: bool = Field(False, description="replace groups that exist")


class ScoreOptions(_Options):
    """av2t score."""

    pred: Path = Field(description="folder of predicted masks <name>/<name>_<k>.png, 8-bit, read as v/255")
    root: Path = Field(description="AVSBench root (the ground truth)")
    subset: SubsetName = Field(description="AVSBench subset to score")
    split: Split = Field("test", description="split to score")
    as_json: bool = Field(False, description="print one JSON object")


class OfficialImportOptions(_Options):
    """av2t official import."""

    checkpoint: Path = Field(description="the reference checkpoint {name}_best.pth (AVTSAM.state_dict())")
    out: Path = Field(description="folder for head.pt and weights/")
    weights_dir: Path | None = Field(
        None,
        description="where the CLIP / MS-CLAP files are, linked into out (default: $AV2T_WEIGHTS, else ./weights)",
    )
    preset: str | None = Field(
        None,
        description="encoder preset of the head (default: paper-official for a checkpoint on SAM 2, "
        "paper-official-sam1 on SAM 1)",
    )


class OfficialExportOptions(_Options):
    """av2t official export."""

    checkpoint: Path = Field(description="a head checkpoint (best.pt) of the train stage")
    out: Path = Field(description="the .pth file to write")
    weights_dir: Path | None = Field(
        None, description="the head's preset weights folder (default: $AV2T_WEIGHTS, else ./weights)"
    )
    device: str = Field("cpu", description="cpu, cuda, cuda:1, ...")


def _nightly(name: str, default: Any, description: str = "") -> Any:
    """A field of the nightly with a default for `av2t serve`, its description kept (or replaced)."""
    return Field(default, description=description or NightlySettings.model_fields[name].description)


class ServeSettings(_Options):
    """av2t serve: the deployments it serves, and where and when the nightly re-evaluates."""

    nightly: bool = Field(
        True, description="serve the scheduled evaluate/nightly (needs --root); --no-nightly: the others only"
    )
    root: Path | None = Field(
        None,
        description="the nightly's AVSBench root, holding every subset in --subsets; required unless "
        "--no-nightly (also the default root of evaluate/on-demand)",
    )
    checkpoints: Path = _nightly(
        "checkpoints",
        Path("runs"),
        "the nightly's folder searched for each subset's newest best.pt (also evaluate/on-demand's)",
    )
    reports: Path = _nightly(
        "reports",
        Path("runs/reports/nightly"),
        "the nightly's reports folder: each subset writes <time>-<subset>-<split>/ and is compared with the "
        "latest earlier one there (created if missing; evaluate/on-demand writes elsewhere)",
    )
    subsets: list[SubsetName] = _nightly("subsets", ["s4", "ms3"])
    split: Split = _nightly("split", "test", "split the nightly scores")
    mode: EvalMode = _nightly("mode", "end-to-end", "cached or end-to-end: how the nightly scores")
    store: str | None = _nightly("store", None, "the nightly's feature store (needed with --mode cached)")
    robustness: bool = _nightly(
        "robustness",
        False,
        "the nightly also scores negative audio: an FPR rise is a regression (cached mode: the store needs "
        "the rows of `av2t extract --negatives`)",
    )
    tolerance: float = Field(
        EvalFlowSettings.model_fields["tolerance"].default,
        ge=0,
        description=EvalFlowSettings.model_fields["tolerance"].description,
    )
    on_regression: OnRegression = _nightly(
        "on_regression",
        "fail",
        "a regression found by the nightly: fail (the run ends Failed, named "
        "Regression) or warn (Completed, named 'Completed with regression')",
    )
    cron: str = Field(
        "0 3 * * *", description="when the nightly runs: a cron line (minute hour day month weekday)"
    )
    timezone: str = Field("UTC", description="the IANA time zone of --cron (e.g. UTC, Europe/Paris)")

    @model_validator(mode="after")
    def _nightly_needs(self) -> ServeSettings:
        """A nightly needs a root and a schedule in a known time zone."""
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if self.nightly and self.root is None:
            raise ValueError(
                "--root is required to serve the nightly (the AVSBench root), or pass --no-nightly"
            )
        if self.nightly and self.mode == "cached" and not self.store:
            raise ValueError("--mode cached needs --store (the feature store the nightly reads)")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"--timezone: unknown time zone {self.timezone!r} (an IANA name such as UTC or Europe/Paris)"
            ) from None
        return self


class SegmentFlowSettings(RunnerSettings):
    """The segment-videos flow: a folder of videos in, one result folder per video out, one task per video."""

    videos: Path = Field(description="folder of video files (or one file)")
    checkpoint: Path = _like(SegmentConfig, "checkpoint", ...)
    out: Path = _like(SegmentConfig, "out", Path("runs/segment"))
    preset: str | None = _like(SegmentConfig, "preset", None)
    fps: float | None = Field(None, gt=0, le=120, description=SegmentConfig.model_fields["fps"].description)
    audio: AudioChoice = _like(SegmentConfig, "audio", "own-or-silence")
    overlay: bool = _like(SegmentConfig, "overlay", True)
    batch_size: int = Field(8, ge=1, description=SegmentConfig.model_fields["batch_size"].description)
    device: str = _like(SegmentConfig, "device", "auto")
    precision: PrecisionName = _like(SegmentConfig, "precision", "auto")
    weights_dir: Path | None = _like(SegmentConfig, "weights_dir", None)

    def stage(self, videos: list[Path] | None = None) -> SegmentConfig:
        """The segment stage's part, for these videos (default: the folder)."""
        fields = self.model_dump(include=set(SegmentConfig.model_fields) - {"videos"})
        return SegmentConfig.model_validate(
            fields | {"videos": videos or [self.videos], "progress": False, "threads": 0}
        )


class AppSettings(_Options):
    """av2t app: a web page to try a head on a video (Gradio, served on 127.0.0.1 only)."""

    checkpoint: Path = _like(SegmentConfig, "checkpoint", ...)
    preset: str | None = _like(SegmentConfig, "preset", None)
    examples: Path | None = Field(None, description="a folder of videos the page offers to pick from")
    port: int = Field(7860, ge=0, le=65535, description="port on 127.0.0.1 (0: the first free one from 7860)")
    device: str = _like(SegmentConfig, "device", "auto")
    weights_dir: Path | None = _like(SegmentConfig, "weights_dir", None)
    out: Path = Field(Path("runs/app"), description="folder for the page's results (one folder per try)")
    max_seconds: float = Field(600, gt=0, description="longest video the page segments, in seconds")
