"""The `nightly` evaluate deployment on a real Prefect server: report, artifacts, schedule, comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prefect_server import deployment_run

pytestmark = pytest.mark.slow


def _prefect(env: dict, *args: str) -> str:
    prefect = str(Path(sys.executable).parent / "prefect")
    wide = {**env, "COLUMNS": "400"}  # rich truncates table cells to the terminal width
    out = subprocess.run([prefect, *args], env=wide, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_nightly_deployment_reports_publishes_and_is_scheduled(tmp_path, prefect_env, s4_run):
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
        out = deployment_run(env, "evaluate/nightly", params)
        assert out.returncode == 0 and "Completed" in out.stdout + out.stderr, (
            out.stdout[-3000:] + out.stderr[-2000:]
        )
    inspect = _prefect(env, "deployment", "inspect", "evaluate/nightly")
    assert "0 3 * * *" in inspect and "end-to-end" in inspect
    artifacts = _prefect(env, "artifact", "ls")
    assert "evaluate-s4-test" in artifacts and "evaluate-s4-test-scores" in artifacts

    runs = sorted(p.parent for p in reports.glob("*/report.json"))
    assert len(runs) == 2
    report = json.loads((runs[-1] / "report.json").read_text())
    assert report["mode"] == "end-to-end" and report["split"] == "test"
    assert report["checkpoint"].endswith("best.pt")
    rows = json.loads((runs[-1] / "comparison.json").read_text())
    by = {r["metric"]: r for r in rows}
    # The same checkpoint on the same data: the previous report is found and nothing moved.
    assert by["M_J"]["previous"] == pytest.approx(report["M_J"], abs=1e-6)
    assert by["M_J"]["delta"] == pytest.approx(0, abs=1e-6) and not any(r["regression"] for r in rows)
