"""The negative-audio robustness suite (AVSBench-Robust): the head on silence, white noise and off-screen audio.

Every scored frame is also fed three negative audios whose correct mask is empty (pipeline.negatives): FPR per
condition is the mean over those frames of the fraction of pixels predicted foreground; the combined score
weighs it against M_J on the positive (real) audio. The sources (cached rows, or end to end) give the logits
of each condition as one more audio variant, as they do for the vision-bias variants.
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from pipeline.evaluation.evaluators import REAL, SILENCE, Evaluator, ScoreRow, VideoOutput, fmt, register
from pipeline.metrics import MetricAccumulator
from pipeline.negatives import (
    COMBINED_FORMULA,
    CONDITIONS,
    category_group,
    combined_score,
    foreground_fraction,
)

# Audio variants of the negative conditions: with SILENCE (the vision bias's too), pipeline.negatives.CONDITIONS.
NOISE, OFFSCREEN = "noise", "offscreen"
PLOT = "robustness.png"
CATEGORY_TABLE = "robustness_categories.csv"
PARTNERS_SHOWN = 20  # partner pairs listed in report.md (report.json holds them all)
HOW_MADE = {
    SILENCE: "CLAP's embedding of an all-zero one-second segment (the same for every frame)",
    NOISE: "CLAP's embedding of uniform white noise in [-1, 1) at full scale, one segment per video and "
    "frame, seeded by (seed, video, frame)",
    OFFSCREEN: "the same frame's audio of the partner video (another semantic group, drawn for the seed)",
}
FPR_DEFINITION = (
    "per negative frame, the fraction of pixels with float32 sigmoid(logit) > 0.5 (strictly: 0.5 is "
    "background), averaged over the annotated frames of the condition (AVSBench-Robust's calculate_FPR)"
)


@register(default=False)
class Robustness(Evaluator):
    """M_J on the real audio, FPR on each negative condition, and the combined score, overall and per category.

    `seed` and `partners` (video -> the video whose audio plays off-screen for it) are set by whoever makes the
    logits, so the report records the pairs that were used.
    """

    name = "robustness"
    variants = (REAL, *CONDITIONS)

    def __init__(self, seed: int = 0, partners: dict[str, str] | None = None) -> None:
        self.seed, self.partners = seed, dict(partners or {})
        super().__init__()

    def reset(self) -> None:
        self.acc = MetricAccumulator(batching="video")
        self.negatives: list[tuple[str, str | None, int, str, float]] = []
        self.categories: dict[str, str | None] = {}

    def process(self, out: VideoOutput) -> None:
        self.acc.add(out.video, out.logits[REAL], out.gt, frames=out.frames, category=out.category)
        self.categories[out.video] = out.category
        for c in CONDITIONS:
            fractions = foreground_fraction(out.logits[c].float().cpu().numpy())
            self.negatives += [
                (out.video, out.category, int(k), c, float(f))
                for k, f in zip(out.frames, fractions, strict=True)
            ]

    def frame_table(self) -> pd.DataFrame:
        """One row per negative frame: video, category, frame, condition, foreground fraction."""
        cols = ["video", "category", "frame", "condition", "foreground"]
        return pd.DataFrame(self.negatives, columns=cols)

    def evaluate(self) -> dict[str, Any]:
        summary = self.acc.summary()
        mj = float(summary["M_J"])
        frames = self.frame_table()
        by = frames.groupby("condition")["foreground"]
        fpr = {c: float(by.mean()[c]) for c in CONDITIONS}
        fpr_all = float(frames["foreground"].mean())
        combined = {c: combined_score(mj, fpr[c]) for c in CONDITIONS}
        partners = [
            {
                "video": v,
                "category": self.categories.get(v),
                "partner": p,
                "partner_category": self.categories.get(p),
            }
            for v, p in self.partners.items()
        ]
        return {
            "robustness": {
                "M_J": mj,
                "M_F": float(summary["M_F"]),
                "FPR": fpr,
                "FPR_all": fpr_all,
                "combined": {**combined, "overall": combined_score(mj, fpr_all)},
                "COMBINED_FORMULA": COMBINED_FORMULA,
                "FPR_definition": FPR_DEFINITION,
                "seed": self.seed,
                "negative_frames": {c: int(by.size()[c]) for c in CONDITIONS},
                "conditions": dict(HOW_MADE),
                "partners": partners,
                "categories": CATEGORY_TABLE,
                "plot": PLOT,
            }
        }

    def rows(self, result: dict[str, Any]) -> list[ScoreRow]:
        r = result["robustness"]
        rows = [
            ScoreRow(f"robustness.FPR.{c}", f"FPR {c}", r["FPR"][c], True, higher_is_better=False)
            for c in CONDITIONS
        ]
        return [
            *rows,
            ScoreRow(
                "robustness.FPR_all", "FPR, all negative audio", r["FPR_all"], True, higher_is_better=False
            ),
            ScoreRow(
                "robustness.combined.overall", "combined (M_J, 1 - FPR)", r["combined"]["overall"], True
            ),
        ]

    def markdown(self, result: dict[str, Any]) -> list[str]:
        r = result["robustness"]
        lines = [
            "",
            "## Robustness (negative audio)",
            "",
            f"Positives: M_J {fmt(r['M_J'])}, M_F {fmt(r['M_F'])}. FPR: {r['FPR_definition']}.",
            f"Combined: {r['COMBINED_FORMULA']}. Seed {r['seed']}.",
            "",
            "| condition | how it is made | frames | FPR | combined |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {c} | {r['conditions'][c]} | {r['negative_frames'][c]} | {fmt(r['FPR'][c])} "
            f"| {fmt(r['combined'][c])} |"
            for c in CONDITIONS
        ]
        total = sum(r["negative_frames"].values())
        lines += [
            f"| all | | {total} | {fmt(r['FPR_all'])} | {fmt(r['combined']['overall'])} |",
            "",
            f"![positives vs negative audio]({PLOT})",
            "",
            f"Per category: {CATEGORY_TABLE}.",
            "",
            "Off-screen partners (video <- the video whose audio it hears):",
            "",
        ]
        shown = r["partners"][:PARTNERS_SHOWN]
        lines += [
            f"- {p['video']} ({p['category']}) <- {p['partner']} ({p['partner_category']})" for p in shown
        ]
        if len(r["partners"]) > len(shown):
            lines.append(f"- ... and {len(r['partners']) - len(shown)} more (report.json lists them all)")
        return lines

    def tables(self) -> dict[str, pd.DataFrame]:
        return {CATEGORY_TABLE: self.category_table()}

    def category_table(self) -> pd.DataFrame:
        """Per category: its group, videos, frames, M_J, FPR per condition and overall, combined likewise."""
        table = self.acc.category_table()
        frames = self.frame_table()
        key = frames["category"].fillna("")
        fpr = frames.assign(key=key).pivot_table(
            index="key", columns="condition", values="foreground", aggfunc="mean"
        )
        overall = frames.assign(key=key).groupby("key")["foreground"].mean()
        out = table[["category", "videos", "frames", "M_J"]].copy()
        out.insert(1, "group", [category_group(c or None) for c in out["category"]])
        keys = out["category"].fillna("")
        for c in CONDITIONS:
            out[f"FPR_{c}"] = [float(fpr.loc[k, c]) for k in keys]
        out["FPR"] = [float(overall[k]) for k in keys]
        for c in [*CONDITIONS, None]:
            col = f"FPR_{c}" if c else "FPR"
            out[f"combined_{c}" if c else "combined"] = [
                combined_score(m, f) for m, f in zip(out["M_J"], out[col], strict=True)
            ]
        return out

    def figures(self, result: dict[str, Any]) -> dict[str, bytes]:
        return {PLOT: robustness_plot(result["robustness"], self.frame_table())}


def robustness_plot(r: dict[str, Any], frames: pd.DataFrame) -> bytes:
    """PNG: bars of M_J (positives), FPR and combined per condition; per-frame foreground fractions beside."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    labels = ["positives\nM_J", *[f"{c}\nFPR" for c in CONDITIONS], "all\nFPR"]
    values = [r["M_J"], *[r["FPR"][c] for c in CONDITIONS], r["FPR_all"]]
    colors = ["tab:green", *["tab:red"] * len(CONDITIONS), "tab:purple"]
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.plot(
        labels[1:],
        [*[r["combined"][c] for c in CONDITIONS], r["combined"]["overall"]],
        "ko--",
        label="combined",
    )
    ax.set_ylim(0, 1.1)
    ax.set_title("positives vs negative audio")
    ax.legend(loc="upper right", fontsize=8)
    data = [frames.loc[frames["condition"] == c, "foreground"].to_numpy() for c in CONDITIONS]
    bx.boxplot(data, tick_labels=list(CONDITIONS))
    bx.set_ylim(-0.05, 1.05)
    bx.set_title("foreground fraction per negative frame")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
