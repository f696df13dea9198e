"""The train stage's reader at paper shapes vs a plain mmap read of the same bytes, side by side in one run.

Run: python -m bench.bench_feed [--rows 128] [--codec zstd] [--epochs 2] [--batch-size 8] [--json]

Writes --rows paper-shaped rows (SAM 2 embedding, both high-res levels after conv, BEiT-3 patches, CLIP,
CLAP, GT mask; float16) through the cache API (default codec unless --codec), saves the same arrays as
.npy files, warms the page cache for both, then reads two shuffled epochs of batches of 8 (the reader's own
order, so every side reads the same batches): plain `np.load(mmap_mode="r")` fancy-indexed, the train
stage's reader (`cache.feed.open_reader`) streaming and resident, and the old FeatureBatches. Prints MiB/s
and each reader's ratio to the plain read.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/bench_feed.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np

from bench import common
from cache import ArraySpec, FeatureStore, SplitIndex
from cache.batches import FeatureBatches, Source, prefetch
from cache.feed import open_reader
from cache.specs import CODECS


def fake_rows(shape: tuple[int, ...], dtype: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Feature-like float16 (normal, per-channel scale: compresses like real features, ~10%), binary masks."""
    if dtype == "uint8":
        return (rng.random((n, *shape)) < 0.3).astype(np.uint8)
    scale = rng.lognormal(0, 0.5, (1, shape[0]) + (1,) * (len(shape) - 1)).astype(np.float32)
    return (rng.standard_normal((n, *shape), dtype=np.float32) * scale).astype(np.float16)


def write(
    tmp: Path, n: int, codec: str | None, block_rows: int
) -> tuple[str, dict[str, Source], dict[str, Path]]:
    """The store of every paper-shaped array (through the cache API) and one .npy per array, same bytes."""
    paper = common.paper_shapes()
    url = str(tmp / "store.zarr")
    index = SplitIndex.from_rows([(f"v{i // 5:04d}", i % 5 + 1, "c", True) for i in range(n)])
    g = FeatureStore(url, mode="w").require_split("s4", "train", index, block_rows)
    specs = {
        k: (ArraySpec(s, d) if codec is None or d != "float16" else ArraySpec(s, d, codec))
        for k, (s, d) in paper.items()
    }
    enc = g.require_encoder("bench", {"codec": codec or "default"}, specs)
    rng = np.random.default_rng(0)
    mms = {k: np.lib.format.open_memmap(tmp / f"{k}.npy", "w+", d, (n, *s)) for k, (s, d) in paper.items()}
    for b in range(g.n_blocks):
        sl = g.block_slice(b)
        data = {k: fake_rows(s, d, sl.stop - sl.start, rng) for k, (s, d) in paper.items()}
        enc.write_block(b, data)
        for k, x in data.items():
            mms[k][sl] = x
    for m in mms.values():
        m.flush()
    del mms
    return url, {k: Source(enc.key, k) for k in paper}, {k: tmp / f"{k}.npy" for k in paper}


def warm(paths: list[Path]) -> None:
    """Read every file once (page cache warm)."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


def main(argv: list[str] | None = None) -> None:
    """Print MiB/s of each reader and its ratio to the plain mmap read."""
    ap = common.parser(__doc__, "repeats", "batch_size", repeats=3, batch_size=8)
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--block-rows", type=int, default=32)
    ap.add_argument(
        "--codec", choices=sorted(CODECS), default=None, help="float arrays (default: ArraySpec's)"
    )
    ap.add_argument("--reader-threads", type=int, default=4, help="the reader's decode threads")
    ap.add_argument("--window", type=int, default=8)
    a = common.parse(ap, argv)
    with common.Figures(a.json) as out:
        measure(a, out)


def measure(a, out: common.Figures) -> None:
    """Write the rows, then time every reader side by side."""
    tmp = Path(tempfile.mkdtemp(prefix="av2t-feed-"))
    try:
        t = time.perf_counter()
        url, srcs, npys = write(tmp, a.rows, a.codec, a.block_rows)
        codec = a.codec or ArraySpec((1,)).codec
        group = FeatureStore(url, mode="r").split("s4", "train")
        enc = group.encoders()[0]
        stored, raw = enc.nbytes_stored(), enc.nbytes()
        print(
            f"{a.rows} paper-shaped rows ({raw / a.rows / 2**20:.2f} MiB/row, {raw / 2**30:.2f} GiB), float codec "
            f"{codec}: stored {stored / 2**30:.2f} GiB ({1 - stored / raw:.1%} saved), written in "
            f"{time.perf_counter() - t:.0f} s; batches of {a.batch_size}, {a.epochs} shuffled epochs\n"
        )
        warm(list(npys.values()) + [p for p in Path(url).rglob("*") if p.is_file()])
        mib = a.epochs * raw / 2**20

        kw = {
            "batch_size": a.batch_size,
            "shuffle": True,
            "seed": 0,
            "window": a.window,
            "threads": a.reader_threads,
        }
        streaming = open_reader(url, "s4", "train", srcs, mode="streaming", **kw)
        # The same batches for every side: the reader's order.
        orders = []
        for e in range(a.epochs):
            streaming.set_epoch(e)
            orders.append([b.copy() for b in streaming._batches])

        def plain() -> None:
            mms = {k: np.load(p, mmap_mode="r") for k, p in npys.items()}
            for batches in orders:
                for rows in batches:
                    for m in mms.values():
                        m[rows]  # fancy index: a copy of the rows

        def reader(r) -> None:
            for e in range(a.epochs):
                for _ in r.epoch(e):
                    pass

        results: dict[str, float] = {}

        def best(name: str, seconds: float) -> None:
            results[name] = min(results.get(name, float("inf")), seconds)

        old = FeatureBatches(url, "s4", "train", srcs, batch_size=a.batch_size, shuffle=True, seed=0)
        load = float("inf")
        for _ in range(a.repeats):  # sides interleaved, best of repeats: the machine may be shared
            t = time.perf_counter()
            plain()
            best("plain np.load(mmap) fancy index", time.perf_counter() - t)
            t = time.perf_counter()
            reader(streaming)
            best(f"open_reader streaming ({a.reader_threads} threads)", time.perf_counter() - t)
            t = time.perf_counter()
            resident = open_reader(url, "s4", "train", srcs, mode="resident", **kw)
            opened = time.perf_counter() - t
            load = min(load, opened)
            reader(resident)
            best("open_reader resident, incl. load", time.perf_counter() - t)
            best("open_reader resident, epochs only", time.perf_counter() - t - opened)
            del resident
            t = time.perf_counter()
            for e in range(a.epochs):
                for _ in prefetch(old, e):
                    pass
            best("FeatureBatches (before)", time.perf_counter() - t)
        resident = open_reader(url, "s4", "train", srcs, **kw)
        base = results["plain np.load(mmap) fancy index"]
        out.add("seconds", results)
        out.add("MiB/s", {name: mib / s for name, s in results.items()})
        print(f"{'reader':<40}{'seconds':>9}{'MiB/s':>9}{'vs plain':>10}")
        for name, s in results.items():
            print(f"{name:<40}{s:>9.2f}{mib / s:>9.0f}{base / s:>10.2f}")
        print(
            f"\nresident load: {load:.2f} s ({raw / 2**20 / load:.0f} MiB/s); defaults: {resident.describe()}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
