"""The demo: synthetic S4 and MS3 -> extract-features -> train-head -> evaluate, on the `tiny` preset (or --preset)."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, tags

from flows.evaluate import evaluate
from flows.extract import extract_features
from flows.params import model_params, settings
from flows.prefect_runtime import run_flow
from flows.settings import DemoSettings
from flows.train import train_head
from pipeline.data.synth import write_synthetic


@contextmanager
def step(subset: str, what: str) -> Iterator[None]:
    """One line per demo stage on stderr: what runs now, then its time (the stages draw their own bars)."""
    print(f"[{subset}] {what} ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    yield
    print(f"[{subset}] {what}: done in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)


@flow(name="demo", flow_run_name="demo")
@model_params(DemoSettings)
def demo(**params: Any) -> list[dict]:
    """Run the whole pipeline on a synthetic AVSBench tree and return one score row per subset."""
    s = settings(DemoSettings, params)
    base = s.out
    root, rows = base / "data", []
    # S4 trains on frame 1 only (the only annotated one), so it needs more videos than MS3 for as many rows.
    for subset, videos in (("s4", s.s4_videos), ("ms3", s.ms3_videos)):
        t = time.perf_counter()
        with step(subset, f"synthetic data ({videos} videos)"):
            write_synthetic(root, subset, videos=videos, seed=s.seed)
        store = str(base / f"{subset}.zarr")
        # The demo rewrites its data, so it starts a fresh store and head (a store never mixes clip lists).
        for old in (Path(store), base / f"train-{subset}"):
            shutil.rmtree(old, ignore_errors=True)
        with step(subset, "extract-features (CLIP, CLAP, SAM, BEiT-3, GT into the store)"):
            extract_features(root=str(root), subset=subset, store=store, device="cpu", preset=s.preset)
        with step(subset, f"train-head ({s.epochs} epochs on the cached features)"):
            table = train_head(
                store=store,
                subset=subset,
                preset=s.preset,
                epochs=s.epochs,
                out=str(base / f"train-{subset}"),
                device="cpu",
                resume=False,
            )
        with step(subset, "evaluate (end to end on the test split)"):
            result = evaluate(
                checkpoint=table[0]["checkpoint"],
                root=str(root),
                subset=subset,
                split="test",
                mode="end-to-end",
                reports=str(base / "reports"),
                device="cpu",
            )
        report = pd.read_json(result["report"], typ="series")
        rows.append(
            {
                "subset": subset,
                "val M_J (best epoch)": table[0]["val_M_J"],
                "test M_J": report["M_J"],
                "test M_F": report["M_F"],
                "test M_F (batch-free)": report["M_F_batch_free"],
                "seconds": round(time.perf_counter() - t, 1),
                "report": result["report"],
            }
        )
    return rows


def main(s: DemoSettings | None = None) -> None:
    """Run the demo flow; print the table and where the reports are."""
    t = time.perf_counter()
    cfg = s or DemoSettings()

    def tagged() -> list[dict]:
        with tags("demo"):  # the demo's run and its sub-flows' (each adds its subset and preset)
            return demo(**cfg.model_dump())

    rows = run_flow("the demo", tagged)
    df = pd.DataFrame(rows)
    print(
        f"\nAV2T-SAM demo (synthetic AVSBench, {cfg.preset} preset, random-weight encoders; end-to-end test split;"
    )
    print("M_F with one video per batch, as the AV2T test):\n")
    print(df.drop(columns="report").to_markdown(index=False, floatfmt=".4f"))
    for r in rows:
        print(f"{r['subset']} report: {r['report']}")
    print(f"\ndemo finished in {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
