"""Feature-store benchmark: read throughput of training batches vs a plain read, and bytes/frame per codec.

Run: python -m bench.bench_store [--frames 48] [--batch-size 8] [--repeats 3] [--json]
Everything is measured side by side in one run; compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/bench_store.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch

from bench import common
from cache import ArraySpec, FeatureStore, SplitIndex
from cache.batches import FeatureBatches, Source
from cache.feed import open_reader
from cache.specs import CODECS

# SAM 2's 64x64 image embedding (256 channels): the largest array a head trains from.
SHAPE = (256, 64, 64)


def realistic_maps(n: int, seed: int = 0) -> np.ndarray:
    """Float16 maps with the statistics of conv features: spatially smooth, GELU-skewed, per-channel scale."""
    rng = np.random.default_rng(seed)
    c, h, w = SHAPE
    coarse = torch.from_numpy(rng.standard_normal((n, c, h // 8, w // 8)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    fine = torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(np.float32))
    scale = torch.from_numpy(rng.lognormal(0, 0.5, (1, c, 1, 1)).astype(np.float32))
    x = torch.nn.functional.gelu(smooth + 0.3 * fine) * scale
    return x.numpy().astype(np.float16)


def write_store(url: str, x: np.ndarray, codec: str, block_rows: int) -> tuple[float, object]:
    """Write x into a fresh store; return seconds and the encoder group."""
    rows = [(f"v{i // 5:04d}", i % 5 + 1, "c", True) for i in range(len(x))]
    g = FeatureStore(url, mode="w").require_split("s4", "train", SplitIndex.from_rows(rows), block_rows)
    enc = g.require_encoder("bench", {"codec": codec}, {"fmap": ArraySpec(SHAPE, "float16", codec)})
    t = time.perf_counter()
    for b in range(g.n_blocks):
        enc.write_block(b, {"fmap": x[g.block_slice(b)]})
    return time.perf_counter() - t, enc


def time_store_epoch(url: str, enc, batch: int, seed: int) -> float:
    """Seconds to read every row once in shuffled training batches through FeatureBatches."""
    ds = FeatureBatches(
        url, "s4", "train", {"fmap": Source(enc.key, "fmap")}, batch_size=batch, shuffle=True, seed=seed
    )
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]["fmap"].sum()
    return time.perf_counter() - t


def time_reader_epoch(url: str, enc, batch: int, seed: int) -> float:
    """Seconds for one shuffled epoch through the train stage's reader, streaming (cache.feed.open_reader)."""
    r = open_reader(
        url, "s4", "train", {"fmap": Source(enc.key, "fmap")}, batch, True, seed, mode="streaming"
    )
    t = time.perf_counter()
    for b in r.epoch(0):
        b["fmap"].sum()
    return time.perf_counter() - t


def time_plain_epoch(path: Path, n: int, batch: int, seed: int) -> float:
    """Seconds to read the same shuffled batches of the same bytes from one raw .npy file."""
    order = np.arange(n)
    np.random.default_rng((seed, 0)).shuffle(order)
    t = time.perf_counter()
    mm = np.load(path, mmap_mode="r")
    for i in range(0, n, batch):
        torch.from_numpy(np.ascontiguousarray(mm[np.sort(order[i : i + batch])])).sum()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    """Print the read ratio and the bytes-per-frame table."""
    ap = common.parser(__doc__, "repeats", "batch_size", threads=1, repeats=3, batch_size=8)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--block-rows", type=int, default=16)
    a = common.parse(ap, argv)
    with common.Figures(a.json) as out:
        measure(a, out)


def measure(a, out: common.Figures) -> None:
    """Bytes per frame per codec, then shuffled-batch reads of the store vs a plain .npy."""
    x = realistic_maps(a.frames)
    frame_mib = x[0].nbytes / 2**20
    tmp = Path(tempfile.mkdtemp(prefix="av2t-bench-"))
    try:
        print(
            f"{a.frames} frames of float16 {SHAPE} ({frame_mib:.2f} MiB/frame raw), block {a.block_rows} rows\n"
        )
        print(f"{'codec':<24}{'bytes/frame':>14}{'ratio':>8}{'write MiB/s':>13}")
        stores = {}
        for codec in CODECS:
            url = str(tmp / f"{codec}.zarr")
            secs, enc = write_store(url, x, codec, a.block_rows)
            stored = enc.nbytes_stored()
            stores[codec] = (url, enc)
            out.add(f"{codec} bytes/frame", stored / a.frames)
            print(
                f"{codec:<24}{stored / a.frames:>14,.0f}{x.nbytes / stored:>8.3f}{x.nbytes / 2**20 / secs:>13.0f}"
            )

        raw = tmp / "plain.npy"
        np.save(raw, x)
        print(
            f"\nshuffled training batches of {a.batch_size}, best of {a.repeats} epochs (page cache warm for both):"
        )
        plain = min(time_plain_epoch(raw, a.frames, a.batch_size, s) for s in range(a.repeats))
        mib = x.nbytes / 2**20
        print(f"{'plain .npy read':<24}{out.add('plain MiB/s', mib / plain):>10.0f} MiB/s")
        for codec in ("none", "zstd"):
            url, enc = stores[codec]
            t = min(time_store_epoch(url, enc, a.batch_size, s) for s in range(a.repeats))
            out.add(f"store {codec} MiB/s", mib / t)
            print(
                f"{'store, ' + codec:<24}{mib / t:>10.0f} MiB/s   store/plain throughput ratio {plain / t:.2f}"
            )
            t = min(time_reader_epoch(url, enc, a.batch_size, s) for s in range(a.repeats))
            out.add(f"open_reader {codec} MiB/s", mib / t)
            print(
                f"{'open_reader, ' + codec:<24}{mib / t:>10.0f} MiB/s   store/plain throughput ratio {plain / t:.2f}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
