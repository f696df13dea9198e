"""train-head through a real Prefect server: what its run page shows (name, tags, the fit-heads task, one
log line per epoch, the per-epoch table, the progress, and the comparison artifact with the curves' path)."""

from __future__ import annotations

import json
import math
import re

import pytest
from prefect_server import deployment_run
from test_flow_extract import api, artifacts, flow_run_id, run_logs

DEPLOYMENT = "train-head/train"  # as flows/serve.py serves it


def test_run_names_follow_the_parameters():
    from flows.train import train_run_name

    assert train_run_name({"subset": "ms3"}) == "train-ms3-tiny"  # the preset's default filled in
    assert train_run_name({"subset": "s4", "preset": "/presets/mine/", "sweep_file": "/x/fusions.json"}) == (
        "train-s4-mine-fusions"
    )


@pytest.mark.slow
def test_served_training_reports_every_epoch(tmp_path, prefect_env, s4_run):
    out = tmp_path / "head"
    params = {
        "store": s4_run["store"],
        "subset": "s4",
        "epochs": 2,
        "batch_size": 4,
        "out": str(out),
        "device": "cpu",
        "resume": False,
    }
    done = deployment_run(prefect_env, DEPLOYMENT, params)
    assert done.returncode == 0 and "Completed" in done.stdout + done.stderr, (
        done.stdout[-3000:] + done.stderr[-2000:]
    )
    run_id = flow_run_id(done)
    with api(prefect_env) as client:
        run = client.read_flow_run(run_id)
        assert run.name == "train-s4-tiny" and {"s4", "tiny"} <= set(run.tags), (run.name, run.tags)

        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        assert [t.name for t in tasks] == ["fit-heads/s4/1x2-epochs"]
        assert tasks[0].state_type.value == "COMPLETED" and "s4" in tasks[0].tags

        # one line per epoch: losses and validation scores, as the epoch ends
        logs = run_logs(client, [run_id], "head: epoch 2/2")
        for epoch in (1, 2):
            pattern = (
                rf"^head: epoch {epoch}/2: train loss \d+\.\d+, val loss \d+\.\d+, val M_J \d\.\d+, val M_F"
            )
            assert any(re.match(pattern, m) for m in logs), (pattern, logs[-20:])

        versions = artifacts(client, [run_id], "train-s4-epochs")  # a new version every epoch
        assert [len(json.loads(a.data)) for a in versions] == [1, 2]
        rows = json.loads(versions[-1].data)
        assert [(r["head"], r["epoch"]) for r in rows] == [("head", 1), ("head", 2)]
        assert all(math.isfinite(r["train_loss"]) and 0 <= r["val_M_J"] <= 1 for r in rows), rows
        (progress,) = artifacts(client, [run_id], "train-s4-progress")
        assert progress.type == "progress" and float(progress.data) == pytest.approx(100)

        (comparison,) = artifacts(client, [run_id], "train-s4-comparison")
        md = comparison.data
        assert "s4" in md and s4_run["store"] in md and str(out / "best.pt") in md
        assert str(out / "curves.png") in md and str(out / "metrics.csv") in md
    assert (out / "curves.png").is_file() and (out / "metrics.csv").is_file()
