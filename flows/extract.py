"""The `extract-features` flow: fan the extract stage out per shard (blocks of one split, for the encoders
reading one input: frames, audio or masks, decoded once for all of them) as Prefect tasks.

What the run page shows: the run named `extract-<subset>-<preset>` and tagged with both; a sub-flow
`…-shards` with one `extract-shard` task per (input, split, shard), named `<encoders>/<split>/<first
block>` (e.g. `clip+sam2+beit3/train/0`), none drawn as depending on another (see `_run_shards`); on the run
itself a progress artifact `extract-<subset>-progress` (rows of the ended shards, updated by the sub-flow);
and at the end a table artifact
`extract-<subset>-store` (per split and encoder: rows done / total, failures, rows computed by this run
and their frames/s, bytes on disk) and one log line per split and encoder.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any
from uuid import UUID

import torch
from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed

from cache import FeatureStore
from flows.params import flow_kwargs, model_params, settings
from flows.prefect_runtime import quiet_run_logs, run_flow
from flows.run_page import absolute, label_run, preset_label, run_param
from flows.runners import make_runner
from flows.settings import ExtractFlowSettings
from pipeline.settings import ExtractConfig
from stages.extract import (
    Shard,
    extract,
    extract_expressions,
    extract_negatives,
    extract_shard,
    prepare,
    summarize,
)

# -- the run page: names and tags from the parameters (helpers the train-head flow uses too)


def extract_run_name(parameters: dict[str, Any] | None = None) -> str:
    """`extract-<subset>-<preset>`: the run's name in the UI (instead of a random one)."""
    subset = run_param(ExtractFlowSettings, "subset", parameters)
    return f"extract-{subset}-{preset_label(run_param(ExtractFlowSettings, 'preset', parameters))}"


# -- the flow


@task(
    name="extract-shard",
    retries=2,
    retry_delay_seconds=2,
    task_run_name="{shard.label}/{shard.split}/{shard.blocks[0]}",
)
def extract_shard_task(cfg: ExtractConfig, shard: Shard) -> dict[str, Any]:
    """Compute and write one shard of the encoders reading one input (resumable: done rows are skipped).

    Returns only objects made here (counts per encoder in the shard's order, the failures list, seconds),
    never the shard's split or encoder names: see `_run_shards`.
    """
    t = time.perf_counter()
    out = extract_shard(cfg, shard)
    seconds = time.perf_counter() - t
    get_run_logger().info(
        f"{shard.label}/{shard.split}: {shard_rows(shard.encoders, out['computed'])} in {seconds:.1f} s, "
        f"torch threads {torch.get_num_threads()}"
    )
    return {"computed": out["computed"], "failures": out["failures"], "seconds": seconds}


def shard_rows(encoders: list[str], computed: list[int]) -> str:
    """`6 rows` (each encoder of the shard computed them), or `6 rows (clip 6, sam2 0, beit3 6)` on a resume."""
    rows = max(computed, default=0)
    if len(set(computed)) <= 1:
        return f"{rows} row{'s' * (rows != 1)}"
    return f"{rows} rows ({', '.join(f'{e} {n}' for e, n in zip(encoders, computed, strict=True))})"


@flow(name="extract-shards")
def _run_shards(cfg: ExtractConfig, shards: list[Shard], bar: UUID) -> list[dict[str, Any]]:
    """Submit every shard to this flow's task runner and wait for all (updating the extract run's progress
    artifact as they end); one result per shard, with its split and encoder.

    No false edges: Prefect records a task input as coming from an upstream task when the argument is (or
    holds, at any depth) an object that task returned, matched by identity (`id()`). The split and encoder
    names are interned strings: while a shard task returned them, every later shard's `shard` and `cfg`
    held "an upstream result", and the UI drew `clap/train/0` as depending on `clip/train/0`. So a shard
    task returns only objects it made, and the split and encoder are added here, after every task ran.
    (`quote()` would keep Prefect from searching the arguments, but prefect-dask hands a quoted argument
    to the task as a plain tuple.) The extract flow tests assert through the API that no task run's
    inputs point at another run, with both runners.
    """
    futures = [extract_shard_task.submit(cfg, s) for s in shards]
    rows = {id(f): s.rows for f, s in zip(futures, shards, strict=True)}
    total, done, ended = sum(rows.values()), 0, 0
    for f in as_completed(futures):
        ended, done = ended + 1, done + rows[id(f)]
        update_progress_artifact(
            bar, 100.0 * done / max(total, 1), description=f"{ended}/{len(shards)} shards ended"
        )
    return [
        {"split": s.split, "encoders": s.encoders, **f.result()} for s, f in zip(shards, futures, strict=True)
    ]


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def store_table(cfg: ExtractConfig, summary: dict[str, Any], results: Iterable[dict[str, Any]]) -> list[dict]:
    """One row per split and encoder: rows done / total, failures, this run's rows and frames/s, bytes stored.

    frames/s: the rows this run computed over the summed seconds of the shard tasks that ran the encoder (one
    worker's rate; encoders reading one input share their shards, so theirs is the rate of all of them).
    """
    ran: dict[tuple[str, str], list[float]] = {}
    for r in results:
        for name, n in zip(r["encoders"], r["computed"], strict=True):
            acc = ran.setdefault((r["split"], name), [0, 0.0])
            acc[0] += n
            acc[1] += r["seconds"]
    store = FeatureStore(cfg.store, mode="r")
    rows = []
    for key, s in summary.items():  # "split/name@fingerprint"
        split, sub = key.split("/", 1)
        name, fp = sub.split("@", 1)
        stored = store.split(cfg.subset, split).encoder(name, fp).nbytes_stored()
        computed, seconds = ran.get((split, name), (0, 0.0))
        rows.append(
            {
                "split": split,
                "encoder": sub,
                "rows_done": s["rows_done"],
                "rows_total": s["rows_total"],
                "failures": s["failures"],
                "computed": int(computed),
                "frames_per_s": round(computed / seconds, 2) if seconds > 0 else None,
                "stored": _human_bytes(stored),
                "bytes_stored": stored,
            }
        )
    return rows


def summary_line(r: dict[str, Any]) -> str:
    """One readable log line of a store_table row."""
    line = f"{r['split']}/{r['encoder']}: {r['rows_done']}/{r['rows_total']} rows done"
    if r["failures"]:
        line += f", {r['failures']} failed"
    line += f", {r['stored']} on disk"
    if r["computed"]:
        line += f"; this run computed {r['computed']} at {r['frames_per_s']} frames/s"
    return line


@flow(name="extract-features", flow_run_name=extract_run_name)
@model_params(ExtractFlowSettings)
def extract_features(**params: Any) -> dict[str, Any]:
    """Precompute CLIP, CLAP, SAM 2 and BEiT-3 features of an AVSBench subset into the Zarr store."""
    quiet_run_logs()
    log = get_run_logger()
    s = settings(ExtractFlowSettings, params)
    cfg = s.stage()
    cfg = cfg.model_copy(update={"store": absolute(cfg.store), "root": cfg.root.resolve()})
    run_tags = (cfg.subset, preset_label(cfg.preset))
    label_run(add_tags=run_tags)
    shards = prepare(cfg)
    rows = sum(sh.rows for sh in shards)
    log.info(f"{len(shards)} pending shard(s), {rows} rows, runner {s.task_runner}, store {cfg.store}")
    results, t = [], time.perf_counter()
    if shards:
        from prefect.runtime import flow_run

        # Created here, so it is on this run's Artifacts tab; the sub-flow updates it as shards end.
        bar = create_progress_artifact(
            0.0, key=f"extract-{cfg.subset}-progress", description=f"0/{len(shards)} shards ended"
        )
        with tags(*run_tags):  # the sub-flow and its tasks carry them too
            results = _run_shards.with_options(
                task_runner=make_runner(s), flow_run_name=f"{flow_run.name}-shards"
            )(cfg, shards, bar)
    seconds = time.perf_counter() - t
    for split, key in extract_negatives(cfg).items():  # --negatives: once the clap features exist
        log.info(f"negative-audio CLAP rows {cfg.subset}/{split}: {key}")
    expressions = extract_expressions(cfg)  # Ref-AVS: the expression level, once the frame rows exist
    for split, e in expressions.items():
        log.info(
            f"expressions {cfg.subset}/{split}: {e['expressions']}, tokens computed {len(e['tokens_computed'])}"
        )
    failures = [f for r in results for f in r["failures"]]
    for f in failures:
        log.warning(f"skipped {f['path']}: {f['error']}")
    summary = summarize(cfg)
    table = store_table(cfg, summary, results)
    for r in table:
        log.info(summary_line(r))
    computed = sum(n for r in results for n in r["computed"])
    done = run_line(results, seconds)
    log.info(f"this run: {done}, {len(failures)} skipped")
    create_table_artifact(
        key=f"extract-{cfg.subset}-store",
        table=table,
        description=(
            f"{cfg.subset} features in {cfg.store} (preset {cfg.preset}): rows done per split and encoder; "
            f"this run: {done}"
        ),
    )
    out = {"computed": computed, "failures": failures, "store": summary}
    return out | ({"expressions": expressions} if expressions else {})


def run_line(results: list[dict[str, Any]], seconds: float) -> str:
    """The run's rows and rate as the store table counts them: each row once (not once per encoder or
    input), frames/s over the seconds of the shard tasks (of every input: the rate of all encoders
    together); the wall time, with the sub-flow's start, apart."""
    per: dict[tuple[str, str], int] = {}  # (split, input) -> rows computed
    for r in results:
        key = (r["split"], "+".join(r["encoders"]))
        per[key] = per.get(key, 0) + max(r["computed"], default=0)
    splits = {split for split, _ in per}
    rows = sum(max(n for (sp, _), n in per.items() if sp == split) for split in splits)
    busy = sum(r["seconds"] for r in results if any(r["computed"]))
    rate = f" at {rows / busy:.1f} frames/s" if rows and busy > 0 else ""
    return f"{rows} rows computed in {busy:.1f} s of shard tasks{rate} ({seconds:.1f} s in all)"


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
