"""The evaluation's files: report.json / report.md built from whatever evaluators ran, CSV tables, overlays, masks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.clips import Clip
from pipeline.data.images import load_frame
from pipeline.evaluation.evaluators import REAL, Evaluation, VideoOutput, fmt
from pipeline.files import inside, write_atomic, write_text
from pipeline.metrics import m_j
from pipeline.scoring import mark_folder, prediction_path, probability_png, write_probability


def clips_digest(videos: list[str]) -> str:
    """sha256 of the clip ids in split order, one per line."""
    return hashlib.sha256("\n".join(videos).encode()).hexdigest()


@dataclass
class MaskWriter:
    """Writes each frame's predicted probability as an 8-bit level (scoring.probability_png) under masks/<name>/<name>_<k>.png."""

    folder: Path

    def __post_init__(self) -> None:
        """Mark the folder as probabilities, so that `av2t score` reads it as such whatever its values."""
        mark_folder(self.folder, "probability")

    def process(self, out: VideoOutput) -> None:
        """Save one video's masks."""
        for k, p in zip(out.frames, torch.sigmoid(out.logits[REAL]), strict=True):
            write_probability(prediction_path(self.folder, out.video, k), p)


@dataclass
class Kept:
    """A video kept for an overlay: its M_J, split position, frames, GT and predicted probability (uint8)."""

    mj: float
    order: int
    video: str
    frames: list[int]
    gt: np.ndarray
    prob: np.ndarray


@dataclass
class Overlays:
    """Keeps the `keep` best and worst videos by M_J (ties: the earlier video first) for overlay PNGs."""

    keep: int = 3
    best: list[Kept] = field(default_factory=list)
    worst: list[Kept] = field(default_factory=list)
    seen: int = 0

    def process(self, out: VideoOutput) -> None:
        """Update the best and worst lists; arrays are copied only for a video that is kept."""
        order, self.seen = self.seen, self.seen + 1
        if not self.keep:
            return
        logits = out.logits[REAL]
        mj = m_j(logits, out.gt)
        cand = None
        for lst, sign in ((self.best, -1.0), (self.worst, 1.0)):
            if len(lst) < self.keep or (sign * mj, order) < (sign * lst[-1].mj, lst[-1].order):
                if cand is None:
                    gt = out.gt.cpu().numpy() != 0
                    prob = probability_png(torch.sigmoid(logits))
                    cand = Kept(mj, order, out.video, list(out.frames), gt, prob)
                lst.append(cand)
                lst.sort(key=lambda k, s=sign: (s * k.mj, k.order))
                del lst[self.keep :]

    def write(self, clips: dict[str, Clip], out: Path) -> list[str]:
        """overlays/best_<k>_<video>.png and worst_<k>_<video>.png; returns their paths relative to out."""
        paths = []
        for tag, kept in (("best", self.best), ("worst", self.worst)):
            for rank, k in enumerate(kept, start=1):
                rel = f"overlays/{tag}_{rank}_{k.video}.png"
                img = overlay(k, clips[k.video], f"{tag} {rank}: {k.video}  M_J {k.mj:.4f}")
                write_atomic(inside(out, rel), lambda f, img=img: img.save(f, format="PNG"))
                paths.append(rel)
        return paths


def overlay(kept: Kept, clip: Clip, title: str) -> Any:
    """One PIL image: a row per scored frame, columns frame | GT | prediction, a title above.

    The prediction column is the probability in grey, tinted red where it is above 0.5 (the scored mask).
    """
    from PIL import Image, ImageDraw

    h, w = kept.gt.shape[1:]
    rows = []
    for j, k in enumerate(kept.frames):
        frame = Image.fromarray(load_frame(clip.frame_paths[k - 1]))
        if frame.size != (w, h):
            frame = frame.resize((w, h), Image.BILINEAR)
        gt = np.repeat((kept.gt[j].astype(np.uint8) * 255)[..., None], 3, axis=2)
        pred = np.repeat(kept.prob[j][..., None], 3, axis=2).astype(np.float32)
        fg = kept.prob[j] > 127  # sigmoid > 0.5: the mask M_J scores, tinted red over the probability
        pred[fg] = 0.5 * pred[fg] + 0.5 * np.array([255, 0, 0], np.float32)
        pred = pred.round().astype(np.uint8)
        rows.append(np.concatenate([np.asarray(frame), gt, pred], axis=1))
    bar = 18
    img = Image.new("RGB", (3 * w, bar + h * len(rows)), "white")
    img.paste(Image.fromarray(np.concatenate(rows, axis=0)), (0, bar))
    ImageDraw.Draw(img).text((4, 3), f"{title}   (frame | GT | prediction)", fill="black")
    return img


def report_markdown(report: dict[str, Any], evaluation: Evaluation) -> str:
    """The short human report: the score table, then each evaluator's notes and sections, then overlays."""
    lines = [
        f"# Evaluation: {report['subset']} {report['split']} ({report['mode']})",
        "",
        f"Checkpoint `{report['checkpoint']}` (preset {report['model']['preset']}), "
        f"{report['videos']} videos, {report['frames']} annotated frames, {report['seconds']:.1f} s.",
        "",
        "| score | value |",
        "|---|---|",
    ]
    lines += [f"| {row.label} | {fmt(row.value)} |" for row in evaluation.rows]
    lines += evaluation.markdown()
    if report["overlays"]:
        lines += ["", "## Overlays", ""]
        lines += [f"- [{Path(p).stem}]({p})" for p in report["overlays"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], evaluation: Evaluation, out: Path) -> None:
    """report.json, report.md, the evaluators' CSV tables and figures, each written atomically."""
    for name, table in evaluation.tables().items():
        write_text(out / name, table.to_csv(index=False))
    for name, png in evaluation.figures().items():
        write_atomic(inside(out, name), lambda f, png=png: f.write(png))
    write_text(out / "report.md", report_markdown(report, evaluation))
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")  # last: its presence means complete
