"""Training benchmark: one epoch from the store vs the same epoch with the encoders in the loop.

Run: python bench/bench_train.py [--videos 24] [--threads 2]
For the head without adapters and with adapters from a late Hiera block: seconds per epoch and peak
RSS (each mode in its own process), the measured speed-up of caching, and the bound the FLOP count
predicts (frozen-encoder forward removed by the cache, against the step that still runs). Then a
sweep of 4 heads against 4 separate runs (each its own process, as a user would run them).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/bench_train.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import common
from cache.batches import prefetch, sources, to_device
from pipeline.data.clips import read_clips
from pipeline.data.images import load_frame, load_mask
from pipeline.data.synth import write_synthetic
from pipeline.encoders.registry import get_encoder
from pipeline.model import head_config
from pipeline.model.build import build_model, frozen_encoders
from pipeline.settings import ExtractConfig, OptimConfig, TrainConfig
from stages.extract import InputCache, extract
from stages.train import fit, make_run, open_batches, open_features, train_step

SUBSET = "ms3"


def heads(late_block: int) -> dict[str, dict]:
    """The two heads the bench compares."""
    return {
        "no adapters": {},
        f"adapters from block {late_block}": {"adapters": True, "adapter_start_block": late_block},
    }


def prepare(tmp: Path, videos: int, late_block: int) -> None:
    """Synthetic MS3 and a store holding what both heads read."""
    write_synthetic(tmp / "data", SUBSET, videos=videos, seed=0)
    for over in ({}, {"sam2": {"trunk_block": late_block}}):
        extract(
            ExtractConfig(
                root=tmp / "data",
                subset=SUBSET,
                splits=["train", "val"],
                store=str(tmp / "store.zarr"),
                device="cpu",
                overrides=over,
                allow_other_fingerprints=True,  # SAM 2 with a trunk block is a second fingerprint
            ),
            progress=False,
        )


def setup(tmp: Path, head_fields: dict):
    """The head's run, its train config and frozen encoders."""
    head = head_config("tiny", **head_fields)
    cfg = TrainConfig(
        store=str(tmp / "store.zarr"),
        subset=SUBSET,
        device="cpu",
        out=tmp / "out",
        progress=False,
        resume=False,
        optim=OptimConfig(epochs=1, batch_size=8),
    )
    frozen = frozen_encoders(head, cfg.preset, device="cpu")
    feats = open_features(cfg, "train", frozen)
    model = build_model(head, cfg.preset, **feats.widths(), encoders=frozen)
    n = feats.groups["gt"].split.n_rows
    return cfg, feats, make_run("bench", head, model, cfg.optimiser(), -(-n // 8))


def raw_batches(tmp: Path, feats):
    """The same rows and batches as the cached epoch, decoded from PNG / WAV each time."""
    index = feats.index
    clips = {c.id: c for c in read_clips(tmp / "data", SUBSET, "train")}
    clip_enc = get_encoder("clip", "tiny", None, "cpu")
    clap_enc = get_encoder("clap", "tiny", None, "cpu")
    ds_rows = np.arange(len(index))
    order = ds_rows.copy()
    np.random.default_rng((0, 0)).shuffle(order)  # FeatureBatches' epoch-0 order for seed 0
    for i in range(0, len(order), 8):
        rows = order[i : i + 8]
        pairs = [(clips[index.video[r]], int(index.frame[r])) for r in rows]
        frames = np.stack([load_frame(c.frame_paths[k - 1]) for c, k in pairs])
        cache = InputCache(clap_enc.sample_rate)
        audio = np.stack([cache.segments(c)[k - 1] for c, k in pairs])
        masks = torch.from_numpy(np.stack([load_mask(c.mask_paths[k - 1]) for c, k in pairs])).float()
        with torch.no_grad():
            clip = clip_enc.encode(clip_enc.preprocess(frames))["clip"]
            clap = clap_enc.encode(clap_enc.preprocess(audio))["clap"]
        yield frames, clip, clap, masks


def live_step(run, frames, clip, clap, masks) -> None:
    """One step of the same head with SAM 2 and BEiT-3's patch embedding run live."""
    from pipeline.model import segmentation_loss

    run.model.train()
    out = run.model.forward_raw(frames, clip, clap)
    loss = segmentation_loss(out, masks, run.head)["loss"]
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()


def worker(tmp: Path, mode: str, head_fields: dict) -> dict:
    """Time one epoch in this process (after a warm-up step) and report peak RSS and FLOPs per step."""
    cfg, frozen, run = setup(tmp, head_fields)
    srcs = sources([run.model], frozen.groups)
    ds = open_batches(cfg, "train", srcs, True, 8)
    cached = [to_device(b, torch.device("cpu")) for b in prefetch(ds, 0)][:1]
    flops_cached = _flops(lambda: train_step(run, cached[0]))
    raw = next(raw_batches(tmp, frozen))
    # What the cache removes: CLIP + CLAP forward (inside raw_batches) and SAM 2 / BEiT-3 embedding (live_step).
    flops_live = _flops(lambda: next(raw_batches(tmp, frozen))) + _flops(lambda: live_step(run, *raw))
    t = time.perf_counter()
    steps = 0
    if mode == "cached":
        for b in prefetch(ds, 0):
            train_step(run, to_device(b, torch.device("cpu")))
            steps += 1
    else:
        for b in raw_batches(tmp, frozen):
            live_step(run, *b)
            steps += 1
    secs = time.perf_counter() - t
    compute = secs
    if mode == "cached":  # the same steps on batches already in memory: what data loading costs
        loaded = [to_device(b, torch.device("cpu")) for b in prefetch(ds, 0)]
        t = time.perf_counter()
        for b in loaded:
            train_step(run, b)
        compute = time.perf_counter() - t
    return {
        "seconds": secs,
        "compute_seconds": compute,
        "steps": steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flops_cached_step": flops_cached,
        "flops_live_step": flops_live,
    }


def _flops(fn) -> int:
    """FLOPs of one call (forward and backward) as torch's counter sees them."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _sub(args: list[str], threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_train", *args, "--threads", str(threads)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def sweep_worker(tmp: Path, names: list[str]) -> dict:
    """Train the named heads for one epoch in one pass (a sweep) in this process."""
    all_heads = {
        "mul": {"fusion": "mul"},
        "clip": {"fusion": "clip"},
        "clap": {"fusion": "clap"},
        "sum": {"fusion": "sum"},
    }
    t = time.perf_counter()
    cfg = TrainConfig(
        store=str(tmp / "store.zarr"),
        subset=SUBSET,
        device="cpu",
        out=tmp / f"sw-{'-'.join(names)}",
        progress=False,
        resume=False,
        optim=OptimConfig(epochs=1, batch_size=8),
    )
    fit(cfg, {n: head_config("tiny", **all_heads[n]) for n in names})
    return {"seconds": time.perf_counter() - t}


def main(argv: list[str] | None = None) -> None:
    """Print the epoch table, the ratios and the sweep ratio."""
    ap = common.parser(__doc__, threads=2)
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--late-block", type=int, default=5, help="first adapted block (tiny Hiera has 6)")
    ap.add_argument("--worker", nargs=3, metavar=("TMP", "MODE", "HEAD_JSON"))
    ap.add_argument("--sweep-worker", nargs=2, metavar=("TMP", "NAMES"))
    a = common.parse(ap, argv)
    if a.worker:
        print(json.dumps(worker(Path(a.worker[0]), a.worker[1], json.loads(a.worker[2]))))
        return
    if a.sweep_worker:
        print(json.dumps(sweep_worker(Path(a.sweep_worker[0]), a.sweep_worker[1].split(","))))
        return
    with common.Figures(a.json) as out:
        compare(a, out)


def compare(a, out: common.Figures) -> None:
    """Epochs cached vs live per head, then the sweep vs separate runs."""
    tmp = Path(tempfile.mkdtemp(prefix="av2t-bench-train-"))
    prepare(tmp, a.videos, a.late_block)
    print(
        f"synthetic {SUBSET}, {a.videos} videos, tiny preset, CPU, {a.threads} threads, batch 8, one epoch\n"
    )
    print(
        f"{'head':<24}{'mode':<8}{'s/epoch':>9}{'peak RSS MiB':>13}{'GFLOP/s':>9}{'speed-up':>10}"
        f"{'FLOP bound':>12}{'reached':>9}"
    )
    notes = []
    for name, fields in heads(a.late_block).items():
        r = {m: _sub(["--worker", str(tmp), m, json.dumps(fields)], a.threads) for m in ("cached", "live")}
        out.add(name, r)
        speed = r["live"]["seconds"] / r["cached"]["seconds"]
        bound = r["cached"]["flops_live_step"] / r["cached"]["flops_cached_step"]
        steps = r["cached"]["steps"]
        for m in ("cached", "live"):
            flops = r["cached"]["flops_cached_step" if m == "cached" else "flops_live_step"] * steps
            extra = f"{speed:>10.2f}{bound:>12.2f}{speed / bound:>9.0%}" if m == "live" else ""
            print(
                f"{name:<24}{m:<8}{r[m]['seconds']:>9.2f}{r[m]['peak_rss_mib']:>13.0f}"
                f"{flops / r[m]['seconds'] / 1e9:>9.1f}{extra}"
            )
        load = 1 - r["cached"]["compute_seconds"] / r["cached"]["seconds"]
        notes.append(
            f"{name}: data loading is {load:.0%} of the cached epoch "
            f"({r['cached']['compute_seconds']:.2f} s of steps on pre-loaded batches)"
        )
    print("\n".join(["", *notes]))
    print(
        "(GFLOP/s = FLOP count / epoch time. Where the cached step runs far below the FLOP rate of the\n"
        " encoders it replaces, the FLOP bound overstates what caching can save at this size.)"
    )
    names = ["mul", "clip", "clap", "sum"]
    one = _sub(["--sweep-worker", str(tmp), ",".join(names)], a.threads)["seconds"]
    separate = sum(_sub(["--sweep-worker", str(tmp), n], a.threads)["seconds"] for n in names)
    out.add("sweep", {"one pass seconds": one, "separate runs seconds": separate})
    print(
        f"\nsweep of {len(names)} heads in one pass: {one:.1f} s; {len(names)} separate runs: {separate:.1f} s; "
        f"ratio {one / separate:.2f}"
    )


if __name__ == "__main__":
    main()
