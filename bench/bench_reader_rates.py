"""Issue 25 item 2's reader bars, measured from outside exactly as the issue states, side by side in one run.

Run: python -m bench.bench_reader_rates [--rows 64] [--repeats 2] [--json]

Writes --rows paper-shaped rows (bench_feed's arrays) through the cache API with the default codec and the
same arrays as .npy files, warms the page cache, then per repeat (best kept; sides interleaved):
- plain: `np.load(mmap_mode="r")` of every .npy (opened once, outside the timing), two epochs of a fresh
  random permutation each (`default_rng((0, epoch))`), each batch of 8 rows sorted, `np.ascontiguousarray`
  of every field's fancy index;
- `open_reader(url, ..., batch_size=8, shuffle=True, seed=0, mode=m)` for streaming and resident, two epochs
  (resident: the epochs only, its open / load timed apart);
- bench_feed's plain side (np.load inside the timing, the reader's own block-shuffled order, no copy to a
  contiguous array) to show why bench_feed's ratios differ.
Prints MiB/s and the ratios reader / plain (bars: streaming >= 0.8, resident >= 0.95).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/bench_reader_rates.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np

from bench import common
from bench.bench_feed import warm, write
from cache import FeatureStore
from cache.feed import open_reader
from pipeline.settings import ExtractConfig

BATCH, EPOCHS = 8, 2
BARS = {"streaming": 0.8, "resident": 0.95}


def plain_outside(mms: dict[str, np.ndarray], n: int) -> int:
    """The issue's plain read: fresh permutation per epoch, rows sorted per batch, contiguous copy per field."""
    nb = 0
    for e in range(EPOCHS):
        order = np.random.default_rng((0, e)).permutation(n)
        for i in range(0, n, BATCH):
            rows = np.sort(order[i : i + BATCH])
            for m in mms.values():
                nb += np.ascontiguousarray(m[rows]).nbytes
    return nb


def plain_bench_feed(npys: dict[str, Path], orders: list[list[np.ndarray]]) -> None:
    """bench_feed's plain side: maps opened in the timing, the reader's order, the fancy index alone."""
    mms = {k: np.load(p, mmap_mode="r") for k, p in npys.items()}
    for batches in orders:
        for rows in batches:
            for m in mms.values():
                m[rows]


def read_epochs(r) -> int:
    """Two epochs of a reader; bytes served (row ids left out)."""
    nb = 0
    for e in range(EPOCHS):
        for b in r.epoch(e):
            nb += sum(v.numel() * v.element_size() for k, v in b.items() if k != "row")
    return nb


def main(argv: list[str] | None = None) -> None:
    """Print the side-by-side rates and the ratios."""
    ap = common.parser(__doc__, "repeats", repeats=2)
    ap.add_argument("--rows", type=int, default=64)
    a = common.parse(ap, argv)
    with common.Figures(a.json) as out:
        measure(a, out)


def measure(a, out: common.Figures) -> None:
    """Write, warm, then time every side `--repeats` times (best kept)."""
    tmp = Path(tempfile.mkdtemp(prefix="av2t-rates-"))
    try:
        block_rows = ExtractConfig.model_fields["block_rows"].default
        url, srcs, npys = write(tmp, a.rows, None, block_rows)
        raw = FeatureStore(url, mode="r").split("s4", "train").encoders()[0].nbytes()
        warm(list(npys.values()) + [p for p in Path(url).rglob("*") if p.is_file()])
        mib = EPOCHS * raw / 2**20
        kw = {"batch_size": BATCH, "shuffle": True, "seed": 0}
        mms = {k: np.load(p, mmap_mode="r") for k, p in npys.items()}
        streaming = open_reader(url, "s4", "train", srcs, mode="streaming", **kw)
        orders = []
        for e in range(EPOCHS):
            streaming.set_epoch(e)
            orders.append([b.copy() for b in streaming._batches])
        best: dict[str, float] = {}

        def keep(name: str, t0: float) -> None:
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)

        for _ in range(a.repeats):
            t = time.perf_counter()
            assert plain_outside(mms, a.rows) == EPOCHS * raw
            keep("plain (issue's outside check)", t)
            t = time.perf_counter()
            assert read_epochs(streaming) == EPOCHS * raw
            keep("streaming", t)
            t = time.perf_counter()
            resident = open_reader(url, "s4", "train", srcs, mode="resident", **kw)
            keep("resident open (load)", t)
            t = time.perf_counter()
            assert read_epochs(resident) == EPOCHS * raw
            keep("resident", t)
            del resident
            t = time.perf_counter()
            plain_bench_feed(npys, orders)
            keep("plain (bench_feed's side)", t)
        base = best["plain (issue's outside check)"]
        bf = best["plain (bench_feed's side)"]
        rows = [
            {
                "side": k,
                "seconds": s,
                "MiB/s": mib / s if k != "resident open (load)" else raw / 2**20 / s,
                "vs plain (issue)": base / s,
                "vs plain (bench_feed)": bf / s,
                "bar": BARS.get(k, ""),
            }
            for k, s in best.items()
        ]
        print(
            f"{a.rows} paper-shaped rows ({raw / a.rows / 2**20:.2f} MiB/row), default codec, {block_rows} rows "
            f"per block, batches of {BATCH}, {EPOCHS} epochs, page cache warm, best of {a.repeats}\n"
        )
        out.table("sides", rows, ".3f")
        out.add("ratios", {m: base / best[m] for m in BARS})
        print(
            "\nratios vs the issue's plain read: "
            + ", ".join(f"{m} {base / best[m]:.2f} (bar {b})" for m, b in BARS.items())
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
