"""Object-store benchmark: read rates of the same rows from an S3 API (moto's server on loopback, s3fs) and
from a local store, side by side. No bar: the figures say what a bucket costs against a local disk.

Run: python -m bench.bench_object_store [--rows 64] [--batch-size 8] [--repeats 2] [--json]
It starts its own moto server (needs the dev extra: s3fs, moto[server]). The rows are SAM 2 image embeddings
(256 x 64 x 64 float16, 2 MiB each, the largest array a head trains from), written through the cache API with
the default codec. Measured per store, best of --repeats: the whole split read in order (`EncoderGroup.read`),
a resident load (`open_reader(mode="resident")`: the split read once into memory) and a streaming epoch of
shuffled batches (`open_reader(mode="streaming")`). Loopback has no network latency: a real bucket is slower
than this, a local one can be close to it; compare the ratios on one machine, not the absolute numbers.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/bench_object_store.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np

from bench import common
from bench.bench_store import SHAPE, realistic_maps
from cache import ArraySpec, FeatureStore, SplitIndex
from cache.batches import Source
from cache.feed import open_reader
from cache.specs import DEFAULT_CODEC


def write_store(url: str, x: np.ndarray, block_rows: int):
    """The rows x into a fresh store at url (default codec); its encoder group."""
    rows = [(f"v{i // 5:04d}", i % 5 + 1, "c", True) for i in range(len(x))]
    g = FeatureStore(url, mode="w").require_split("s4", "train", SplitIndex.from_rows(rows), block_rows)
    enc = g.require_encoder("bench", {"codec": DEFAULT_CODEC}, {"fmap": ArraySpec(SHAPE, "float16")})
    for b in range(g.n_blocks):
        enc.write_block(b, {"fmap": x[g.block_slice(b)]})
    return enc


def best(repeats: int, fn) -> float:
    """The shortest of `repeats` timed calls of fn (seconds)."""
    out = []
    for r in range(repeats):
        t = time.perf_counter()
        fn(r)
        out.append(time.perf_counter() - t)
    return min(out)


def timings(url: str, key: str, n: int, a) -> dict[str, float]:
    """Seconds of each read of one store."""
    source = {"fmap": Source(key, "fmap")}
    options = {"batch_size": a.batch_size, "shuffle": True, "seed": 0, "threads": a.reader_threads}

    def whole(_):
        enc = FeatureStore(url, mode="r").split("s4", "train").encoder("bench")
        assert enc.read("fmap", slice(0, n)).shape[0] == n

    def resident(_):
        open_reader(url, "s4", "train", source, **options, mode="resident")

    def streaming(r):
        reader = open_reader(url, "s4", "train", source, **options, mode="streaming")
        for b in reader.epoch(r):
            b["fmap"].sum()

    return {
        "whole split, in order": best(a.repeats, whole),
        "resident load": best(a.repeats, resident),
        "streaming epoch (shuffled)": best(a.repeats, streaming),
    }


def main(argv: list[str] | None = None) -> None:
    """Print the side-by-side table of read rates."""
    ap = common.parser(__doc__, "repeats", "batch_size", threads=1, repeats=2, batch_size=8)
    ap.add_argument("--rows", type=int, default=64, help="rows written to each store")
    ap.add_argument("--block-rows", type=int, default=16, help="rows per block (shard)")
    ap.add_argument("--reader-threads", type=int, default=4, help="threads of the streaming reader")
    a = common.parse(ap, argv)
    with common.Figures(a.json) as out:
        measure(a, out)


def measure(a, out: common.Figures) -> None:
    """Write the rows to both stores, time the reads, print the table."""
    server = common.test_helper("s3_server")
    why = server.missing()
    if why:
        raise SystemExit(f"bench_object_store needs an S3 server: {why}")
    x = realistic_maps(a.rows)
    mib = x.nbytes / 2**20
    tmp = Path(tempfile.mkdtemp(prefix="av2t-bench-"))
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    saved["AWS_DEFAULT_REGION"] = os.environ.get("AWS_DEFAULT_REGION")
    try:
        with server.s3_server(tmp / "moto.log") as s3:
            os.environ.update(s3.env)
            stores = {"local": str(tmp / "local.zarr"), "s3": s3.make_bucket("bench") + "/store.zarr"}
            print(
                f"{a.rows} rows of float16 {SHAPE} ({mib:.0f} MiB), codec {DEFAULT_CODEC}, blocks of "
                f"{a.block_rows} rows, batches of {a.batch_size}, best of {a.repeats}; S3: moto server at "
                f"{s3.endpoint} (loopback), s3fs\n"
            )
            keys, writes = {}, {}
            for name, url in stores.items():
                t = time.perf_counter()
                keys[name] = write_store(url, x, a.block_rows).key
                writes[name] = time.perf_counter() - t
            times = {name: timings(url, keys[name], a.rows, a) for name, url in stores.items()}
            rows = [
                {
                    "read": what,
                    "local MiB/s": mib / times["local"][what],
                    "s3 MiB/s": mib / times["s3"][what],
                    "s3 / local": times["local"][what] / times["s3"][what],
                }
                for what in times["local"]
            ]
            rows.append(
                {
                    "read": "write (through the cache API)",
                    "local MiB/s": mib / writes["local"],
                    "s3 MiB/s": mib / writes["s3"],
                    "s3 / local": writes["local"] / writes["s3"],
                }
            )
            out.table("rates", rows, ".2f")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
