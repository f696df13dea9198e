"""Extraction benchmark: frames/s of the extract stage vs the bare encoder forward (the ceiling), side by side.

Run: python -m bench.bench_extract [--videos 24] [--preset tiny|paper] [--device cpu|cuda] [--threads 1]
     python -m bench.bench_extract --preset paper --random-weights --device cuda   (paper sizes on a GPU)

Per encoder, in one run, after a warm-up of each: the stage for that encoder alone (decode PNG/WAV ahead in
threads, uint8 to the device, preprocessing and forward there, cast to the storage dtype there, copy back,
Zarr write behind, completion record) against the forward alone on inputs already decoded, preprocessed and
on the device. Then the frame encoders together (each frame decoded once for all) against the sum of their
forwards. The ratio says how much of the encoders' speed the pipeline keeps; the breakdown says where the
stage's time goes (threads overlap, so parts may add up to more than the wall time).

On a CPU the host work (decoding, writing) competes with the forward for the cores: `--threads 1` gives the
forward one core and the pipeline's threads the others, as a GPU leaves the host's cores to the pipeline.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run as `python bench/bench_extract.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import common
from pipeline.data.synth import write_synthetic
from pipeline.model.precision import autocast
from pipeline.settings import encoder_batch_size
from stages.extract import (
    ExtractConfig,
    InputCache,
    Timings,
    batch_plan,
    cfg_encoder,
    compute_precision,
    extract,
    load_inputs,
    split_index,
)


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA work is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stage(cfg: ExtractConfig) -> tuple[float, float, int, Timings]:
    """Seconds of the store set-up (groups and arrays created: once per store), seconds of the stage's work
    after it, rows computed and the time breakdown of a full extract run into a fresh store."""
    timings = Timings()
    t = time.perf_counter()
    computed = extract(cfg, progress=False, timings=timings)["computed"]
    total = time.perf_counter() - t
    setup = timings.seconds.pop("prepare")
    return setup, total - setup, computed, timings


def host_inputs(cfg: ExtractConfig, name: str) -> list[torch.Tensor]:
    """Every row's input as the stage sends it to the device (uint8 frames), decoded beforehand and already
    on the device, cut into the stage's batches."""
    enc = cfg_encoder(cfg, name)
    out = []
    for split in cfg.splits:
        clips, index = split_index(cfg, split)
        items, _, _ = load_inputs(
            enc, {c.id: c for c in clips}, index, np.arange(len(index)), InputCache.for_encoder(enc)
        )
        for idx in batch_plan(items, encoder_batch_size(cfg, name)):
            out.append(enc.host_input(np.stack([items[i] for i in idx])).to(enc.device))
    return out


def time_forward(
    cfg: ExtractConfig, name: str, batches: list[torch.Tensor], preprocess: bool
) -> tuple[float, int]:
    """Seconds and rows of the bare forward (in the stage's precision) over inputs already on the device:
    with `preprocess`, from uint8 frames (resize and normalisation on the device, the device's whole job
    per frame); without, from inputs preprocessed beforehand (the model alone)."""
    enc = cfg_encoder(cfg, name)
    precision = compute_precision(cfg)
    with torch.inference_mode():
        xs = batches if preprocess else [enc.device_input(x) for x in batches]
    sync(enc.device)
    t = time.perf_counter()
    with torch.inference_mode(), autocast(precision, enc.device):
        for x in xs:
            enc.encode(enc.device_input(x) if preprocess else x)
    sync(enc.device)
    return time.perf_counter() - t, sum(len(x) for x in batches)


def breakdown(t: Timings, seconds: float) -> str:
    """The stage's parts as shares of its wall time."""
    return ", ".join(f"{k} {v / seconds:.0%}" for k, v in sorted(t.seconds.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> None:
    """Print the stage/forward table and where the stage's time goes."""
    ap = common.parser(__doc__, "repeats", "batch_size", "device", threads=1, repeats=5, device="cpu")
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--subset", default="ms3", choices=["s4", "ms3"])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--encoders", nargs="+", default=["clip", "sam2", "beit3", "clap"])
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="build every encoder with seeded random weights (the paper preset's sizes without its files)",
    )
    a = common.parse(ap, argv)  # --batch-size: every encoder's (default: the preset's)
    with common.Figures(a.json) as out:
        measure(a, out)


def measure(a, out: common.Figures) -> None:
    """Per encoder, then the frame encoders together: stage vs forward."""
    tmp = Path(tempfile.mkdtemp(prefix="av2t-bench-extract-"))
    try:
        write_synthetic(tmp / "data", a.subset, videos=a.videos, seed=0)
        base = ExtractConfig(
            root=tmp / "data",
            subset=a.subset,
            preset=a.preset,
            device=a.device,
            precision=a.precision,
            batch_size=a.batch_size,
            threads=a.threads,
            overrides={n: {"weights": None} for n in a.encoders} if a.random_weights else {},
        )
        print(
            f"{a.subset}, {a.videos} videos, preset {a.preset}, device {a.device}, precision "
            f"{compute_precision(base)}, torch threads {torch.get_num_threads()}, best of {a.repeats} after a "
            "warm-up\n"
            "forward: from uint8 frames on the device (its resize + normalisation + model: the device's whole "
            "job); model: the model alone on preprocessed inputs. stage: the extract stage's work, decode to "
            "completion record, after the store's one-time set-up (shown apart)\n"
        )
        head = ("encoder", "rows", "stage fr/s", "forward fr/s", "stage/forward", "model fr/s", "stage/model")
        print(f"{head[0]:<16}{head[1]:>6}{head[2]:>12}{head[3]:>14}{head[4]:>15}{head[5]:>12}{head[6]:>13}")
        runs = 0

        def stage_run(encoders: list[str]) -> tuple[float, float, int, Timings]:
            nonlocal runs
            runs += 1
            cfg = base.model_copy(update={"encoders": encoders, "store": str(tmp / f"s{runs}.zarr")})
            try:
                return time_stage(cfg)
            finally:
                shutil.rmtree(tmp / f"s{runs}.zarr", ignore_errors=True)

        def row(label: str, rows: int, stage: float, fwd: float, model: float) -> None:
            out.add(
                label,
                {
                    "rows": rows,
                    "stage fr/s": rows / stage,
                    "forward fr/s": rows / fwd,
                    "model fr/s": rows / model,
                },
            )
            print(
                f"{label:<16}{rows:>6}{rows / stage:>12.1f}{rows / fwd:>14.1f}{fwd / stage:>15.2f}"
                f"{rows / model:>12.1f}{model / stage:>13.2f}"
            )

        # Side by side: each repeat times the forwards and the stage one after the other (this machine's
        # speed drifts); the first repeat is a warm-up; the best of the others is kept for each.
        fwd: dict[str, float] = {}
        model: dict[str, float] = {}
        rows = 0
        for name in a.encoders:
            cfg = base.model_copy(update={"encoders": [name]})
            batches = host_inputs(cfg, name)
            best = None
            for i in range(a.repeats + 1):
                f, rows = time_forward(cfg, name, batches, True)
                m, _ = time_forward(cfg, name, batches, False)
                got = stage_run([name])
                assert got[2] == rows, (got[2], rows)
                if i:
                    fwd[name], model[name] = min(fwd.get(name, f), f), min(model.get(name, m), m)
                    best = got if best is None or got[1] < best[1] else best
            setup, stage, _, timings = best
            row(name, rows, stage, fwd[name], model[name])
            print(f"{'':<16}set-up {setup:.2f} s; where the stage's time goes: {breakdown(timings, stage)}")
        frames = [n for n in a.encoders if cfg_encoder(base, n).input == "frames"]
        if len(frames) > 1:
            best = None
            for i in range(a.repeats + 1):
                got = stage_run(frames)
                best = got if i and (best is None or got[1] < best[1]) else best
            setup, stage, _, timings = best
            label = "+".join(frames)
            row(label, rows, stage, sum(fwd[n] for n in frames), sum(model[n] for n in frames))
            print(
                f"{'':<16}each frame decoded once for all; set-up {setup:.2f} s; where the stage's time goes: "
                f"{breakdown(timings, stage)}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
