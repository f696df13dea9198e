"""The `extract-features` flow: fan the extract stage out per (encoder, shard) as Prefect tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from prefect import flow, get_run_logger, task
from prefect.futures import wait

from flows.runners import RunnerKind, make_runner
from stages.extract import ExtractConfig, Shard, extract_shard, prepare, summarize


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
def extract_features(
    root: str,
    subset: Literal["s4", "ms3"] = "s4",
    splits: list[Literal["train", "val", "test"]] = ["train", "val", "test"],  # noqa: B006 (Prefect params)
    encoders: list[str] = ["clip", "clap", "sam2", "beit3", "gt"],  # noqa: B006
    preset: str = "tiny",
    store: str = "runs/store.zarr",
    batch_size: int = 8,
    device: str = "auto",
    on_error: Literal["stop", "skip"] = "stop",
    dtype: Literal["float16", "float32"] = "float16",
    frames: Literal["used", "all"] = "used",
    weights_dir: str | None = None,
    overrides: dict[str, dict] | None = None,
    allow_other_fingerprints: bool = False,
    block_rows: int = 32,
    threads: int = 0,
    task_runner: RunnerKind = "threads",
    workers: int = 1,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Precompute CLIP, CLAP, SAM 2 and BEiT-3 features of an AVSBench subset into the Zarr store."""
    log = get_run_logger()
    cfg = ExtractConfig(
        root=Path(root),
        subset=subset,
        splits=splits,
        encoders=encoders,
        preset=preset,
        store=store,
        batch_size=batch_size,
        device=device,
        on_error=on_error,
        dtype=dtype,
        frames=frames,
        weights_dir=Path(weights_dir) if weights_dir else None,
        overrides=overrides or {},
        allow_other_fingerprints=allow_other_fingerprints,
        block_rows=block_rows,
        threads=threads,
    )
    shards = prepare(cfg)
    log.info(f"{len(shards)} pending shard(s), {sum(s.rows for s in shards)} rows, runner {task_runner}")
    results = []
    if shards:
        runner = make_runner(task_runner, workers, dask_address)
        results = _run_shards.with_options(task_runner=runner)(cfg, shards)
    failures = [f for r in results for f in r["failures"]]
    for f in failures:
        log.warning(f"skipped {f['path']}: {f['error']}")
    summary = summarize(cfg)
    log.info(f"store {store}: {summary}")
    return {"computed": sum(r["computed"] for r in results), "failures": failures, "store": summary}
