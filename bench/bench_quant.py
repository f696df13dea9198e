"""int8 feature maps against float16: bytes per frame, and what quantisation costs in M_J / M_F.

Run: python bench/bench_quant.py [--videos 24] [--epochs 20] [--seed 0] [--threads 2]
(a) Bytes per frame per SAM 2 array, float16 vs int8 (+ its float32 scales), at the tiny preset's shapes
and at the paper's (Hiera-L at 1024 px: after-conv and before-conv high-res levels, adapters from trunk
block 44), read off the encoder classes built with parameters on meta (no weights loaded); then S4
train / val totals of the before-conv variant. (b) On synthetic S4 and MS3 sets (tiny preset, one seed):
a float16 and an int8 store extracted from the same frames, the same head trained on each, evaluated
cached on the test split; plus the float16-trained head evaluated on the int8 store (the error of
quantising at inference only). The goal: half the bytes, |delta M_J| <= 0.01.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/bench_quant.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])


from bench import common
from pipeline.data.synth import write_synthetic
from pipeline.settings import ExtractConfig, OptimConfig, TrainConfig
from stages.evaluate import EvalConfig, evaluate
from stages.extract import extract
from stages.train import train

# S4 rows the train stage reads per epoch (shared/PERFORMANCE.md): train = frame 1 of each video.
S4_ROWS = {"train": 3452, "val": 3700}
GOAL_RATIO, GOAL_DELTA = 0.5, 0.01


def row_bytes(shape: tuple[int, ...]) -> tuple[int, int]:
    """(float16, int8 + float32 scale per channel) bytes of one row of a (C, H, W) map."""
    n = math.prod(shape)
    return 2 * n, n + 4 * shape[0]


def mib(n: float) -> str:
    return f"{n / 2**20:9.3f}"


def bytes_table(title: str, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """Print one variant's bytes per frame, array by array; returns the totals (float16, int8)."""
    print(f"\n{title}")
    print(f"  {'array':<22} {'shape':<18} {'fp16 MiB':>9} {'int8 MiB':>9} {'ratio':>6}")
    tf = tq = 0
    for name, shape in shapes.items():
        f, q = row_bytes(shape)
        tf, tq = tf + f, tq + q
        print(f"  {name:<22} {str(shape):<18} {mib(f)} {mib(q)} {q / f:6.3f}")
    print(f"  {'total':<22} {'':<18} {mib(tf)} {mib(tq)} {tq / tf:6.3f}")
    return tf, tq


def part_bytes(out: common.Figures) -> None:
    """(a): bytes per frame at the tiny and paper shapes, and S4 totals of the before-conv variant."""
    print("== (a) bytes per frame, SAM 2 arrays (shapes from the encoder classes, parameters on meta) ==")
    for preset in ("tiny", "paper"):
        for hr in ("after_conv", "before_conv"):
            title = f"{preset} preset, highres={hr}"
            out.add(title, bytes_table(title, common.sam2_shapes(preset, hr)))
    shapes = common.sam2_shapes("paper", "after_conv", 44)
    out.add(
        "paper preset, adapters from trunk block 44",
        bytes_table(
            "paper preset, adapters from trunk block 44 (after_conv levels + trunk_in + stage_out_*)", shapes
        ),
    )
    tf = tq = 0
    for shape in common.sam2_shapes("paper", "before_conv").values():
        f, q = row_bytes(shape)
        tf, tq = tf + f, tq + q
    print(
        "\nS4, paper preset, before_conv, SAM 2 arrays only (GiB; CLIP / CLAP / BEiT-3 / masks not counted):"
    )
    for split, n in S4_ROWS.items():
        print(f"  {split:<5} {n:>5} rows: float16 {n * tf / 2**30:7.1f}   int8 {n * tq / 2**30:7.1f}")


def run_subset(subset: str, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """(b) for one subset: float16 and int8 stores, a head trained on each, cached test M_J / M_F."""
    root = work / subset / "data"
    write_synthetic(root, subset, videos=args.videos, seed=args.seed)
    out: dict[str, float] = {}
    ckpt, stores = {}, {}
    for q in ("none", "int8"):
        stores[q] = str(work / subset / f"{q}.zarr")
        t0 = time.perf_counter()
        extract(
            ExtractConfig(
                root=root, subset=subset, store=stores[q], device="cpu", quantize=q, threads=args.threads
            ),
            progress=False,
        )
        t1 = time.perf_counter()
        train(
            TrainConfig(
                store=stores[q],
                subset=subset,
                device="cpu",
                out=work / subset / f"head-{q}",
                progress=False,
                seed=args.seed,
                threads=args.threads,
                optim=OptimConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr),
            )
        )
        ckpt[q] = work / subset / f"head-{q}" / "best.pt"
        t2 = time.perf_counter()
        print(f"  {subset} {q:>4}: extract {t1 - t0:5.1f} s, train {t2 - t1:5.1f} s", flush=True)
    for head, store in (("none", "none"), ("int8", "int8"), ("none", "int8")):
        r = evaluate(
            EvalConfig(
                checkpoint=ckpt[head],
                root=root,
                subset=subset,
                store=stores[store],
                device="cpu",
                out=work / subset / f"eval-{head}-{store}",
                progress=False,
                overlays=0,
                threads=args.threads,
            )
        )
        out[f"{head}/{store}"] = (r["M_J"], r["M_F"])
    from cache import FeatureStore

    sizes = {
        q: sum(
            FeatureStore(stores[q], mode="r").split(subset, sp).encoder("sam2").nbytes()
            for sp in ("train", "val", "test")
        )
        for q in stores
    }
    out["bytes_ratio"] = sizes["int8"] / sizes["none"]
    return out


def part_accuracy(args: argparse.Namespace, out: common.Figures) -> list[str]:
    """(b): the table; returns the subsets missing the goal."""
    print(
        f"\n== (b) M_J / M_F on synthetic sets: {args.videos} videos, tiny preset, seed {args.seed}, "
        f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}; cached evaluation of the test split =="
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for subset in args.subsets:
            results[subset] = run_subset(subset, Path(tmp), args)
    out.add("accuracy", results)
    print(
        f"\n{'subset':<6} {'sam2 bytes':>10} {'M_J fp16':>9} {'M_J int8':>9} {'delta':>8} {'M_F fp16':>9} "
        f"{'M_F int8':>9} {'delta':>8} | fp16 head on int8 store: {'M_J':>7} {'delta':>8}"
    )
    missed = []
    for subset, r in results.items():
        (jf, ff), (jq, fq), (jx, _) = r["none/none"], r["int8/int8"], r["none/int8"]
        print(
            f"{subset:<6} {r['bytes_ratio']:>9.3f}x {jf:9.4f} {jq:9.4f} {jq - jf:+8.4f} {ff:9.4f} {fq:9.4f} "
            f"{fq - ff:+8.4f} | {'':>24} {jx:7.4f} {jx - jf:+8.4f}"
        )
        if abs(jq - jf) > GOAL_DELTA or r["bytes_ratio"] > GOAL_RATIO + 0.02:
            missed.append(subset)
    print(
        f"goal: sam2 bytes <= ~{GOAL_RATIO}x, |delta M_J| <= {GOAL_DELTA}: "
        + ("met" if not missed else f"missed on {', '.join(missed)}")
    )
    return missed


def main(argv: list[str] | None = None) -> int:
    """Both parts; 1 when the goal is missed on a subset."""
    # the same --threads for every run: identical features
    p = common.parser(__doc__.splitlines()[0], "batch_size", threads=2, batch_size=4)
    p.add_argument("--videos", type=int, default=24, help="synthetic videos per subset")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subsets", nargs="+", default=["s4", "ms3"], choices=["s4", "ms3"])
    p.add_argument("--skip-accuracy", action="store_true", help="only the bytes tables")
    args = common.parse(p, argv)
    opts = [
        *("--videos", str(args.videos), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)),
        *("--lr", str(args.lr), "--seed", str(args.seed), "--threads", str(args.threads)),
        *("--subsets", *args.subsets),
        *(["--skip-accuracy"] if args.skip_accuracy else []),
    ]
    t0 = time.perf_counter()
    with common.Figures(args.json) as out:
        print("reproduce: python -m bench.bench_quant " + shlex.join(opts))
        part_bytes(out)
        missed = out.add("goal missed on", [] if args.skip_accuracy else part_accuracy(args, out))
        print(f"\n{time.perf_counter() - t0:.0f} s")
    return common.exit_code(not missed, f"int8 goal missed on {missed}")


if __name__ == "__main__":
    sys.exit(main())
