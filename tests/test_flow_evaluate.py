"""The `nightly` evaluate deployment on a real Prefect server: report, artifacts, schedule, comparison."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prefect_server import deployment_run
from synthetic_run import synthetic_store, train_head

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
    comparison = json.loads((runs[-1] / "comparison.json").read_text())
    rows = comparison["rows"]
    by = {r["metric"]: r for r in rows}
    assert comparison["previous"] == str(runs[0] / "report.json")
    assert comparison["change"].startswith("same head, same data")
    # The same checkpoint on the same data: the previous report is found and nothing moved.
    assert by["M_J"]["previous"] == pytest.approx(report["M_J"], abs=1e-6)
    assert by["M_J"]["delta"] == pytest.approx(0, abs=1e-6) and not any(r["regression"] for r in rows)


def test_nightly_compares_like_with_like(tmp_path, prefect_env, s4_run):
    """S4, MS3, then S4 into one reports folder, an S4 head and a newer MS3 head in one checkpoints folder."""
    checkpoints = tmp_path / "runs"
    (checkpoints / "s4").mkdir(parents=True)
    shutil.copy2(s4_run["checkpoint"], checkpoints / "s4" / "best.pt")  # keeps its (older) time
    ms3 = synthetic_store(tmp_path / "ms3", subset="ms3", videos=6, seed=2)
    ms3_head = train_head(ms3, checkpoints / "ms3")
    reports = tmp_path / "reports"
    done = []
    for subset, root in (("s4", s4_run["root"]), ("ms3", ms3["root"]), ("s4", s4_run["root"])):
        params = {
            "checkpoints": str(checkpoints),
            "root": str(root),
            "subset": subset,
            "reports": str(reports),
        }
        out = deployment_run(prefect_env, "evaluate/nightly", {**params, "device": "cpu"})
        assert out.returncode == 0 and "Completed" in out.stdout + out.stderr, out.stdout[-3000:]
        new = sorted(p.parent for p in reports.glob("*/report.json"))[-1]
        done.append(
            (json.loads((new / "report.json").read_text()), json.loads((new / "comparison.json").read_text()))
        )
    (s4a, c1), (m, c2), (s4b, c3) = done
    # each subset scores its own head
    assert s4a["checkpoint"] == s4b["checkpoint"] == str(checkpoints / "s4" / "best.pt")
    assert m["checkpoint"] == str(ms3_head) and m["model"]["trained_subset"] == "ms3"
    assert s4a["warnings"] == m["warnings"] == s4b["warnings"] == []
    # MS3 has no previous report; the second S4 run compares with the first: same head, same data, delta 0
    assert c1["previous"] is None and c2["previous"] is None
    assert all(r["previous"] is None for r in c2["rows"])
    assert (
        c3["previous"].startswith(str(reports))
        and json.loads(Path(c3["previous"]).read_text())["subset"] == "s4"
    )
    assert c3["change"].startswith("same head, same data")
    assert all(r["delta"] == pytest.approx(0, abs=1e-6) and not r["regression"] for r in c3["rows"])
