"""Extraction benchmark: frames/s of the whole extract stage vs the bare encoder forward (the ceiling).

Run: python bench/bench_extract.py [--videos 12] [--preset tiny] [--device cpu]
Per encoder, in one run: the stage (decode PNG/WAV, preprocess, forward, float16, Zarr write,
completion record) against the forward alone on pre-decoded, pre-processed tensors. The ratio says
how much of the encoders' speed the pipeline keeps.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data.synth import write_synthetic
from stages.extract import ExtractConfig, InputCache, cfg_encoder, extract, load_inputs, prepare, split_index


def time_stage(cfg: ExtractConfig) -> tuple[float, int]:
    """Seconds and rows of a full extract run into a fresh store (encoder already built and warm)."""
    t = time.perf_counter()
    out = extract(cfg, progress=False)
    return time.perf_counter() - t, out["computed"]


def time_forward(cfg: ExtractConfig, name: str) -> tuple[float, int]:
    """Seconds and rows of the bare forward over the same rows, inputs decoded and preprocessed beforehand."""
    enc = cfg_encoder(cfg, name)
    batches, rows = [], 0
    for split in cfg.splits:
        clips, index = split_index(cfg, split)
        items, _, _ = load_inputs(
            enc, {c.id: c for c in clips}, index, np.arange(len(index)), InputCache(enc.sample_rate)
        )
        for i in range(0, len(items), cfg.batch_size):
            batches.append(enc.preprocess(np.stack(items[i : i + cfg.batch_size])).to(enc.device))
        rows += len(items)
    sync = torch.cuda.synchronize if enc.device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            enc.encode(x)
    sync()
    return time.perf_counter() - t, rows


def main() -> None:
    """Print the stage/forward table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--subset", default="ms3", choices=["s4", "ms3"])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--encoders", nargs="+", default=["clip", "clap", "sam2", "beit3"])
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="av2t-bench-extract-"))
    try:
        write_synthetic(tmp / "data", a.subset, videos=a.videos, seed=0)
        print(
            f"{a.subset}, {a.videos} videos, preset {a.preset}, device {a.device}, batch {a.batch_size}, "
            f"torch threads {torch.get_num_threads()}\n"
        )
        print(f"{'encoder':<8}{'rows':>6}{'stage fr/s':>12}{'forward fr/s':>14}{'stage/forward':>15}")
        tot_stage = tot_fwd = 0.0
        for name in a.encoders:
            cfg = ExtractConfig(
                root=tmp / "data",
                subset=a.subset,
                encoders=[name],
                preset=a.preset,
                store=str(tmp / f"{name}.zarr"),
                device=a.device,
                batch_size=a.batch_size,
            )
            prepare(cfg.model_copy(update={"store": str(tmp / "warm.zarr")}))  # build + warm the encoder
            fwd, rows = time_forward(cfg, name)
            stage, computed = time_stage(cfg)
            assert computed == rows, (computed, rows)
            tot_stage, tot_fwd = tot_stage + stage, tot_fwd + fwd
            print(f"{name:<8}{rows:>6}{rows / stage:>12.1f}{rows / fwd:>14.1f}{fwd / stage:>15.2f}")
        print(
            f"{'all':<8}{'':>6}{rows / tot_stage:>12.1f}{rows / tot_fwd:>14.1f}{tot_fwd / tot_stage:>15.2f}"
            "   (frames/s with every encoder)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
