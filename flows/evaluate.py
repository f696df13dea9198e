"""The `evaluate` flow, and the nightly that re-evaluates every subset with its newest head and flags regressions.

Two flow functions under one flow name, `evaluate`, and two deployments (flows/serve.py):

- `evaluate` (deployment `evaluate/on-demand`): one subset; run name `evaluate-<subset>-<split>-<mode>`,
  then `...@<head folder>-<head digest>` once the head is known; artifacts `evaluate-<subset>-<split>`
  (markdown) and `...-scores` (table);
- `nightly` (deployment `evaluate/nightly`, scheduled): run name `nightly-<date>T<time>Z`; one `evaluate`
  subflow run per subset, tagged `nightly`, which names its runs and artifacts `nightly-...` instead; its own
  summary artifact `nightly-summary`.

A regression (a compared score worse than the previous report's by more than the tolerance: lower, or higher
for a score where lower is better, as an FPR) ends the run
Failed, named `Regression`, with `on_regression=fail` (the nightly's default), or Completed, named
`Completed with regression`, with `warn` (the on-demand default); the artifacts are published first, and
the run is tagged `regression`. Prefect's UI lists runs by state *name*: its default run filters (a
deployment's Runs tab) leave these two names out (docs/deploy.md, "What you see in the UI").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, tags
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.states import Completed, Failed, State

from flows.params import flow_kwargs, model_params, settings
from flows.prefect_runtime import ChosenFailure, quiet_run_logs
from flows.run_page import label_run, run_param
from flows.settings import EvalFlowSettings, NightlySettings
from pipeline.data.clips import DataError
from pipeline.evaluation.compare import compare_with_reports, newest_checkpoint, score
from pipeline.model.head_checkpoint import read_head
from stages.evaluate import evaluate as run_evaluation

# Reports written before evaluators named their compared scores (`score_rows`) compare these.
NIGHTLY_TAG = "nightly"
DASH = "—"  # an empty cell of an artifact table
REGRESSION, WARNED = "Regression", "Completed with regression"
REGRESSION_TAG = "regression"
NIGHTLY_SUMMARY = "nightly-summary"  # the nightly run's own artifact
DIGITS = 4  # every score an artifact or a log line shows: round(value, DIGITS) of report.json's value
EVALUATE_EXCLUDED = ["out", "progress"]
NIGHTLY_EXCLUDED = ["out", "progress", "checkpoint", "subset", "allow_other_subset"]


# -- names, keys, tags


def artifact_key(kind: str, subset: str, split: str, mode: str) -> str:
    """`evaluate-s4-test` (ad hoc) or `nightly-s4-test` (the nightly); `-cached` for cached scores."""
    return f"{kind}-{subset}-{split}" + ("-cached" if mode == "cached" else "")


def _run_kind() -> str:
    """'nightly' for a run the nightly started (tagged nightly), else 'evaluate'."""
    from prefect.runtime import flow_run

    return "nightly" if NIGHTLY_TAG in (flow_run.tags or []) else "evaluate"


def evaluate_run_name() -> str:
    """`evaluate-s4-test-end-to-end` (or `nightly-...` under the nightly), from the run's parameters."""
    return "-".join(
        str(x)
        for x in (
            _run_kind(),
            run_param(EvalFlowSettings, "subset"),
            run_param(EvalFlowSettings, "split"),
            run_param(EvalFlowSettings, "mode"),
        )
    )


def nightly_run_name() -> str:
    """`nightly-2026-11-05T03:00:00Z`: when the run was scheduled (UTC), so each run has its own name."""
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time or datetime.now(timezone.utc)
    return f"nightly-{when.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"


def head_label(path: Path, digest: str) -> str:
    """A head's name in a run name: its folder and the start of its digest (`train-s4-3f2a9c1`)."""
    return f"{path.parent.name}-{digest[:7]}"


class VideoProgress:
    """The stage's on_video: a progress artifact on the run, and log lines ("encoders built", every 10%)."""

    def __init__(self, what: str, every_s: float = 2.0):
        self.what, self.every_s = what, every_s
        self.log = get_run_logger()
        self.artifact: UUID | None = None
        self.last, self.logged = 0.0, 0

    def __call__(self, done: int, total: int) -> None:
        if done == 0:
            self.log.info(f"encoders built; scoring {videos(total)}")
            self._show(lambda: create_progress_artifact(0.0, description=f"{self.what}: videos scored"))
            self.last = time.monotonic()
            return
        tenth = 10 * done // max(total, 1)
        if total >= 20 and tenth > self.logged:
            self.logged = tenth
            self.log.info(f"{done}/{videos(total)} scored")
        now = time.monotonic()
        if self.artifact is not None and (done >= total or now - self.last >= self.every_s):
            self.last = now
            share = min(100.0, 100.0 * done / max(total, 1))
            self._show(
                lambda: update_progress_artifact(self.artifact, share, f"{self.what}: {done}/{total} videos")
            )

    def _show(self, call: Callable[[], UUID]) -> None:
        """Create or update the artifact; an API error stops the progress display, never the evaluation."""
        try:
            self.artifact = call()
        except Exception as e:
            self.log.warning(f"progress artifact dropped: {e}")
            self.artifact = None


# -- artifacts


def videos(n: Any) -> str:
    """`1 video`, `2 videos`."""
    return f"{n} video" if n == 1 else f"{n} videos"


def shown(x: float | None) -> float | None:
    """A score as every artifact and log line shows it: report.json's value rounded to DIGITS."""
    return None if x is None else round(x, DIGITS)


def _num(x: Any, signed: bool = False) -> str:
    """shown(x) as text (same digits as `shown`: both round the exact value half to even)."""
    if x is None:
        return DASH
    return f"{x:+.{DIGITS}f}" if signed else f"{x:.{DIGITS}f}"


def _short(digest: Any) -> str:
    return f"`{str(digest)[:12]}`" if digest else DASH


def _same(now: Any, before: Any, prev: dict[str, Any] | None) -> str:
    if prev is None:
        return ""
    return " (unchanged)" if now == before else f" (was {_short(before)}: **changed**)"


def regressed(rows: list[dict[str, Any]]) -> str:
    """The regressed scores in words: `M_J 0.6123 -> 0.1234 (-0.4889), M_F ...`."""
    return ", ".join(
        f"{r['metric']} {_num(r['previous'])} -> {_num(r['now'])} ({_num(r['delta'], True)})"
        for r in rows
        if r["regression"]
    )


def regression_message(key: str, rows: list[dict[str, Any]], tolerance: float, change: str) -> str:
    """One line naming every regressed score: `nightly-ms3-test: regression beyond the tolerance 0.005: ...`."""
    return f"{key}: regression beyond the tolerance {tolerance:g}: {regressed(rows)} ({change})"


def summary_markdown(
    key: str,
    report: dict[str, Any],
    rows: list[dict[str, Any]],
    comparison: dict[str, Any],
    prev: dict[str, Any] | None,
    out: Path,
) -> tuple[str, str]:
    """The markdown artifact of one evaluation, and its one-line status."""
    tolerance, model, data = comparison["tolerance"], report["model"], report["data"]
    what = f"{report['subset']} / {report['split']} / {report['mode']}"
    by = {r["metric"]: r for r in rows}
    if prev is None:
        status = f"first report of {what}: nothing to compare with yet"
    elif any(r["regression"] for r in rows):
        status = f"**REGRESSION** beyond the tolerance {tolerance:g}: {regressed(rows)}"
    else:
        status = f"no regression: every compared score within {tolerance:g} of the previous report"
    lines = [
        f"# {key}: {what}",
        "",
        status,
        "",
        "| score | now | previous | delta | |",
        "|---|---:|---:|---:|---|",
    ]
    for row in report.get("score_rows", []):
        before = score(prev, row["key"]) if prev else None
        delta = None if before is None else row["value"] - before
        verdict = "not compared"
        if row["key"] in by:
            verdict = "**regression**" if by[row["key"]]["regression"] else "compared"
        first = "first report" if prev is None else DASH
        lines.append(
            f"| {row['label']} (`{row['key']}`) | {_num(row['value'])} | {first if before is None else _num(before)} "
            f"| {first if delta is None else _num(delta, True)} | {verdict} |"
        )
    if prev is None:
        compared = f"- compared with: nothing, the first report of {what} under `{out.parent}`"
    else:
        compared = (
            f"- compared with: `{Path(comparison['previous']).parent}` "
            f"(created {comparison.get('previous_created') or 'at an unknown time'})"
        )
    prev_model, prev_data = (prev or {}).get("model", {}), (prev or {}).get("data", {})
    lines += [
        "",
        "## Comparison",
        "",
        compared,
        f"- what changed: {comparison['change']}",
        f"- tolerance: {tolerance:g} (a compared score worse than the previous one by more is a regression: "
        "lower, or higher for an FPR)",
        "",
        "## This run",
        "",
        f"- head: `{report['checkpoint']}`, digest {_short(model.get('head_digest'))}"
        + _same(model.get("head_digest"), prev_model.get("head_digest"), prev)
        + f"; preset `{model.get('preset')}`, trained on {model.get('trained_subset')}, best epoch "
        f"{model.get('epoch') or DASH} (numbered as training logged it)",
        f"- data: root `{data.get('root')}`, clips digest {_short(data.get('clips_digest'))}"
        + _same(data.get("clips_digest"), prev_data.get("clips_digest"), prev),
    ]
    if report.get("store_features"):
        lines.append(f"- store `{report.get('store')}`, features {report['store_features']}")
    raw = report.get("M_F_raw_logits_av2t")
    lines += [
        f"- scored: {videos(report.get('videos', DASH))}, {report.get('frames', DASH)} frames, "
        f"on {report.get('device')} in {report.get('seconds')} s",
        f"- M_F on raw logits (AV2T's evaluation, for comparison only): {_num(raw)}",
        f"- M_F batching: {report.get('M_F_batching', DASH)}",
        f"- report folder: `{out}`",
    ]
    lines += [f"- warning: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines) + "\n", status.replace("**", "")


def table_rows(rows: list[dict[str, Any]], first: bool) -> list[dict[str, Any]]:
    """The comparison rows for the table artifact, scores as `shown`; no empty cell ('first report' or '—')."""
    empty = "first report" if first else DASH
    scores = ("now", "previous", "delta")
    return [{k: empty if v is None else shown(v) if k in scores else v for k, v in r.items()} for r in rows]


def publish(
    key: str,
    report: dict[str, Any],
    rows: list[dict[str, Any]],
    comparison: dict[str, Any],
    prev: dict[str, Any] | None,
    out: Path,
) -> None:
    """A markdown artifact (scores, the reference, fingerprints, where the report is) and a table artifact."""
    markdown, status = summary_markdown(key, report, rows, comparison, prev, out)
    create_markdown_artifact(key=key, markdown=markdown, description=status)
    reference = "the first report" if prev is None else f"vs {Path(comparison['previous']).parent.name}"
    create_table_artifact(
        key=f"{key}-scores",
        table=table_rows(rows, prev is None),
        description=f"{report['subset']} / {report['split']} / {report['mode']}: compared scores, {reference}",
    )


# -- the flows


def evaluate_one(s: EvalFlowSettings) -> dict[str, Any]:
    """Score the head, write the report and comparison.json, publish the artifacts; the run's result."""
    log = get_run_logger()
    # Absolute paths: the report, the artifacts and the logs name files a UI user can open from anywhere.
    subset, split, reports, tolerance = s.subset, s.split, Path(s.reports).resolve(), s.tolerance
    s = s.model_copy(update={"root": Path(s.root).resolve()})
    kind = _run_kind()
    key = artifact_key(kind, subset, split, s.mode)
    ck = Path(s.checkpoint).resolve() if s.checkpoint else newest_checkpoint(s.checkpoints, subset)
    head = read_head(ck)
    base = "-".join((kind, subset, split, s.mode))
    label_run(f"{base}@{head_label(ck, head.digest())}", [subset, split, s.mode, Path(head.preset).name])
    log = get_run_logger()  # under the new name
    log.info(f"head {ck} (trained on {head.subset}, preset {head.preset}, digest {head.digest()[:12]})")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    out = reports / f"{stamp}-{subset}-{split}"
    try:
        report = run_evaluation(s.stage(ck, out), on_video=VideoProgress(f"{subset} / {split}"))
    except DataError as e:  # say which parameter the data came from
        raise DataError(f"{e} [flow parameter root={s.root}]") from e
    log.info(f"{videos(report['videos'])} scored ({report['frames']} frames) in {report['seconds']} s")
    comparison, rows, prev = compare_with_reports(report, out, reports, tolerance)
    prev_path, change = comparison["previous"], comparison["change"]
    publish(key, report, rows, comparison, prev, out)
    log.info(f"report written at {out}")
    log.info(
        f"compared with {prev_path or 'nothing (first report of this subset, split and mode)'}: {change}"
    )
    for w in report.get("warnings", []):
        log.warning(w)
    for r in rows:
        was = "no previous report" if r["previous"] is None else f"previous {_num(r['previous'])}"
        delta = "" if r["delta"] is None else f", delta {_num(r['delta'], True)}"
        log.info(f"{r['metric']}: {_num(r['now'])} ({was}{delta})")
    worse = [r["metric"] for r in rows if r["regression"]]
    message = regression_message(key, rows, tolerance, change) if worse else None
    if message:
        log.warning(message)
        label_run(add_tags=[REGRESSION_TAG])
    return {
        "report": str(out / "report.json"),
        "comparison": rows,
        **comparison,
        "key": key,
        "subset": subset,
        "split": split,
        "mode": s.mode,
        "checkpoint": str(ck),
        "regressions": worse,
        "message": message,
    }


def verdict(result: dict[str, Any], on_regression: str) -> dict[str, Any] | State:
    """The run's end: the result as is, or a named state carrying it when a score regressed."""
    if not result["regressions"]:
        return result
    return regression_state(result["message"], result, on_regression)


def regression_state(message: str, result: dict[str, Any], on_regression: str) -> State:
    """Failed named Regression (its data an exception holding the result: a Failed state's data must be
    one), or Completed named 'Completed with regression'."""
    if on_regression == "fail":
        return Failed(name=REGRESSION, message=message, data=ChosenFailure(message, result))
    return Completed(name=WARNED, message=message, data=result)


def run_result(state: State) -> dict[str, Any] | BaseException:
    """A subflow run's result: its dict (also from a Regression's data), else the exception it ended with."""
    result = state.result(raise_on_failure=False)
    return result.result if isinstance(result, ChosenFailure) else result


@flow(name="evaluate", flow_run_name=evaluate_run_name)
@model_params(EvalFlowSettings, exclude=EVALUATE_EXCLUDED)
def evaluate(**params: Any) -> dict[str, Any]:
    """Score a head (default: the newest best.pt under `checkpoints`), compare with the last report, publish."""
    quiet_run_logs()
    s = settings(EvalFlowSettings, params)
    return verdict(evaluate_one(s), s.on_regression)


def nightly_markdown(s: NightlySettings, done: dict[str, dict[str, Any]], problems: dict[str, str]) -> str:
    """The nightly run's own summary: one table row per subset, then each subset's head and report folder."""
    lines = [
        f"# nightly: {', '.join(s.subsets)} / {s.split} / {s.mode}",
        "",
        f"heads under `{s.checkpoints}`, data `{s.root}`, reports `{s.reports}`, tolerance {s.tolerance:g}",
        "",
        "| subset | result | M_J now | previous | delta |",
        "|---|---|---:|---:|---:|",
    ]
    files = ["", "## Files", ""]
    for subset in s.subsets:
        if subset in problems:
            lines.append(f"| {subset} | **failed**: {problems[subset]} | {DASH} | {DASH} | {DASH} |")
            continue
        r = done[subset]
        mj = next((x for x in r["comparison"] if x["metric"] == "M_J"), None) or {}
        state = "**regression** in " + ", ".join(r["regressions"]) if r["regressions"] else "no regression"
        if r["previous"] is None:
            state = "first report"
        lines.append(
            f"| {subset} | {state} | {_num(mj.get('now'))} | "
            f"{'first report' if r['previous'] is None else _num(mj.get('previous'))} | "
            f"{_num(mj.get('delta'), True)} |"
        )
        files.append(f"- {subset}: head `{r['checkpoint']}`, report `{Path(r['report']).parent}`")
    return "\n".join(lines + (files if len(files) > 3 else [])) + "\n"


@flow(name="evaluate", flow_run_name=nightly_run_name)
@model_params(NightlySettings, exclude=NIGHTLY_EXCLUDED)
def nightly(**params: Any) -> dict[str, Any]:
    """Re-evaluate every subset asked with its newest head (one `evaluate` run each); fail on a regression."""
    quiet_run_logs()
    log = get_run_logger()
    s = settings(NightlySettings, params)
    log.info(
        f"nightly of {', '.join(s.subsets)} / {s.split} / {s.mode}: heads under {s.checkpoints}, "
        f"data {s.root}, reports {s.reports}"
    )
    done: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for subset in s.subsets:
        sub = s.subset_settings(subset)
        with tags(NIGHTLY_TAG, subset, s.split, s.mode):
            state = evaluate(**flow_kwargs(evaluate.fn, sub), return_state=True)
        result = run_result(state)
        if isinstance(result, dict):
            done[subset] = result
        else:
            problems[subset] = (state.message or f"{type(result).__name__}: {result}").removeprefix(
                "Flow run encountered an exception: "
            )
            log.error(f"{subset}: not evaluated: {problems[subset]}")
    create_markdown_artifact(
        key=NIGHTLY_SUMMARY,
        markdown=nightly_markdown(s, done, problems),
        description=f"the nightly of {', '.join(s.subsets)} / {s.split} / {s.mode}, per subset",
    )
    summary = {"subsets": done, "problems": problems}
    found = [r["message"] for r in done.values() if r["regressions"]]
    if found:
        label_run(add_tags=[REGRESSION_TAG])
    if problems:
        message = "; ".join([f"{k}: {v}" for k, v in problems.items()] + found)
        return Failed(message=message, data=ChosenFailure(message, summary))
    if found:
        return regression_state("; ".join(found), summary, s.on_regression)
    return summary
