"""Shared fixtures: one real Prefect server (loopback, temporary PREFECT_HOME) for every flow test."""

from __future__ import annotations

import pytest
from prefect_server import prefect_server


@pytest.fixture(scope="session")
def prefect_env(tmp_path_factory):
    """The environment (PREFECT_API_URL set) of a running server that `flows.serve` serves."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        yield env
