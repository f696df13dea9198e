"""Shared fixtures: one real Prefect server (loopback, temporary PREFECT_HOME) for every flow test."""

from __future__ import annotations

import pytest
from prefect_server import prefect_server


@pytest.fixture(autouse=True)
def torch_threads_kept():
    """Every test starts with torch's own CPU thread count: a stage that leaked its `threads` setting once
    made every later in-process test single-threaded (twice as slow on two cores, and features computed
    in another reduction order than a subprocess's)."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def prefect_env(tmp_path_factory):
    """The environment (PREFECT_API_URL set) of a running server that `flows.serve` serves."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        yield env


@pytest.fixture(scope="session")
def s4_run(tmp_path_factory) -> dict:
    """The shared synthetic S4 run: 6 videos (2 in test), a float16 store, a head trained 1 epoch.

    The head lies alone under <tmp>/runs/head, so `runs` is a checkpoints folder with one best.pt.
    Tests write their own outputs elsewhere (their own tmp folders), never into this run.
    """
    from synthetic_run import synthetic_store, train_head

    run = synthetic_store(tmp_path_factory.mktemp("s4-run"))
    return {**run, "checkpoint": train_head(run, run["tmp"] / "runs" / "head")}


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 API on loopback (moto's server mode, signatures checked) for the object-store tests
    (tests/s3_server.py): `.env` points s3fs at it; skipped, saying why, without s3fs or moto[server]."""
    import s3_server

    why = s3_server.missing()
    if why:
        pytest.skip(f"no S3 server for the object-store tests: {why}")
    with s3_server.s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server
