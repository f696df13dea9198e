"""The flows' own settings and the `av2t` commands' options: a stage's config (pipeline.settings) plus what only
a flow or the command decides (where tasks run, what to compare, what to serve). Their fields are the flows'
parameters (flows.params) and the `av2t` options (flows.options): one place for every default and help text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from pipeline.data.errors import DataError
from pipeline.data.releases import subsets
from pipeline.model.config import head_config
from pipeline.settings import (
    AudioChoice,
    EvalConfig,
    EvalMode,
    ExtractConfig,
    OnRegression,
    OptimConfig,
    PrecisionName,
    RunnerKind,
    SegmentConfig,
    Split,
    SubsetName,
    TrainConfig,
)

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
