"""Ref-AVS heads on a synthetic set: text only, AV only, text + AV (concat) and gated, tiny preset.

Synthesises a Ref-AVS tree, extracts its tiny-preset features (or reuses --store / --root), trains the four heads
in one pass through the train stage (`av2t train --subset ref-avs`), scores each best.pt on test_s / test_u /
test_n through the evaluate stage, and prints J / F (official batching) per split and S on Null.

The bar (issue 27): text + AV beats text only and AV only on Seen and Unseen J, and its Null S is below AV only's.
Exit 1 when it is not met.

    python bench/ref_avs_heads.py --out runs/bench-ref-avs --videos 40 --epochs 20
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python bench/ref_avs_heads.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.common import Figures, exit_code, parse, parser, synthetic_store

HEADS = {"text_only": "only", "av_only": "none", "text_av": "concat", "gated": "gated"}
TESTS = ("test_s", "test_u", "test_n")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "batch_size", "device", threads=2, batch_size=8, device="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/bench-ref-avs"), help="working folder")
    p.add_argument("--videos", type=int, default=40, help="synthetic videos (all splits)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs per head")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate")
    p.add_argument("--seed", type=int, default=0, help="data and head seed")
    p.add_argument("--max-steps", type=int, help="optimiser steps per epoch (default: every training row)")
    p.add_argument("--store", help="an extracted Ref-AVS store (with --root) instead of a new synthetic one")
    p.add_argument("--root", type=Path, help="the Ref-AVS tree of --store")
    a = parse(p, argv)

    from pipeline.model.config import head_config
    from pipeline.settings import EvalConfig, TrainConfig
    from stages.evaluate import evaluate
    from stages.train import sweep

    with Figures(a.json) as fig:
        if a.store:
            root, store = a.root, a.store
        else:
            root, store = synthetic_store(
                a.out,
                "ref-avs",
                a.videos,
                a.seed,
                encoders=["clip", "clap", "sam2", "beit3"],
                threads=a.threads,
            )
        heads = {n: head_config("tiny", text=t, seed=a.seed) for n, t in HEADS.items()}
        cfg = _train_config(TrainConfig, store, a)
        table = sweep(cfg, heads)
        rows = []
        for name in HEADS:
            row: dict = {"head": name, "text": HEADS[name]}
            for split in TESTS:
                rep = evaluate(
                    EvalConfig(
                        checkpoint=a.out / "heads" / name / "best.pt",
                        root=root,
                        subset="ref-avs",
                        split=split,
                        mode="cached",
                        store=store,
                        device=a.device,
                        out=a.out / "eval" / name / split,
                        threads=a.threads,
                        progress=False,
                    )  # fmt: skip
                )
                if split == "test_n":
                    row["Null S"] = rep["S"]
                else:
                    tag = "Seen" if split == "test_s" else "Unseen"
                    row[f"{tag} J"], row[f"{tag} F"] = rep["J"], rep["F"]
            row["val J"] = float(table.loc[table["head"] == name, "val_J"].iloc[0])
            rows.append(row)
        steps = f", at most {a.max_steps} steps per epoch" if a.max_steps else ""
        print(
            f"Ref-AVS heads, tiny preset, synthetic ({a.videos} videos, {a.epochs} epochs{steps}, seed {a.seed});"
        )
        print("official batching (4 expressions x 10 frames); S lower is better")
        fig.table("heads", rows)
        by = {r["head"]: r for r in rows}
        t, av, both = by["text_only"], by["av_only"], by["text_av"]
        checks = {
            "text+AV Seen J > text only and AV only": both["Seen J"] > max(t["Seen J"], av["Seen J"]),
            "text+AV Unseen J > text only and AV only": both["Unseen J"] > max(t["Unseen J"], av["Unseen J"]),
            "text+AV Null S < AV only": both["Null S"] < av["Null S"],
        }
        fig.add("bar", checks)
        for k, v in checks.items():
            print(f"{'met' if v else 'NOT met'}: {k}")
    return exit_code(all(checks.values()), "the Ref-AVS heads bar")


def _train_config(cls, store: str, a):
    """The sweep's TrainConfig (fields as the train stage takes them)."""
    return cls.model_validate(
        {
            "store": store,
            "subset": "ref-avs",
            "preset": "tiny",
            "out": a.out / "heads",
            "resume": False,
            "device": a.device,
            "threads": a.threads,
            "seed": a.seed,
            "progress": False,
            "max_steps": a.max_steps,
            "optim": {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr},
        }
    )


if __name__ == "__main__":
    sys.exit(main())
