"""Task runner choice for the flows: local threads, or Dask (a local cluster or an existing one)."""

from __future__ import annotations

from typing import Literal

from prefect.task_runners import ThreadPoolTaskRunner

RunnerKind = Literal["threads", "dask"]


def make_runner(kind: RunnerKind = "threads", workers: int = 2, dask_address: str | None = None):
    """A ThreadPoolTaskRunner, or a DaskTaskRunner on `dask_address` (a new local cluster when None)."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    # Processes, one thread each: torch runs its own threads, and the GIL would serialise the rest.
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
