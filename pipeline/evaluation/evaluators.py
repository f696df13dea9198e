"""Evaluators: each score is an object that takes a video's outputs and gives a summary (detectron2-style).

A new metric is one class here with `@register`: training's validation, the evaluate stage, its report
files, the `av2t evaluate` printout and the nightly's comparison all read what the evaluators give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from pipeline.metrics import MetricAccumulator, raw_logit_f

REAL = "real"
M_F_BATCHING = "one video per batch (AV2T test); batch-free M_F also reported"


@dataclass
class VideoOutput:
    """A video's scored frames: 1-based numbers, GT (N, H, W) and logits per audio variant (N, H, W)."""

    video: str
    category: str | None
    frames: list[int]
    gt: torch.Tensor
    logits: dict[str, torch.Tensor]


@dataclass(frozen=True)
class ScoreRow:
    """One line of the score table: report key, label, value, whether the nightly compares it, and which way
    is better (an FPR rise is a regression, as an M_J drop is)."""

    key: str
    label: str
    value: float
    compare: bool = False
    higher_is_better: bool = True

    def to_json(self) -> dict[str, Any]:
        """The row as report.json holds it (`higher_is_better` only when false: readers take true without it)."""
        row = {"key": self.key, "label": self.label, "value": self.value, "compare": self.compare}
        return row if self.higher_is_better else {**row, "higher_is_better": False}


class Evaluator:
    """reset / process(video) / evaluate -> report fields; rows, markdown and tables describe the result."""

    name: ClassVar[str]
    variants: ClassVar[tuple[str, ...]] = (REAL,)  # audio variants the evaluator needs outputs for

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every processed video."""

    def process(self, out: VideoOutput) -> None:
        """Take one video's outputs."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """The summary: fields merged into report.json."""
        raise NotImplementedError

    def rows(self, result: dict[str, Any]) -> list[ScoreRow]:
        """Lines of the report's score table (none by default)."""
        return []

    def markdown(self, result: dict[str, Any]) -> list[str]:
        """Lines of the evaluator's own report.md section (none by default)."""
        return []

    def tables(self) -> dict[str, pd.DataFrame]:
        """CSV tables to write beside the report, by file name (none by default)."""
        return {}

    def figures(self, result: dict[str, Any]) -> dict[str, bytes]:
        """PNG files to write beside the report, by file name (none by default)."""
        return {}


EVALUATORS: dict[str, type[Evaluator]] = {}
DEFAULT_EVALUATORS: list[str] = []


def register(default: bool = True):
    """Class decorator: make an evaluator available by its name (and run it by default)."""

    def add(cls: type[Evaluator]) -> type[Evaluator]:
        EVALUATORS[cls.name] = cls
        if default:
            DEFAULT_EVALUATORS.append(cls.name)
        return cls

    return add


def build_evaluators(names: list[str] | None = None, extra: tuple[str, ...] = ()) -> list[Evaluator]:
    """Fresh evaluators by name (default: every default one) plus `extra` ones, in registration order."""
    names = [*(DEFAULT_EVALUATORS if names is None else names), *extra]
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
        raise ValueError(f"unknown evaluator(s) {unknown}; choose from {sorted(EVALUATORS)}")
    return [EVALUATORS[n]() for n in EVALUATORS if n in names]


def variants_of(evaluators: list[Evaluator]) -> tuple[str, ...]:
    """The audio variants the evaluators need, the real audio first."""
    out = [REAL]
    for e in evaluators:
        out += [v for v in e.variants if v not in out]
    return tuple(out)


def _fmt_note(text: str) -> list[str]:
    return ["", text]


class Accumulating(Evaluator):
    """An evaluator over the official accumulator of the real audio's outputs (per-video or batch-free)."""

    batching: ClassVar[str] = "video"

    def reset(self) -> None:
        self.acc = MetricAccumulator(batching=self.batching)

    def process(self, out: VideoOutput) -> None:
        self.acc.add(out.video, out.logits[REAL], out.gt, frames=out.frames, category=out.category)


@register()
class OfficialScores(Accumulating):
    """M_J and M_F as the official AVSBench test computes them, one video per M_F batch (AV2T's test)."""

    name = "official"

    def evaluate(self) -> dict[str, Any]:
        s = self.acc.summary()
        return {
            "M_J": s["M_J"],
            "M_F": s["M_F"],
            "M_F_batching": M_F_BATCHING,
            "frames": s["frames"],
            "videos": s["videos"],
            "gt_empty_frames": s["gt_empty_frames"],
        }

    def rows(self, result: dict[str, Any]) -> list[ScoreRow]:
        return [ScoreRow("M_J", "M_J", result["M_J"], True), ScoreRow("M_F", "M_F", result["M_F"], True)]

    def markdown(self, result: dict[str, Any]) -> list[str]:
        return _fmt_note(
            f"M_F batching: {result['M_F_batching']}. M_F depends on the batch: AVSBench's test uses 4 videos "
            "per batch; the batch-free M_F averages the F curve over every frame before taking the max."
        )

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"frames.csv": self.acc.frame_table(), "videos.csv": self.acc.video_table()}


@register()
class BatchFreeMF(Accumulating):
    """M_F with the F curve averaged over every non-empty-GT frame of the split before the max."""

    name = "batch_free"
    batching = "all"

    def evaluate(self) -> dict[str, Any]:
        return {"M_F_batch_free": self.acc.summary()["M_F"]}

    def rows(self, result: dict[str, Any]) -> list[ScoreRow]:
        return [ScoreRow("M_F_batch_free", "M_F, batch-free", result["M_F_batch_free"], True)]


@register()
class RawLogitMF(Evaluator):
    """AV2T's own M_F: the official F measure on raw logits (its bug), mean over videos, for comparison."""

    name = "raw_logits"

    def reset(self) -> None:
        self.per_video: list[torch.Tensor] = []  # 0-dim, on the outputs' device until evaluate

    def process(self, out: VideoOutput) -> None:
        self.per_video.append(raw_logit_f(out.logits[REAL], out.gt))

    def evaluate(self) -> dict[str, Any]:
        values = torch.stack(self.per_video).cpu().tolist() if self.per_video else []
        mean = float(np.mean(values)) if values else math.nan
        return {"M_F_raw_logits_av2t": mean}

    def rows(self, result: dict[str, Any]) -> list[ScoreRow]:
        value = result["M_F_raw_logits_av2t"]
        return [ScoreRow("M_F_raw_logits_av2t", "M_F on raw logits (AV2T's code)", value)]

    def markdown(self, result: dict[str, Any]) -> list[str]:
        return _fmt_note(
            "AV2T's code thresholds raw logits instead of probabilities for M_F (reported for comparison only)."
        )


SWAPPED, SILENCE = "swapped", "silence"


@register(default=False)
class VisionBias(Evaluator):
    """M_J with the real, the swapped (next clip's) and the silent audio, and the drops."""

    name = "vision_bias"
    variants = (REAL, SWAPPED, SILENCE)

    def reset(self) -> None:
        self.acc = {v: MetricAccumulator(batching="video") for v in self.variants}

    def process(self, out: VideoOutput) -> None:
        for v, acc in self.acc.items():
            acc.add(out.video, out.logits[v], out.gt, frames=out.frames, category=out.category)

    def evaluate(self) -> dict[str, Any]:
        real, swapped, silence = (self.acc[v].summary()["M_J"] for v in self.variants)
        return {
            "vision_bias": {
                "M_J_real": real,
                "M_J_swapped": swapped,
                "M_J_silence": silence,
                "drop_swapped": real - swapped,
                "drop_silence": real - silence,
                "swapped": "each clip hears the next clip's audio in split order (the last one the first's)",
                "silence": "every frame gets CLAP's embedding of an all-zero one-second segment",
            }
        }

    def rows(self, result: dict[str, Any]) -> list[ScoreRow]:
        vb = result["vision_bias"]
        return [
            ScoreRow("vision_bias.M_J_swapped", "M_J swapped audio", vb["M_J_swapped"]),
            ScoreRow("vision_bias.M_J_silence", "M_J silence", vb["M_J_silence"]),
        ]

    def markdown(self, result: dict[str, Any]) -> list[str]:
        vb = result["vision_bias"]
        return [
            "",
            "## Vision bias",
            "",
            "| audio | M_J | drop |",
            "|---|---|---|",
            f"| real | {fmt(vb['M_J_real'])} | |",
            f"| swapped (next clip's) | {fmt(vb['M_J_swapped'])} | {fmt(vb['drop_swapped'])} |",
            f"| silence | {fmt(vb['M_J_silence'])} | {fmt(vb['drop_silence'])} |",
        ]


@register()
class PerCategory(Accumulating):
    """M_J / M_F per category (MS3 has none: one group), one video per M_F batch."""

    name = "categories"

    def evaluate(self) -> dict[str, Any]:
        return {}

    def markdown(self, result: dict[str, Any]) -> list[str]:
        table = self.acc.category_table()
        named = table.assign(category=table["category"].fillna("(none: MS3)"))
        return ["", "## Per category", "", named.to_markdown(index=False, floatfmt=".4f")]

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"categories.csv": self.acc.category_table()}


def fmt(x: Any) -> str:
    """A score for the markdown report."""
    return f"{x:.4f}" if isinstance(x, float) else str(x)


@dataclass
class Evaluation:
    """What the evaluators gave: each one's result, the merged report fields and the score rows."""

    results: list[tuple[Evaluator, dict[str, Any]]]

    @property
    def fields(self) -> dict[str, Any]:
        """Every evaluator's report fields, merged in registration order."""
        out: dict[str, Any] = {}
        for _, result in self.results:
            out |= result
        return out

    @property
    def rows(self) -> list[ScoreRow]:
        """The score table's lines, in registration order."""
        return [row for e, result in self.results for row in e.rows(result)]

    def markdown(self) -> list[str]:
        """The evaluators' report.md lines."""
        return [line for e, result in self.results for line in e.markdown(result)]

    def tables(self) -> dict[str, pd.DataFrame]:
        """The evaluators' CSV tables by file name."""
        return {name: t for e, _ in self.results for name, t in e.tables().items()}

    def figures(self) -> dict[str, bytes]:
        """The evaluators' PNG files by file name."""
        return {name: png for e, result in self.results for name, png in e.figures(result).items()}


def summarize(evaluators: list[Evaluator]) -> Evaluation:
    """Ask every evaluator for its result."""
    return Evaluation([(e, e.evaluate()) for e in evaluators])
