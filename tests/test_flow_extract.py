"""extract-features through a real Prefect server: served deployment, threads and a 2-worker Dask cluster;
what its run page shows (name, tags, one task per shard with no false edges, the store artifact, log lines)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pytest
from prefect_server import deployment_run

from cache import FeatureStore
from pipeline.data.clips import read_clips
from pipeline.data.synth import write_synthetic
from stages.extract import ExtractConfig, extract

pytestmark = pytest.mark.slow
ENCODERS = ["clip", "clap", "sam2", "beit3", "gt"]
SPLITS = ("train", "val", "test")
DEPLOYMENT = "extract-features/extract"  # as flows/serve.py serves it


def flow_run_id(out) -> UUID:
    """The flow run `prefect deployment run` created."""
    found = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout)
    assert found, out.stdout[-2000:]
    return UUID(found[1])


@contextmanager
def api(env: dict) -> Iterator[Any]:
    """A synchronous Prefect client of the test server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = {PREFECT_API_URL: env["PREFECT_API_URL"]}
    with temporary_settings(updates=url), get_client(sync_client=True) as client:
        yield client


def run_logs(client, run_ids: list[UUID], until: str, timeout: float = 30) -> list[str]:
    """The log messages of the runs (their tasks' too), waiting until one contains `until` (logs are
    sent in batches, and may land after the run's final state)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.time() + timeout
    while True:
        msgs, offset = [], 0
        while True:
            page = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)), limit=200, offset=offset
            )
            msgs += [log.message for log in page]
            offset += len(page)
            if len(page) < 200:
                break
        if any(until in m for m in msgs) or time.time() > deadline:
            return msgs
        time.sleep(1)


def artifacts(client, run_ids: list[UUID], key: str) -> list[Any]:
    """The artifacts of the runs under a key, oldest first."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=run_ids)
        )
    )
    return sorted(found, key=lambda a: a.created)


def traced_inputs(client, run_ids: list[UUID]) -> tuple[list[Any], list[tuple[str, str, str]]]:
    """The task runs of the flow runs, and every (task run, argument, upstream run) the API records as a
    dependency: the edges of the UI's graph."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)), limit=200)
    edges = [
        (t.name, arg, str(i.id))
        for t in tasks
        for arg, inputs in t.task_inputs.items()
        for i in inputs
        if i.input_type in ("task_run", "flow_run")
    ]
    return tasks, edges


def check_run_page(env: dict, out, n_rows: dict[str, int], runner: str) -> None:
    """The extract run's page through the API: name, tags, shard tasks without false edges, artifacts, logs."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    run_id = flow_run_id(out)
    with api(env) as client:
        run = client.read_flow_run(run_id)
        assert run.name == "extract-ms3-tiny" and {"ms3", "tiny"} <= set(run.tags), (run.name, run.tags)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
        )
        assert [c.name for c in children] == ["extract-ms3-tiny-shards"] and "ms3" in children[0].tags
        ids = [run_id, children[0].id]

        tasks, edges = traced_inputs(client, ids)
        shards = sorted(t.name for t in tasks if t.flow_run_id == children[0].id)
        # 4 videos: one shard of blocks per (input, split), named encoders/split/first block: the frame
        # encoders share theirs (each frame decoded once for all three)
        inputs = ("clip+sam2+beit3", "clap", "gt")
        assert shards == sorted(f"{e}/{s}/0" for e in inputs for s in SPLITS), shards
        assert all(t.state_type.value == "COMPLETED" and "ms3" in t.tags for t in tasks if t.name in shards)
        assert edges == [], f"{runner}: task inputs traced to other runs (false edges in the graph): {edges}"

        (table,) = artifacts(client, [run_id], "extract-ms3-store")
        rows = json.loads(table.data)
        assert table.type == "table" and len(rows) == len(SPLITS) * len(ENCODERS)
        for r in rows:
            n = n_rows[r["split"]]
            assert r["rows_done"] == r["rows_total"] == r["computed"] == n and r["failures"] == 0, r
            assert r["bytes_stored"] > 0 and r["frames_per_s"] > 0, r
        assert sorted((r["split"], r["encoder"].split("@")[0]) for r in rows) == sorted(
            (s, e) for s in SPLITS for e in ENCODERS
        )
        # on the extract run's own Artifacts tab (the sub-flow only updates it)
        (progress,) = artifacts(client, ids, "extract-ms3-progress")
        assert progress.flow_run_id == run_id, "the progress artifact sits on the -shards sub-flow"
        assert progress.type == "progress" and float(progress.data) == pytest.approx(100)

        logs = run_logs(client, ids, "this run:")
        for r in rows:  # one readable line per split and encoder, not a dict
            line = f"{r['split']}/{r['encoder']}: {r['rows_done']}/{r['rows_total']} rows done"
            assert any(m.startswith(line) for m in logs), (line, logs[-20:])
        # every row once (not once per encoder); each shard's log line counts its rows too
        assert any(m.startswith(f"this run: {sum(n_rows.values())} rows computed in ") for m in logs), logs[
            -5:
        ]
        for split, n in n_rows.items():
            assert any(m.startswith(f"clip+sam2+beit3/{split}: {n} row{'s' * (n != 1)} in ") for m in logs)
        assert not any("{'" in m for m in logs), [m for m in logs if "{'" in m]


def _arrays(store: Path) -> dict[str, np.ndarray]:
    fs = FeatureStore(str(store), mode="r")
    out = {}
    for subset, split in fs.groups():
        for e in fs.split(subset, split).encoders():
            out |= {f"{split}/{e.key}/{n}": e.array(n)[:] for n in e.specs}
            out[f"{split}/{e.key}/done"] = e.done_mask()
    return out


def test_served_deployment_fills_the_store_and_dask_matches(tmp_path, prefect_env):
    root = tmp_path / "avsbench"
    write_synthetic(root, "ms3", videos=4, seed=3)
    local = tmp_path / "local.zarr"
    # One torch thread everywhere: Dask workers start with OMP_NUM_THREADS=1, and CPU kernels reduce in a
    # thread-count-dependent order, so only equal thread counts give bit-identical features.
    extract(ExtractConfig(root=root, subset="ms3", store=str(local), device="cpu", threads=1), progress=False)

    env = prefect_env
    store = tmp_path / "served.zarr"
    params = {
        "root": str(root),
        "subset": "ms3",
        "store": str(store),
        "encoders": ENCODERS,
        "device": "cpu",
        "threads": 1,
    }
    out = deployment_run(env, DEPLOYMENT, params)
    assert out.returncode == 0 and "Completed" in out.stdout + out.stderr, (
        out.stdout[-3000:] + out.stderr[-3000:]
    )

    fs = FeatureStore(str(store), mode="r")
    n_rows = {split: 5 * len(read_clips(root, "ms3", split)) for split in SPLITS}
    for split, n in n_rows.items():
        g = fs.split("ms3", split)
        assert g.n_rows == n
        assert sorted(e.name for e in g.encoders()) == sorted(ENCODERS)
        assert all(e.rows_done() == n for e in g.encoders()), split
    check_run_page(env, out, n_rows, "threads")

    dask_store = tmp_path / "dask.zarr"
    params |= {"store": str(dask_store), "task_runner": "dask", "workers": 2}
    out = deployment_run(env, DEPLOYMENT, params)
    assert out.returncode == 0 and "Completed" in out.stdout + out.stderr, (
        out.stdout[-3000:] + out.stderr[-3000:]
    )

    check_run_page(env, out, n_rows, "dask")

    want = _arrays(local)
    for name, got in [("served", _arrays(store)), ("dask", _arrays(dask_store))]:
        assert got.keys() == want.keys(), name
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}: {k}")
