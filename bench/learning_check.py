"""Does training from the store learn? Synthetic S4 and MS3, tiny preset, CPU: heads vs trivial baselines.

Run: python -m bench.learning_check [--s4-videos 300] [--ms3-videos 120] [--epochs 15] [--out runs/learning]
Prints, per subset, validation M_J / M_F of the trained heads next to all-background, all-foreground
and the best fixed centred disc (its radius chosen on the validation masks themselves, an upper bound
for any blob). The check (exit 1 when it fails): on every subset the `mul` head beats every baseline on
M_J, and on MS3 it beats `clip`: only the audio says which visible object sounds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if not __package__:  # run as `python bench/learning_check.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import pandas as pd
import torch

from bench import common
from cache import FeatureStore
from pipeline.metrics import MetricAccumulator
from pipeline.model import head_config
from stages.train import OptimConfig, TrainConfig, sweep

BASELINES = ("all background", "all foreground", "best centred disc")


def baseline_scores(store: str, subset: str) -> pd.DataFrame:
    """M_J / M_F of constant predictions on the validation masks (one video per M_F batch)."""
    g = FeatureStore(store, mode="r").split(subset, "val")
    masks = torch.from_numpy(g.encoder("gt").array("mask")[:]).float()
    index = g.index
    yy, xx = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
    dist = ((yy - 111.5) ** 2 + (xx - 111.5) ** 2).sqrt()
    preds = {"all background": torch.full((224, 224), -10.0), "all foreground": torch.full((224, 224), 10.0)}
    best = max(
        ((r, _score(index, masks, torch.where(dist <= r, 10.0, -10.0))) for r in range(8, 113, 8)),
        key=lambda t: t[1]["val_M_J"],
    )
    preds[f"best centred disc (r={best[0]})"] = torch.where(dist <= best[0], 10.0, -10.0)
    rows = [{"head": name, **_score(index, masks, p)} for name, p in preds.items()]
    return pd.DataFrame(rows)


def _score(index, masks: torch.Tensor, pred: torch.Tensor) -> dict[str, float]:
    acc = MetricAccumulator(batching="video")
    for v in index.videos():
        rows = index.rows_of(v)
        acc.add(v, pred.expand(len(rows), -1, -1), masks[rows], frames=index.frame[rows].tolist())
    s = acc.summary()
    return {"val_M_J": s["M_J"], "val_M_F": s["M_F"]}


def run_subset(
    subset: str, videos: int, epochs: int, batch_size: int, out: Path, heads: dict
) -> pd.DataFrame:
    """Synthesise, extract, train the heads in one sweep, and add the baselines."""
    t = time.perf_counter()
    _, store = common.synthetic_store(out, subset, videos, splits=["train", "val"])
    print(f"{subset}: synthesised and extracted in {time.perf_counter() - t:.0f} s")
    cfg = TrainConfig(
        store=store,
        subset=subset,
        device="cpu",
        out=out / f"train-{subset}",
        progress=False,
        resume=False,
        optim=OptimConfig(epochs=epochs, batch_size=batch_size),
    )
    t = time.perf_counter()
    table = sweep(cfg, {k: head_config("tiny", **v) for k, v in heads.items()})
    print(f"{subset}: trained {len(heads)} head(s) x {epochs} epochs in {time.perf_counter() - t:.0f} s")
    trained = table[["head", "params", "best_epoch", "val_M_J", "val_M_F", "train_seconds"]]
    return pd.concat([trained, baseline_scores(store, subset)], ignore_index=True)


def learned(subset: str, table: pd.DataFrame) -> list[str]:
    """What the check finds missing on one subset's table (empty: it learned)."""
    mj = dict(zip(table["head"], table["val_M_J"], strict=True))
    base = max(v for k, v in mj.items() if k.startswith(BASELINES))
    missing = [] if mj["mul"] > base else [f"{subset}: mul M_J {mj['mul']:.4f} <= best baseline {base:.4f}"]
    if "clip" in mj and mj["mul"] <= mj["clip"]:
        missing.append(f"{subset}: mul M_J {mj['mul']:.4f} <= clip {mj['clip']:.4f}")
    return missing


def main(argv: list[str] | None = None) -> int:
    """Print both tables; 0 when the heads learned (the check above), else 1."""
    ap = common.parser(__doc__, "batch_size", batch_size=8)
    ap.add_argument("--s4-videos", type=int, default=300)
    ap.add_argument("--ms3-videos", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("runs/learning"))
    ap.add_argument("--subsets", nargs="+", default=["s4", "ms3"])
    a = common.parse(ap, argv)
    torch.manual_seed(0)
    np.random.seed(0)
    heads = {
        "s4": {"mul": {"fusion": "mul"}},
        "ms3": {"mul": {"fusion": "mul"}, "clip": {"fusion": "clip"}, "clap": {"fusion": "clap"}},
    }
    missing = []
    with common.Figures(a.json) as out:
        for subset in a.subsets:
            videos = a.s4_videos if subset == "s4" else a.ms3_videos
            table = run_subset(subset, videos, a.epochs, a.batch_size, a.out, heads[subset])
            print(f"\n{subset.upper()} synthetic, {videos} videos, tiny preset, validation split:")
            out.table(subset, table.to_dict("records"))
            print()
            missing += learned(subset, table)
        out.add("missing", missing)
    return common.exit_code(not missing, "; ".join(missing))


if __name__ == "__main__":
    sys.exit(main())
