"""The `av2t` command: the outermost face of the pipeline. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Nothing here may reach a model hub: weights and tokenizers come from local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _cmd_synth(a: argparse.Namespace) -> int:
    from pipeline.data.synth import write_synthetic

    counts = write_synthetic(a.out, a.subset, videos=a.videos, seed=a.seed)
    print(f"wrote synthetic {a.subset} to {a.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _cmd_data_check(a: argparse.Namespace) -> int:
    from pipeline.data.check import check_tree

    report = check_tree(a.root, a.subset, workers=a.workers, progress=not a.json and sys.stderr.isatty())
    print(json.dumps(report.to_json(), indent=2) if a.json else report.to_text())
    return 0 if report.ok else 1


def _cmd_cache_info(a: argparse.Namespace) -> int:
    from cache.info import info_text, store_info
    from cache.store import FeatureStore

    info = store_info(FeatureStore(a.store, mode="r"))
    print(json.dumps(info, indent=2) if a.json else info_text(info))
    return 0


def _groups(spec: list[str] | None) -> list[tuple[str, str]] | None:
    if not spec:
        return None
    out = []
    for s in spec:
        subset, _, split = s.partition("/")
        if not split:
            raise SystemExit(f"--group takes SUBSET/SPLIT (e.g. s4/train), got {s!r}")
        out.append((subset, split))
    return out


def _cmd_cache_export(a: argparse.Namespace) -> int:
    from cache.hdf5 import export_h5
    from cache.store import FeatureStore

    written = export_h5(FeatureStore(a.store, mode="r"), a.h5, _groups(a.group))
    print(f"exported {', '.join(written) or 'nothing'} to {a.h5}")
    return 0


def _cmd_cache_import(a: argparse.Namespace) -> int:
    from cache.hdf5 import import_h5
    from cache.store import FeatureStore

    done = import_h5(FeatureStore(a.store, mode="a"), a.h5, overwrite=a.overwrite)
    print(f"imported {', '.join(done) or 'nothing'} into {a.store}")
    return 0


def _cmd_extract(a: argparse.Namespace) -> int:
    from flows.extract import extract_features

    out = extract_features(
        root=str(a.root),
        subset=a.subset,
        splits=a.splits,
        encoders=a.encoders,
        preset=a.preset,
        store=a.store,
        batch_size=a.batch_size,
        device=a.device,
        on_error=a.on_error,
        dtype=a.dtype,
        frames=a.frames,
        weights_dir=str(a.weights_dir) if a.weights_dir else None,
        threads=a.threads,
        overrides=json.loads(a.overrides) if a.overrides else None,
        allow_other_fingerprints=a.allow_other_fingerprints,
        task_runner=a.task_runner,
        workers=a.workers,
        dask_address=a.dask_address,
    )
    for key, s in out["store"].items():
        print(
            f"{key}: {s['rows_done']}/{s['rows_total']} rows"
            + (f", {s['failures']} failed" if s["failures"] else "")
        )
    for f in out["failures"]:
        print(f"skipped {f['path']}: {f['error']}", file=sys.stderr)
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from flows.train import train_head
    from pipeline.model import head_config

    head = None
    if a.head:
        try:
            head = head_config(a.preset, **json.loads(Path(a.head).read_text()))
        except (OSError, ValueError) as e:
            raise SystemExit(f"av2t: error: {a.head}: {e}") from e
    rows = train_head(
        store=a.store,
        subset=a.subset,
        preset=a.preset,
        head=head,
        sweep_file=str(a.sweep) if a.sweep else None,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        out=str(a.out),
        device=a.device,
        seed=a.seed,
        resume=not a.no_resume,
        weights_dir=str(a.weights_dir) if a.weights_dir else None,
        threads=a.threads,
    )
    import pandas as pd

    print(pd.DataFrame(rows).drop(columns=["checkpoint"]).to_string(index=False))
    print(f"checkpoints and logs under {a.out}")
    return 0


def _cmd_score(a: argparse.Namespace) -> int:
    from pipeline.scoring import score_folder

    r = score_folder(a.pred, a.root, a.subset, a.split, progress=not a.json and sys.stderr.isatty())
    if a.json:
        print(json.dumps(r))
    else:
        counts = f"{r['frames']} frames, {r['videos']} videos"
        print(f"M_J {r['M_J']:.4f}  M_F {r['M_F']:.4f}  ({r['batching']}; {counts})")
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from stages.evaluate import EvalConfig, evaluate

    try:
        cfg = EvalConfig(
            checkpoint=a.checkpoint,
            root=a.root,
            subset=a.subset,
            split=a.split,
            mode=a.mode,
            store=a.store,
            device=a.device,
            out=a.out,
            batch_size=a.batch_size,
            vision_bias=a.vision_bias,
            weights_dir=a.weights_dir,
            threads=a.threads,
            save_masks=a.save_masks,
            overlays=a.overlays,
            progress=sys.stderr.isatty(),
        )
    except ValidationError as e:
        raise SystemExit(f"av2t: error: {e}") from e
    r = evaluate(cfg)
    rows = [("M_J", r["M_J"]), ("M_F", r["M_F"]), ("M_F batch-free", r["M_F_batch_free"])]
    rows.append(("M_F raw logits (AV2T)", r["M_F_raw_logits_av2t"]))
    if "vision_bias" in r:
        vb = r["vision_bias"]
        rows += [("M_J swapped audio", vb["M_J_swapped"]), ("M_J silence", vb["M_J_silence"])]
    print(f"{r['subset']} {r['split']} ({r['mode']}): {r['videos']} videos, {r['frames']} frames")
    for name, value in rows:
        print(f"  {name:<24}{value:.4f}")
    print(f"M_F batching: {r['M_F_batching']}")
    print(f"report: {Path(a.out) / 'report.json'} (and report.md, CSV tables, overlays/)")
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from flows.demo import main as demo

    demo(str(a.out))
    return 0


def _cmd_official_import(a: argparse.Namespace) -> int:
    from stages.official import import_reference

    written = import_reference(a.checkpoint, a.out, a.weights_dir, a.preset)
    for what, path in written.items():
        print(f"{what:8} {path}")
    print(
        f"evaluate it with: av2t evaluate --checkpoint {written['head']} --weights-dir {written['weights']} "
        "--mode end-to-end --root <AVSBench root> --subset s4|ms3"
    )
    return 0


def _cmd_official_export(a: argparse.Namespace) -> int:
    from stages.official import export_reference

    path = export_reference(a.checkpoint, a.out, a.weights_dir, a.device)
    print(
        f"wrote {path} (bok-bok/AV2T-SAM layout: AVTSAM.load_state_dict(torch.load(...)) loads it strictly)"
    )
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from flows.serve import main as serve

    serve()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="av2t", description="AV2T-SAM audio-visual segmentation pipeline")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic AVSBench tree (official layout)")
    s.add_argument("--out", required=True, type=Path, help="AVSBench root to write")
    s.add_argument("--subset", required=True, choices=["s4", "ms3"])
    s.add_argument("--videos", type=int, default=24, help="total videos, split ~70/15/15 (default 24)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_synth)

    data = sub.add_parser("data", help="AVSBench data tools").add_subparsers(
        dest="data_command", required=True
    )
    c = data.add_parser("check", help="validate an AVSBench tree: counts per split and every problem")
    c.add_argument("--root", required=True, type=Path)
    c.add_argument("--subset", required=True, choices=["s4", "ms3"])
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--workers", type=int, default=8, help="decode threads")
    c.set_defaults(func=_cmd_data_check)

    cache = sub.add_parser("cache", help="feature store tools").add_subparsers(
        dest="cache_command", required=True
    )
    i = cache.add_parser("info", help="groups, encoders, fingerprints, rows done, bytes, compression")
    i.add_argument("store", help="store path or fsspec URL")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_cache_info)
    e = cache.add_parser("export", help="write split groups to HDF5, bit-exact")
    e.add_argument("store")
    e.add_argument("--h5", required=True, type=Path)
    e.add_argument("--group", action="append", help="SUBSET/SPLIT; repeat; default all")
    e.set_defaults(func=_cmd_cache_export)
    im = cache.add_parser("import", help="read split groups from an exported HDF5 file into a store")
    im.add_argument("store")
    im.add_argument("--h5", required=True, type=Path)
    im.add_argument("--overwrite", action="store_true", help="replace groups that exist")
    im.set_defaults(func=_cmd_cache_import)
    x = sub.add_parser("extract", help="run the extract-features flow here (no server needed)")
    x.add_argument("--root", required=True, type=Path)
    x.add_argument("--subset", required=True, choices=["s4", "ms3"])
    x.add_argument("--splits", nargs="+", default=["train", "val", "test"], choices=["train", "val", "test"])
    x.add_argument(
        "--encoders",
        nargs="+",
        default=["clip", "clap", "sam2", "beit3", "gt"],
        help="gt caches the GT masks",
    )
    x.add_argument(
        "--preset",
        default="tiny",
        help="tiny (random weights), paper or paper-official (official checkpoints)",
    )
    x.add_argument("--store", default="runs/store.zarr", help="store path or fsspec URL")
    x.add_argument("--batch-size", type=int, default=8)
    x.add_argument("--device", default="auto")
    x.add_argument("--on-error", default="stop", choices=["stop", "skip"])
    x.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    x.add_argument("--frames", default="used", choices=["used", "all"], help="used: S4 train frame 1 only")
    x.add_argument(
        "--weights-dir", type=Path, help="folder of official checkpoints (default $AV2T_WEIGHTS or ./weights)"
    )
    x.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    x.add_argument(
        "--overrides", help='per-encoder config overrides as JSON, e.g. {"sam2": {"trunk_block": 44}}'
    )
    x.add_argument(
        "--allow-other-fingerprints",
        action="store_true",
        help="keep a second fingerprint of an encoder side by side",
    )
    x.add_argument("--task-runner", default="threads", choices=["threads", "dask"])
    x.add_argument("--workers", type=int, default=1, help="threads, or local Dask workers")
    x.add_argument("--dask-address", help="scheduler address of an existing Dask cluster")
    x.set_defaults(func=_cmd_extract)

    t = sub.add_parser("train", help="run the train-head flow here: one head, or --sweep FILE of heads")
    t.add_argument("--store", default="runs/store.zarr")
    t.add_argument("--subset", required=True, choices=["s4", "ms3"])
    t.add_argument("--preset", default="tiny")
    t.add_argument("--head", type=Path, help="JSON file of HeadConfig fields (default: the paper's mul head)")
    t.add_argument("--sweep", type=Path, help="JSON file {name: HeadConfig fields}: all trained in one pass")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--out", type=Path, default=Path("runs/train"))
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    t.add_argument("--weights-dir", type=Path)
    t.add_argument("--threads", type=int, default=0)
    t.set_defaults(func=_cmd_train)

    sc = sub.add_parser("score", help="score a folder of predicted masks (<name>/<name>_<k>.png) on a split")
    sc.add_argument("--pred", required=True, type=Path, help="folder of 8-bit PNGs read as probability v/255")
    sc.add_argument("--root", required=True, type=Path)
    sc.add_argument("--subset", required=True, choices=["s4", "ms3"])
    sc.add_argument("--split", default="test", choices=["train", "val", "test"])
    sc.add_argument("--json", action="store_true", help="print one JSON object")
    sc.set_defaults(func=_cmd_score)

    ev = sub.add_parser("evaluate", help="score a head checkpoint on a split and write a report")
    ev.add_argument("--checkpoint", required=True, type=Path, help="head checkpoint (best.pt)")
    ev.add_argument("--root", required=True, type=Path)
    ev.add_argument("--subset", required=True, choices=["s4", "ms3"])
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--mode", default="cached", choices=["cached", "end-to-end"])
    ev.add_argument("--store", default="runs/store.zarr", help="feature store (cached mode)")
    ev.add_argument("--out", type=Path, default=Path("runs/eval"))
    ev.add_argument("--vision-bias", action="store_true", help="also score with swapped and silent audio")
    ev.add_argument("--save-masks", action="store_true", help="write predicted probabilities under OUT/masks")
    ev.add_argument("--overlays", type=int, default=3, help="best and worst videos drawn (default 3 each)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--weights-dir", type=Path)
    ev.add_argument("--threads", type=int, default=0)
    ev.set_defaults(func=_cmd_evaluate)

    d = sub.add_parser("demo", help="synthetic S4 + MS3 -> extract -> train -> evaluate, tiny preset")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.set_defaults(func=_cmd_demo)

    off = sub.add_parser("official", help="published AV2T-SAM checkpoints (bok-bok/AV2T-SAM layout)")
    offs = off.add_subparsers(dest="official_command", required=True)
    oi = offs.add_parser(
        "import", help="reference {name}_best.pth -> our head.pt + an EVF-SAM2 weights folder"
    )
    oi.add_argument("checkpoint", type=Path, help="the reference checkpoint (AVTSAM.state_dict())")
    oi.add_argument("--out", required=True, type=Path, help="folder for head.pt and weights/")
    oi.add_argument("--weights-dir", type=Path, help="where the CLIP / MS-CLAP files are (linked into out)")
    oi.add_argument("--preset", default="paper-official", help="encoder preset of the head (paper-official)")
    oi.set_defaults(func=_cmd_official_import)
    oe = offs.add_parser("export", help="our head checkpoint -> a reference {name}_best.pth")
    oe.add_argument("checkpoint", type=Path, help="a head checkpoint (best.pt) of the train stage")
    oe.add_argument("--out", required=True, type=Path, help="the .pth file to write")
    oe.add_argument("--weights-dir", type=Path, help="the head's preset weights folder")
    oe.add_argument("--device", default="cpu")
    oe.set_defaults(func=_cmd_official_export)

    sv = sub.add_parser("serve", help="serve a `default` deployment of every flow (needs a Prefect server)")
    sv.set_defaults(func=_cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `av2t` console script."""
    from cache.store import StoreError
    from pipeline.checkpoints import CheckpointError
    from pipeline.data.clips import DataError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, StoreError, CheckpointError) as e:
        print(f"av2t: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
