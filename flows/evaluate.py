"""The `evaluate` flow and the scheduled end-to-end re-evaluation that flags regressions."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import model_params, settings
from pipeline.checkpoints import CheckpointError
from pipeline.files import write_text
from pipeline.model.head_checkpoint import read_head
from pipeline.settings import EvalFlowSettings
from stages.evaluate import evaluate as run_evaluation

# Reports written before evaluators named their compared scores (`score_rows`) compare these.
LEGACY_COMPARED = ("M_J", "M_F", "M_F_batch_free")


def newest_checkpoint(checkpoints: str | Path, subset: str) -> Path:
    """The most recently written best.pt under a folder among the heads trained on `subset`."""
    found = sorted(Path(checkpoints).rglob("best.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    others: dict[str, int] = {}
    for path in found:
        try:
            trained = read_head(path).subset
        except CheckpointError:
            continue  # not a head checkpoint of ours: not a candidate
        if trained == subset:
            return path
        others[str(trained)] = others.get(str(trained), 0) + 1
    held = ", ".join(f"{n} for {k}" for k, n in sorted(others.items())) or "none"
    raise FileNotFoundError(
        f"{checkpoints}: no best.pt of a head trained on {subset} under this folder (heads found: {held}); "
        f"train one (av2t train --subset {subset}) or pass checkpoint"
    )


def report_key(report: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two reports comparable: the same subset, split and mode."""
    return report.get("subset"), report.get("split"), report.get("mode")


def previous_report(reports: Path, now: dict[str, Any], before: Path) -> tuple[Path, dict[str, Any]] | None:
    """The latest report.json under reports/ of the same subset, split and mode, other than the new one."""
    found = sorted(
        (p for p in reports.glob("*/report.json") if p.parent != before), key=lambda p: p.parent.name
    )
    for path in reversed(found):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # an unreadable report is no reference
        if report_key(report) == report_key(now):
            return path, report
    return None


def what_changed(now: dict[str, Any], prev: dict[str, Any] | None) -> str:
    """'new head', 'new data', both, or 'same head, same data' (then only the code or the machine changed)."""
    if prev is None:
        return "no previous report"
    head = now["model"].get("head_digest") != prev.get("model", {}).get("head_digest")
    data = now["data"].get("clips_digest") != prev.get("data", {}).get("clips_digest")
    data = data or now.get("store_features") != prev.get("store_features")
    changes = [w for w, c in (("new head", head), ("new data", data)) if c]
    return " and ".join(changes) or "same head, same data (a change is the code's or the machine's)"


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
    ck = s.checkpoint or newest_checkpoint(s.checkpoints, subset)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    out = Path(reports) / f"{stamp}-{subset}-{split}"
    cfg = s.stage(ck, out)
    report = run_evaluation(cfg)
    found = previous_report(Path(reports), report, out)
    prev_path, prev = found if found else (None, None)
    rows = compare(report, prev, tolerance)
    change = what_changed(report, prev)
    comparison = {"previous": str(prev_path) if prev_path else None, "change": change, "tolerance": tolerance}
    write_text(out / "comparison.json", json.dumps({**comparison, "rows": rows}, indent=2) + "\n")
    publish(report, rows, key=f"evaluate-{subset}-{split}")
    log.info(
        f"compared with {prev_path or 'nothing (first report of this subset, split and mode)'}: {change}"
    )
    for w in report.get("warnings", []):
        log.warning(w)
    for r in rows:
        log.info(f"{r['metric']}: {r['now']} (previous {r['previous']}, delta {r['delta']})")
    if any(r["regression"] for r in rows):
        log.warning(f"regression against the previous report under {reports}")
    return {"report": str(out / "report.json"), "comparison": rows, **comparison}
