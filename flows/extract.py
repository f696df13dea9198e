"""The `extract-features` flow: fan the extract stage out per (encoder, shard) as Prefect tasks."""

from __future__ import annotations

import sys
from typing import Any

import torch
from prefect import flow, get_run_logger, task
from prefect.futures import wait

from flows.params import flow_kwargs, model_params, settings
from flows.prefect_runtime import run_flow
from flows.runners import make_runner
from pipeline.settings import ExtractConfig, ExtractFlowSettings
from stages.extract import Shard, extract, extract_shard, prepare, summarize


@task(
    name="extract-shard",
    retries=2,
    retry_delay_seconds=2,
    task_run_name="{shard.encoder}/{shard.split}/{shard.blocks[0]}",
)
def extract_shard_task(cfg: ExtractConfig, shard: Shard) -> dict[str, Any]:
    """Compute and write one shard of one encoder (resumable: done rows are skipped)."""
    out = extract_shard(cfg, shard)
    get_run_logger().info(
        f"{shard.encoder}/{shard.split}: {out['computed']} rows, torch threads {torch.get_num_threads()}"
    )
    return out


@flow(name="extract-shards")
def _run_shards(cfg: ExtractConfig, shards: list[Shard]) -> list[dict[str, Any]]:
    """Submit every shard to this flow's task runner and wait for all."""
    futures = [extract_shard_task.submit(cfg, s) for s in shards]
    wait(futures)
    return [f.result() for f in futures]


@flow(name="extract-features")
@model_params(ExtractFlowSettings)
def extract_features(**params: Any) -> dict[str, Any]:
    """Precompute CLIP, CLAP, SAM 2 and BEiT-3 features of an AVSBench subset into the Zarr store."""
    log = get_run_logger()
    s = settings(ExtractFlowSettings, params)
    cfg = s.stage()
    shards = prepare(cfg)
    log.info(f"{len(shards)} pending shard(s), {sum(sh.rows for sh in shards)} rows, runner {s.task_runner}")
    results = []
    if shards:
        results = _run_shards.with_options(task_runner=make_runner(s))(cfg, shards)
    failures = [f for r in results for f in r["failures"]]
    for f in failures:
        log.warning(f"skipped {f['path']}: {f['error']}")
    summary = summarize(cfg)
    log.info(f"store {cfg.store}: {summary}")
    return {"computed": sum(r["computed"] for r in results), "failures": failures, "store": summary}


def run(s: ExtractFlowSettings) -> dict[str, Any]:
    """`av2t extract`: the flow (a temporary Prefect server if none is set), or, when no server can start
    and the runner is `threads`, the extract stage in this process; the flow's result either way."""

    def direct() -> dict[str, Any]:
        cfg = s.stage()
        out = extract(cfg, progress=sys.stderr.isatty())
        return {"computed": out["computed"], "failures": out["failures"], "store": summarize(cfg)}

    # Dask workers report to Prefect: without a server only the threads runner can run (here, in order).
    fallback = direct if s.task_runner == "threads" else None
    return run_flow("extract", lambda: extract_features(**flow_kwargs(extract_features.fn, s)), fallback)
