"""extract-features through a real Prefect server: served deployment, threads and a 2-worker Dask cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prefect_server import deployment_run

from cache import FeatureStore
from pipeline.data.clips import read_clips
from pipeline.data.synth import write_synthetic
from stages.extract import ExtractConfig, extract

pytestmark = pytest.mark.slow
ENCODERS = ["clip", "clap", "sam2", "beit3", "gt"]


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
    out = deployment_run(env, "extract-features/default", params)
    assert out.returncode == 0 and "Completed" in out.stdout + out.stderr, (
        out.stdout[-3000:] + out.stderr[-3000:]
    )

    fs = FeatureStore(str(store), mode="r")
    for split in ("train", "val", "test"):
        g = fs.split("ms3", split)
        n = 5 * len(read_clips(root, "ms3", split))
        assert g.n_rows == n
        assert sorted(e.name for e in g.encoders()) == sorted(ENCODERS)
        assert all(e.rows_done() == n for e in g.encoders()), split

    dask_store = tmp_path / "dask.zarr"
    params |= {"store": str(dask_store), "task_runner": "dask", "workers": 2}
    out = deployment_run(env, "extract-features/default", params)
    assert out.returncode == 0 and "Completed" in out.stdout + out.stderr, (
        out.stdout[-3000:] + out.stderr[-3000:]
    )

    want = _arrays(local)
    for name, got in [("served", _arrays(store)), ("dask", _arrays(dask_store))]:
        assert got.keys() == want.keys(), name
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}: {k}")
