"""The evaluate deployments on a real Prefect server, as `av2t serve` serves them.

`evaluate/on-demand`: report, artifacts, comparison with the previous report. `evaluate/nightly`: run with no
parameters (as its schedule runs it) on the served tree, every subset with its own head, like compared with
like; a worse head ends the next run Failed, named Regression. States, names, tags and artifacts are read
back through the Prefect API.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from prefect_server import deployment_run
from synthetic_run import synthetic_store, train_head

from flows.cli import main as cli

pytestmark = pytest.mark.slow
ON_DEMAND, NIGHTLY = "evaluate/on-demand", "evaluate/nightly"


def _prefect(env: dict, *args: str) -> str:
    prefect = str(Path(sys.executable).parent / "prefect")
    wide = {**env, "COLUMNS": "400"}  # rich truncates table cells to the terminal width
    out = subprocess.run([prefect, *args], env=wide, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _api(env: dict, fn) -> Any:
    """await fn(client) with a client of the test server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go():
        async with get_client() as client:
            return await fn(client)

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return asyncio.run(go())


def _runs(env: dict, **filters: Any) -> list:
    """Flow runs (oldest first) matching FlowRunFilter fields, e.g. parent_flow_run_id=[id]."""
    from prefect.client.schemas import filters as f

    kinds = {"id": f.FlowRunFilterId, "parent_flow_run_id": f.FlowRunFilterParentFlowRunId}
    flt = f.FlowRunFilter(**{k: kinds[k](any_=v) for k, v in filters.items()})
    runs = _api(env, lambda c: c.read_flow_runs(flow_run_filter=flt))
    return sorted(runs, key=lambda r: r.start_time or r.expected_start_time)


def _deployment_runs(env: dict, name: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    flt = DeploymentFilter(name=DeploymentFilterName(any_=[name.split("/")[1]]))
    runs = _api(env, lambda c: c.read_flow_runs(deployment_filter=flt))
    return sorted(runs, key=lambda r: r.start_time or r.expected_start_time)


def _artifacts(env: dict, runs: list) -> list:
    """The artifacts of these flow runs (markdown, table, progress), table data parsed."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs]))
    found = _api(env, lambda c: c.read_artifacts(artifact_filter=flt))
    for a in found:
        if a.type == "table" and isinstance(a.data, str):
            a.data = json.loads(a.data)
    return found


def _logs(env: dict, run, want: str, timeout: float = 20) -> str:
    """The run's log messages, once one holds `want` (the run's process ships them just after its end)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
    deadline = time.time() + timeout
    while True:
        text = "\n".join(x.message for x in _api(env, lambda c: c.read_logs(log_filter=flt, limit=200)))
        if want in text or time.time() > deadline:
            return text
        time.sleep(1)


def _log_records(env: dict, runs: list, want: str, timeout: float = 20) -> list:
    """The runs' log records, once the first run's hold `want` (its process ships them after its end)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs]))
    deadline = time.time() + timeout
    while True:
        records = _api(env, lambda c: c.read_logs(log_filter=flt, limit=200))
        if any(want in x.message and x.flow_run_id == runs[0].id for x in records) or time.time() > deadline:
            return records
        time.sleep(1)


def _run_as_scheduled(env: dict, deployment_id, timeout: float = 600):
    """A run of the deployment with no parameters (what its schedule creates), once it has ended."""
    run = _api(env, lambda c: c.create_flow_run_from_deployment(deployment_id))
    deadline = time.time() + timeout
    while not run.state or not run.state.is_final():
        assert time.time() < deadline, f"{run.name} still {run.state.type if run.state else None}"
        time.sleep(1)
        run = _api(env, lambda c, i=run.id: c.read_flow_run(i))
    return run


def test_serve_options_are_checked_in_one_line(tmp_path, capsys):
    """`av2t serve` refuses a nightly it could not run, naming the option, before it needs a server."""
    (tmp_path / "file").write_text("not a folder")
    cases = [
        ([], "--root is required to serve the nightly"),
        (["--root", str(tmp_path / "nowhere")], f"--root {tmp_path / 'nowhere'}: no such folder"),
        (["--root", str(tmp_path), "--checkpoints", str(tmp_path / "file")], "--checkpoints"),
        (["--root", str(tmp_path), "--checkpoints", str(tmp_path), "--timezone", "Mars/Base"], "--timezone"),
        (
            ["--root", str(tmp_path), "--checkpoints", str(tmp_path), "--cron", "at three"],
            "--cron 'at three'",
        ),
    ]
    for argv, want in cases:
        assert cli(["serve", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("av2t: error: ") and want in err[0], (argv, err)


def test_prefect_yaml_has_the_served_deployments(tmp_path):
    """prefect.yaml (work pools) declares what `av2t serve` serves: names, entrypoints, tags, the schedule."""
    import yaml

    from flows.serve import deployments
    from flows.settings import ServeSettings

    served = {
        d.name: d for d in deployments(ServeSettings(root=tmp_path, checkpoints=tmp_path, reports=tmp_path))
    }
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    declared = {d["name"]: d for d in spec["deployments"]}
    assert set(declared) == set(served) == {"extract", "train", "on-demand", "nightly", "segment"}
    for name, d in declared.items():
        assert served[name].entrypoint.endswith(d["entrypoint"]) and set(d["tags"]) == set(served[name].tags)
        assert d["work_pool"]["name"] == "{{ $AV2T_WORK_POOL }}"
    nightly, (schedule,) = declared["nightly"], served["nightly"].schedules
    assert nightly["schedules"][0]["cron"] == schedule.schedule.cron == "0 3 * * *"
    assert nightly["schedules"][0]["timezone"] == schedule.schedule.timezone == "UTC"
    assert set(nightly["parameters"]) == set(served["nightly"].parameters) - {"store"}
    assert {k: v for k, v in nightly["parameters"].items() if not str(v).startswith("{{")} == {
        k: v
        for k, v in served["nightly"].parameters.items()
        if k in nightly["parameters"] and k not in ("root", "checkpoints", "reports")
    }
    assert "every day at 03:00 UTC" in nightly["description"] and "Regression" in nightly["description"]


def test_on_demand_deployment_reports_publishes_and_compares(tmp_path, prefect_env, s4_run):
    root = s4_run["root"]
    reports = tmp_path / "reports"
    params = {
        "checkpoints": str(s4_run["checkpoint"].parents[1]),
        "root": str(root),
        "subset": "s4",
        "reports": str(reports),
        "device": "cpu",
    }
    env = prefect_env
    for _ in range(2):  # the second run compares with the first
        out = deployment_run(env, ON_DEMAND, params)
        assert out.returncode == 0 and "Completed" in out.stdout + out.stderr, (
            out.stdout[-3000:] + out.stderr[-2000:]
        )
    inspect = _prefect(env, "deployment", "inspect", NIGHTLY)
    assert "0 3 * * *" in inspect and "end-to-end" in inspect and "UTC" in inspect
    artifacts = _prefect(env, "artifact", "ls")
    assert "evaluate-s4-test" in artifacts and "evaluate-s4-test-scores" in artifacts

    runs = sorted(p.parent for p in reports.glob("*/report.json"))
    assert len(runs) == 2
    report = json.loads((runs[-1] / "report.json").read_text())
    assert report["mode"] == "end-to-end" and report["split"] == "test"
    assert report["checkpoint"].endswith("best.pt")
    comparison = json.loads((runs[-1] / "comparison.json").read_text())
    rows = comparison["rows"]
    by = {r["metric"]: r for r in rows}
    assert comparison["previous"] == str(runs[0] / "report.json")
    assert comparison["change"].startswith("same head, same data")
    # The same checkpoint on the same data: the previous report is found and nothing moved.
    assert by["M_J"]["previous"] == pytest.approx(report["M_J"], abs=1e-6)
    assert by["M_J"]["delta"] == pytest.approx(0, abs=1e-6) and not any(r["regression"] for r in rows)

    # The runs: named for what they scored, tagged, Completed; their artifacts say what was compared.
    first, second = _deployment_runs(env, ON_DEMAND)
    digest = report["model"]["head_digest"]
    for run in (first, second):
        assert run.state.type.value == "COMPLETED" and run.state.name == "Completed"
        assert run.name == f"evaluate-s4-test-end-to-end@head-{digest[:7]}"
        assert {"evaluate", "on-demand", "s4", "test", "end-to-end", "tiny"} <= set(run.tags)
    (md,) = [a for a in _artifacts(env, [first]) if a.key == "evaluate-s4-test"]
    assert "first report" in md.data and "None" not in md.data
    found = _artifacts(env, [second])
    (md,) = [a for a in found if a.key == "evaluate-s4-test"]
    (table,) = [a for a in found if a.key == "evaluate-s4-test-scores"]
    (progress,) = [a for a in found if a.type == "progress"]
    assert "None" not in md.data and "no regression" in md.description
    for text in (
        f"compared with: `{runs[0]}` (created {json.loads((runs[0] / 'report.json').read_text())['created']})",
        "what changed: same head, same data",
        f"digest `{digest[:12]}` (unchanged)",
        f"clips digest `{report['data']['clips_digest'][:12]}` (unchanged)",
        "tolerance: 0.005",
        f"scored: {report['videos']} videos, {report['frames']} frames",
        f"M_F on raw logits (AV2T's evaluation, for comparison only): {report['M_F_raw_logits_av2t']:.4f}",
        f"report folder: `{runs[1]}`",
    ):
        assert text in md.data, (text, md.data)
    for row in report["score_rows"]:  # every score, compared or not
        cells = f"(`{row['key']}`) | {row['value']:.4f} | {row['value']:.4f} | "
        assert cells + "+0.0000 |" in md.data or cells + "-0.0000 |" in md.data, (row, md.data)
    assert [r["metric"] for r in table.data] == [r["metric"] for r in rows]
    assert all(v is not None for r in table.data for v in r.values())
    assert float(progress.data) == 100.0
    logs = _logs(env, second, "report written at")
    for text in ("encoders built; scoring 2 videos", "2 videos scored", f"report written at {runs[1]}"):
        assert text in logs, (text, logs)


def _worse(head: Path, out: Path) -> Path:
    """The same head with its mask logits negated (it segments the inverse), saved as a newer best.pt."""
    ck = torch.load(head, map_location="cpu", weights_only=False)
    ck["trainable"] = {
        k: -v if k.startswith("sam_mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in k else v
        for k, v in ck["trainable"].items()
    }
    out.parent.mkdir(parents=True)
    torch.save(ck, out)
    later = head.stat().st_mtime + 60
    os.utime(out, (later, later))  # the newest, whatever the clock's resolution
    return out


def test_nightly_runs_as_deployed_and_fails_on_a_regression(tmp_path, prefect_env, s4_run):
    """The nightly with no parameters on the served tree: S4 and MS3 heads under one checkpoints folder."""
    env = prefect_env
    dep = _api(env, lambda c: c.read_deployment_by_name(NIGHTLY))
    p = dep.parameters
    root, checkpoints, reports = Path(p["root"]), Path(p["checkpoints"]), Path(p["reports"])
    assert all(x.is_absolute() and x.is_dir() for x in (root, checkpoints, reports))
    assert p["subsets"] == ["s4", "ms3"] and p["split"] == "test" and p["mode"] == "end-to-end"
    assert p["on_regression"] == "fail" and p["tolerance"] == 0.005
    (schedule,) = dep.schedules
    assert schedule.schedule.cron == "0 3 * * *" and schedule.schedule.timezone == "UTC"
    assert "every day at 03:00 UTC" in dep.description and "Regression" in dep.description
    assert {"evaluate", "nightly", "end-to-end", "s4", "ms3"} <= set(dep.tags)

    # The served tree: S4 (the session's data and head) and MS3 under one root, their heads under one folder.
    shutil.copytree(s4_run["root"] / "Single-source", root / "Single-source")
    (checkpoints / "s4").mkdir()
    s4_head = Path(shutil.copy2(s4_run["checkpoint"], checkpoints / "s4" / "best.pt"))  # keeps its older time
    ms3 = synthetic_store(tmp_path / "ms3", subset="ms3", videos=6, seed=2)
    shutil.copytree(ms3["root"] / "Multi-sources", root / "Multi-sources")
    ms3_head = train_head(ms3, checkpoints / "ms3")

    def reports_of(subset: str) -> list[tuple[dict, dict]]:
        found = sorted(p.parent for p in reports.glob(f"*-{subset}-test/report.json"))
        return [
            tuple(json.loads((d / f).read_text()) for f in ("report.json", "comparison.json")) for d in found
        ]

    # 1. Every subset scored with its own head; the first reports: Completed.
    run = _run_as_scheduled(env, dep.id)
    kids = {r.parameters["subset"]: r for r in _runs(env, parent_flow_run_id=[run.id])}
    assert run.state.type.value == "COMPLETED", (run.state.name, run.state.message, run.state)
    assert run.parameters["root"] == str(root) and run.name.startswith("nightly-20")
    first_name = run.name
    assert {"nightly", "s4", "ms3"} <= set(run.tags) and set(kids) == {"s4", "ms3"}
    (s4a, s4c), (m, mc) = reports_of("s4")[0], reports_of("ms3")[0]
    assert s4a["checkpoint"] == str(s4_head) and m["checkpoint"] == str(ms3_head)
    assert m["model"]["trained_subset"] == "ms3" and s4a["warnings"] == m["warnings"] == []
    assert (
        s4c["previous"] is None and mc["previous"] is None and all(r["previous"] is None for r in mc["rows"])
    )
    for subset, kid in kids.items():
        head = (s4a if subset == "s4" else m)["model"]["head_digest"][:7]
        assert kid.name == f"nightly-{subset}-test-end-to-end@{subset}-{head}"
        assert {"nightly", subset, "test", "end-to-end", "tiny"} <= set(
            kid.tags
        ) and "on-demand" not in kid.tags
        assert kid.state.type.value == "COMPLETED"
    arts = {a.key: a for a in _artifacts(env, list(kids.values())) if a.key}
    assert set(arts) == {f"nightly-{s}-test{x}" for s in ("s4", "ms3") for x in ("", "-scores")}
    md = arts["nightly-ms3-test"].data
    assert "first report of ms3 / test / end-to-end" in md and "None" not in md
    assert all(r["previous"] == r["delta"] == "first report" for r in arts["nightly-ms3-test-scores"].data)

    # 2. A worse MS3 head, newer: the next run fails, named Regression, and says where.
    worse = _worse(ms3_head, checkpoints / "ms3-worse" / "best.pt")
    run = _run_as_scheduled(env, dep.id)
    kids = {r.parameters["subset"]: r for r in _runs(env, parent_flow_run_id=[run.id])}
    assert run.state.type.value == "FAILED" and run.state.name == "Regression", run.state
    assert "nightly-ms3-test: regression beyond the tolerance 0.005: M_J" in run.state.message
    assert "nightly-s4" not in run.state.message
    assert run.name != first_name and "regression" in run.tags  # one name per run; findable by tag
    # Its logs (the subflows' too, through the API): the regression as a WARNING, no ERROR, no traceback.
    records = _log_records(env, [run, *kids.values()], "Finished in state Regression")
    assert any(x.level == 30 and "regression beyond the tolerance" in x.message for x in records)
    bad = [x.message for x in records if x.level >= 40 or "Traceback" in x.message]
    assert bad == [], bad
    assert kids["ms3"].state.type.value == "FAILED" and kids["ms3"].state.name == "Regression"
    assert kids["s4"].state.type.value == "COMPLETED"
    # like with like: S4 against the first run's S4 report (not the newer MS3 one), unchanged; MS3 a new head
    (s4b, s4c2), (m2, mc2) = reports_of("s4")[1], reports_of("ms3")[1]
    assert s4b["checkpoint"] == str(s4_head) and s4c2["previous"].endswith("-s4-test/report.json")
    assert json.loads(Path(s4c2["previous"]).read_text())["created"] == s4a["created"]
    assert s4c2["change"].startswith("same head, same data")
    assert all(r["delta"] == pytest.approx(0, abs=1e-6) and not r["regression"] for r in s4c2["rows"])
    assert m2["checkpoint"] == str(worse) and mc2["change"] == "new head"
    assert mc2["previous"].endswith("-ms3-test/report.json")
    assert {r["metric"]: r for r in mc2["rows"]}["M_J"]["regression"]
    arts = {a.key: a for a in _artifacts(env, [kids["ms3"]]) if a.key}
    md = arts["nightly-ms3-test"]
    assert "REGRESSION" in md.description and "**REGRESSION** beyond the tolerance 0.005: M_J" in md.data
    assert f"compared with: `{Path(mc2['previous']).parent}`" in md.data and "**changed**" in md.data
    assert "None" not in md.data


def test_descriptions_show_their_placeholders(tmp_path):
    """The UI renders descriptions as markdown: a `<subset>` outside a code span would vanish as a tag."""
    import yaml

    from flows.serve import deployments
    from flows.settings import ServeSettings

    served = deployments(ServeSettings(root=tmp_path, checkpoints=tmp_path, reports=tmp_path))
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    texts = [d.description for d in served] + [d["description"] for d in spec["deployments"]]
    for text in texts:
        assert re.search(r"<\w+>|--param \w+=", text), text  # each names a placeholder or an example
        outside = re.sub(r"`[^`]*`", "", text)
        assert "<" not in outside and ">" not in outside, text
    assert all(Path(d.entrypoint.split(":")[0]).is_absolute() for d in served)


def test_run_logs_keep_no_engine_traceback():
    """QuietRunLogs: a chosen Failed state's engine re-raise is dropped, an ordinary error keeps one line
    without its traceback (and its engine re-raise is dropped), a bug keeps its traceback once."""
    import logging

    from prefect.exceptions import FailedRun

    from cache.store import StoreError
    from flows.prefect_runtime import ChosenFailure, QuietRunLogs

    quiet = QuietRunLogs()

    def record(msg: str, exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord("prefect.flow_runs", 40, __file__, 1, msg, None, (type(exc), exc, None))

    for exc in (ChosenFailure("M_J fell", {"a": 1}), FailedRun("Run failed.")):
        assert not quiet.filter(record(QuietRunLogs.ENGINE, exc))
    ordinary, bug = StoreError("s4/train has no 'gt' features"), KeyError("x")
    first = record(QuietRunLogs.RAISED + ": %r", ordinary)
    assert quiet.filter(first) and first.exc_info is None
    assert not quiet.filter(record(QuietRunLogs.ENGINE, ordinary))  # logged once already
    raised = record(QuietRunLogs.RAISED + ": %r", bug)
    assert quiet.filter(raised) and raised.exc_info is not None
    assert not quiet.filter(record(QuietRunLogs.ENGINE, bug))
    assert quiet.filter(record(QuietRunLogs.ENGINE, RuntimeError("the engine's own")))
