"""Task runner choice for the flows: local threads, or Dask (a local cluster or an existing one)."""

from __future__ import annotations

from typing import Any

from flows.settings import RunnerSettings


def make_runner(r: RunnerSettings) -> Any:
    """A ThreadPoolTaskRunner, or a DaskTaskRunner on `r.dask_address` (a new local cluster when None)."""
    if r.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=r.workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as e:  # an optional package: `av2t` names it and the pip command
        raise ImportError(f"task_runner='dask' needs prefect-dask and distributed: {e}", name=e.name) from e

    if r.dask_address:
        return DaskTaskRunner(address=r.dask_address)
    # Processes, one thread each: torch runs its own threads, and the GIL would serialise the rest.
    return DaskTaskRunner(cluster_kwargs={"n_workers": r.workers, "threads_per_worker": 1, "processes": True})
