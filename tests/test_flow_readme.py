"""The deploy page's sequence (docs/deploy.md, "On demand and every night") run as written against a real Prefect server.

The commands are read from docs/deploy.md, so the test breaks when the page drifts: `av2t serve` in a folder
holding a small synthetic `data/synth`, then each `prefect deployment run` line (extract, train, on-demand,
nightly). Every run must end Completed, and no run's logs may hold an ERROR line or a traceback (read
through the API). The README's server on port 4200 is this test's server on a free port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prefect_server import REPO, _wait_served, prefect_server
from test_flow_extract import api

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SECTION = "# On demand and every night: `av2t serve`"


def deploy_commands() -> list[list[str]]:
    """The first bash block of the deploy page's serve section: one argv per command (continuations joined)."""
    text = (REPO / "docs" / "deploy.md").read_text()
    block = text.split(SECTION, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [argv for line in lines if (argv := shlex.split(line, comments=True))]


def _all_runs(client) -> list:
    return client.read_flow_runs(limit=200)


def _logs(client, ids: list) -> list:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    found, offset = [], 0
    while True:
        page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200, offset=offset)
        found += page
        offset += len(page)
        if len(page) < 200:
            return found


def test_readme_deploy_sequence_runs_as_written(tmp_path):
    from pipeline.data.synth import SynthSpec, write_synthetic

    commands = deploy_commands()
    heads = [" ".join(c[:2]) for c in commands]
    assert heads[:3] == ["prefect server", "export PREFECT_API_URL=http://127.0.0.1:4200/api", "av2t serve"]
    runs = commands[3:]
    assert [c[:3] for c in runs] == [["prefect", "deployment", "run"]] * 4, heads
    assert [c[3] for c in runs] == [
        "extract-features/extract",
        "train-head/train",
        "evaluate/on-demand",
        "evaluate/nightly",
    ]
    assert all("--watch" in c for c in runs)

    work = tmp_path / "work"  # the folder every README command runs in
    root = work / "data" / "synth"
    write_synthetic(root, "s4", videos=3, seed=5, spec=SynthSpec())  # one video per split: the least work
    with prefect_server(tmp_path / "home", serve=False) as env:
        serve = subprocess.Popen(
            [str(BIN / "av2t"), *commands[2][1:]],
            cwd=work,
            env=env,
            stdout=open(tmp_path / "serve.log", "w"),  # noqa: SIM115 (closed with the process)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_served(env["PREFECT_API_URL"], serve, tmp_path / "serve.log", timeout=180)
            for argv in runs:
                out = subprocess.run(
                    [str(BIN / "prefect"), *argv[1:]], cwd=work, env=env, capture_output=True, text=True
                )
                assert out.returncode == 0, (argv, out.stdout[-3000:], out.stderr[-2000:])
        finally:
            os.killpg(serve.pid, signal.SIGINT)
            serve.wait(timeout=30)
        check_runs(env, work)


def check_runs(env: dict, work: Path) -> None:
    """Every run Completed, no ERROR or traceback in any log; artifacts where the README says, paths absolute,
    the scores as report.json's rounded once, the best epoch as training logged it."""
    with api(env) as client:
        found = {r.name: r for r in _all_runs(client)}
        assert len(found) == 6, sorted(
            found
        )  # extract (+ its -shards sub-flow), train, on-demand, nightly (+ s4)
        for r in found.values():
            assert r.state.type.value == "COMPLETED" and r.state.name == "Completed", (r.name, r.state)
        ids = [r.id for r in found.values()]
        logs = _logs(client, ids)
        assert any("report written at" in x.message for x in logs)
        assert sum(x.message.startswith("1 video scored (5 frames)") for x in logs) == 2  # on-demand, nightly
        assert any(x.message.startswith("M_J: ") and "(no previous report)" in x.message for x in logs)
        bad = [x.message for x in logs if x.level >= 40 or "Traceback" in x.message]
        assert bad == [], bad

        arts = client.read_artifacts()
        by = {}
        for a in arts:
            by.setdefault(a.key, []).append(a)
        extract = found["extract-s4-tiny"]
        (progress,) = by["extract-s4-progress"]
        assert progress.flow_run_id == extract.id  # on the extract run, not its -shards sub-flow
        nightly = next(r for n, r in found.items() if n.startswith("nightly-20"))
        assert re.fullmatch(r"nightly-\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", nightly.name), nightly.name
        (summary,) = by["nightly-summary"]
        assert summary.flow_run_id == nightly.id

        # every path an artifact shows is absolute
        texts = [str(a.data) + " " + str(a.description) for a in arts if a.type in ("markdown", "table")]
        for text in texts:
            for path in re.findall(r"`([^`\s]*/[^`\s]*)`", text):
                assert path.startswith("/"), (path, text[:500])
        (store,) = by["extract-s4-store"]
        assert f"features in {work / 'runs' / 'store.zarr'} " in store.description
        (comparison,) = by["train-s4-comparison"]
        assert f"`{work / 'runs' / 'train-s4' / 'best.pt'}`" in comparison.data
        epochs = max((json.loads(a.data) for a in by["train-s4-epochs"]), key=len)  # the last version
        assert re.fullmatch(r"\d(\.\d{1,2})?e-\d\d", epochs[-1]["lr"]) and "cumulative_seconds" in epochs[-1]

        # the scores: report.json's, rounded once; the best epoch as training tabled it
        (report_dir,) = (work / "runs" / "reports").glob("*-s4-test")
        report = json.loads((report_dir / "report.json").read_text())
        (md,) = by["evaluate-s4-test"]
        (table,) = by["evaluate-s4-test-scores"]
        for row in json.loads(table.data):
            assert row["now"] == round(report[row["metric"]], 4), row
            assert f"| {report[row['metric']]:.4f} |" in md.data
        best = max((r for r in epochs if r["validated"]), key=lambda r: r["val_M_J"])
        assert f"best epoch {best['epoch']} (numbered as training logged it)" in md.data
