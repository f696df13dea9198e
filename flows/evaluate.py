"""The `evaluate` flow and the scheduled end-to-end re-evaluation that flags regressions."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import model_params, settings
from pipeline.settings import EvalFlowSettings
from stages.evaluate import evaluate as run_evaluation

# Reports written before evaluators named their compared scores (`score_rows`) compare these.
LEGACY_COMPARED = ("M_J", "M_F", "M_F_batch_free")


def newest_checkpoint(checkpoints: str) -> Path:
    """The most recently written best.pt under a folder (the newest trained head)."""
    found = sorted(Path(checkpoints).rglob("best.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{checkpoints}: no best.pt under this folder; train a head first")
    return found[-1]


def previous_report(reports: Path, before: Path) -> dict[str, Any] | None:
    """The latest report.json under reports/ other than the one just written."""
    found = sorted(
        (p for p in reports.glob("*/report.json") if p.parent != before), key=lambda p: p.parent.name
    )
    return json.loads(found[-1].read_text()) if found else None


def compared_scores(report: dict[str, Any]) -> list[str]:
    """The report keys its evaluators mark for comparison (higher is better)."""
    if "score_rows" not in report:
        return list(LEGACY_COMPARED)
    return [r["key"] for r in report["score_rows"] if r["compare"]]


def score(report: dict[str, Any], key: str) -> float | None:
    """A score by its report key (dotted for nested fields, e.g. vision_bias.M_J_swapped)."""
    value: Any = report
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def compare(now: dict[str, Any], prev: dict[str, Any] | None, tolerance: float) -> list[dict[str, Any]]:
    """One row per compared score: now, before, delta, and whether it regressed by more than the tolerance."""
    rows = []
    for m in compared_scores(now):
        value = score(now, m)
        before = score(prev, m) if prev else None
        delta = None if before is None else value - before
        rows.append(
            {
                "metric": m,
                "now": round(value, 6),
                "previous": None if before is None else round(before, 6),
                "delta": None if delta is None else round(delta, 6),
                "regression": bool(delta is not None and delta < -tolerance),
            }
        )
    return rows


def publish(report: dict[str, Any], rows: list[dict[str, Any]], key: str) -> None:
    """A markdown artifact (summary, regressions) and a table artifact (scores and deltas)."""
    bad = [r["metric"] for r in rows if r["regression"]]
    status = f"**REGRESSION** in {', '.join(bad)}" if bad else "no regression"
    lines = [
        f"# {key}: {report['subset']} / {report['split']} ({report['mode']})",
        "",
        status,
        "",
        "| metric | now | previous | delta |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['metric']} | {r['now']} | {r['previous']} | {r['delta']} |" for r in rows]
    lines += ["", f"M_F batching: {report['M_F_batching']}", f"checkpoint: `{report['checkpoint']}`"]
    create_markdown_artifact(key=key, markdown="\n".join(lines), description=status)
    create_table_artifact(key=f"{key}-scores", table=rows, description="scores vs the previous report")


@flow(name="evaluate")
@model_params(EvalFlowSettings, exclude=["out", "progress"])
def evaluate(**params: Any) -> dict[str, Any]:
    """Score a head (default: the newest best.pt under `checkpoints`), compare with the last report, publish."""
    log = get_run_logger()
    s = settings(EvalFlowSettings, params)
    subset, split, reports, tolerance = s.subset, s.split, s.reports, s.tolerance
    ck = s.checkpoint or newest_checkpoint(s.checkpoints)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    out = Path(reports) / f"{stamp}-{subset}-{split}"
    cfg = s.stage(ck, out)
    report = run_evaluation(cfg)
    rows = compare(report, previous_report(Path(reports), out), tolerance)
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    publish(report, rows, key=f"evaluate-{subset}-{split}")
    for r in rows:
        log.info(f"{r['metric']}: {r['now']} (previous {r['previous']}, delta {r['delta']})")
    if any(r["regression"] for r in rows):
        log.warning(f"regression against the previous report under {reports}")
    return {"report": str(out / "report.json"), "comparison": rows}
