"""Comparing a report with an earlier one: which earlier report is the reference, each compared score now and
before, the delta, whether it regressed, and what changed (the head, the data). `av2t evaluate --compare-with`
and the evaluate / nightly flows share it; the flows only publish the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.checkpoints import CheckpointError
from pipeline.files import write_text
from pipeline.model.head_checkpoint import read_head

LEGACY_COMPARED = ("M_J", "M_F", "M_F_batch_free")  # reports written before score_rows said what to compare


class NoHead(CheckpointError):
    """No head trained on the subset under the checkpoints folder (an ordinary error: one line, no traceback)."""


def newest_checkpoint(checkpoints: str | Path, subset: str) -> Path:
    """The most recently written best.pt under a folder among the heads trained on `subset` (absolute)."""
    found = sorted(
        Path(checkpoints).resolve().rglob("best.pt"), key=lambda p: p.stat().st_mtime, reverse=True
    )
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
    raise NoHead(
        f"{Path(checkpoints).resolve()}: no best.pt of a head trained on {subset} under this folder (heads found: {held}); "
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
    """The report keys its evaluators mark for comparison."""
    if "score_rows" not in report:
        return list(LEGACY_COMPARED)
    return [r["key"] for r in report["score_rows"] if r["compare"]]


def higher_is_better(report: dict[str, Any]) -> dict[str, bool]:
    """Per score row key, whether a higher value is better (rows written before it said so: all are)."""
    return {r["key"]: r.get("higher_is_better", True) for r in report.get("score_rows", [])}


def score(report: dict[str, Any], key: str) -> float | None:
    """A score by its report key (dotted for nested fields, e.g. vision_bias.M_J_swapped)."""
    value: Any = report
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def compare(now: dict[str, Any], prev: dict[str, Any] | None, tolerance: float) -> list[dict[str, Any]]:
    """One row per compared score: now and before as the reports hold them (unrounded), delta, and whether it
    got worse by more than the tolerance (fell, or rose for a score where lower is better: an FPR)."""
    rows = []
    better = higher_is_better(now)
    for m in compared_scores(now):
        value = score(now, m)
        before = score(prev, m) if prev else None
        delta = None if before is None else value - before
        worse = None if delta is None else (-delta if better.get(m, True) else delta)
        rows.append(
            {
                "metric": m,
                "now": value,
                "previous": before,
                "delta": delta,
                "higher_is_better": better.get(m, True),
                "regression": bool(worse is not None and worse > tolerance),
            }
        )
    return rows


def reference_report(reference: Path, now: dict[str, Any], out: Path) -> tuple[Path, dict[str, Any]] | None:
    """The report to compare with: reference/report.json when it is one report's folder, else the latest
    report of the same subset, split and mode in the folder of reports `reference` (other than out's)."""
    one = reference / "report.json"
    if one.is_file() and reference.resolve() != out.resolve():
        try:
            return one, json.loads(one.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(
                f"{one}: unreadable report ({e}); compare with another report folder"
            ) from e
    return previous_report(reference, now, out)


def compare_with_reports(
    report: dict[str, Any], out: Path, reference: Path, tolerance: float
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """Compare a new report (written in out) with its reference; write out/comparison.json.

    Returns the comparison's header (previous report, when it was made, what changed, the tolerance), its
    rows (compare) and the previous report itself (None for a first report).
    """
    found = reference_report(Path(reference), report, Path(out))
    prev_path, prev = found if found else (None, None)
    rows = compare(report, prev, tolerance)
    header = {
        "previous": str(prev_path) if prev_path else None,
        "previous_created": prev.get("created") if prev else None,
        "change": what_changed(report, prev),
        "tolerance": tolerance,
    }
    write_text(Path(out) / "comparison.json", json.dumps({**header, "rows": rows}, indent=2) + "\n")
    return header, rows, prev
