"""The `av2t` command: the outermost face of the pipeline.

Every option comes from a settings model of `pipeline.settings` (flows.options): its meaning and default
are written there once, and the flows take the same models as parameters (flows.params). Heavy imports
happen inside each command: `av2t --help` and the commands that run no flow import neither Prefect nor
torch; only extract, train, demo and serve import Prefect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ValidationError

from flows import errors
from flows.options import HelpFormatter, options, values
from flows.settings import (
    AppSettings,
    CacheExportOptions,
    CacheImportOptions,
    CacheInfoOptions,
    CacheVerifyOptions,
    DataCheckOptions,
    DemoSettings,
    ExtractFlowSettings,
    OfficialExportOptions,
    OfficialImportOptions,
    ScoreOptions,
    ServeSettings,
    SynthOptions,
    TrainFlowSettings,
)
from pipeline.settings import (
    DEFAULT_STORE,
    EvalConfig,
    SegmentConfig,
)

# Nothing here may reach a model hub: weights and tokenizers come from local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Exit statuses: 0 done, 1 problems found (data check) or an unexpected error (a bug), 2 an ordinary error
# (bad options or input, a full disk, a missing optional package, an output folder another run holds: one
# line, flows.errors), 130 Ctrl-C, 141 the reader of stdout went away (`| head`: quiet, 128 + SIGPIPE, what
# a shell reports for a Unix tool ended by SIGPIPE), 143 SIGTERM.
EXIT_ERROR, EXIT_BUG, EXIT_INTERRUPTED, EXIT_PIPE, EXIT_TERMINATED = 2, 1, 130, 141, 143
JSON_FLAG = {"as_json": "--json"}
DEBUG_HELP = "show the traceback of every error, not just one line (also AV2T_DEBUG=1) (default: off)"


def _cmd_synth(o: SynthOptions) -> int:
    from pipeline.data.synth import write_synthetic

    counts = write_synthetic(o.out, o.subset, videos=o.videos, seed=o.seed)
    print(f"wrote synthetic {o.subset} to {o.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _cmd_data_check(o: DataCheckOptions) -> int:
    from pipeline.data.check import check_tree

    progress = not o.as_json and sys.stderr.isatty()
    report = check_tree(o.root, o.subset, workers=o.workers, progress=progress)
    print(json.dumps(report.to_json(), indent=2) if o.as_json else report.to_text())
    return 0 if report.ok else 1


def _cmd_cache_info(o: CacheInfoOptions) -> int:
    from cache.info import store_info
    from cache.store import FeatureStore
    from flows.store_hints import info_text

    info = store_info(FeatureStore(o.store, mode="r"))
    print(json.dumps(info, indent=2) if o.as_json else info_text(info))
    return 0


def _cmd_cache_verify(o: CacheVerifyOptions) -> int:
    from cache.store import FeatureStore
    from cache.verify import repair, verify_store
    from flows.store_hints import verify_json, verify_text

    store = FeatureStore(o.store, mode="a" if o.repair else "r")
    report = verify_store(store)
    if o.repair and not report.ok:
        report = repair(store, report)
    print(json.dumps(verify_json(report), indent=2) if o.as_json else verify_text(report))
    return 0 if report.ok else 1  # 1: damage found (with --repair: taken out, to re-extract)


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


def _cmd_cache_export(o: CacheExportOptions) -> int:
    from cache.hdf5 import export_h5
    from cache.store import FeatureStore

    written = export_h5(FeatureStore(o.store, mode="r"), o.h5, _groups(o.group))
    print(f"exported {', '.join(written) or 'nothing'} to {o.h5}")
    return 0


def _cmd_cache_import(o: CacheImportOptions) -> int:
    from cache.hdf5 import import_h5
    from cache.store import FeatureStore

    done = import_h5(FeatureStore(o.store, mode="a"), o.h5, overwrite=o.overwrite)
    print(f"imported {', '.join(done) or 'nothing'} into {o.store}")
    return 0


def _cmd_extract(o: ExtractFlowSettings) -> int:
    from flows.extract import run

    out = run(o)
    for key, s in out["store"].items():
        print(
            f"{key}: {s['rows_done']}/{s['rows_total']} rows"
            + (f", {s['failures']} failed" if s["failures"] else "")
        )
    for f in out["failures"]:
        print(f"skipped {f['path']}: {f['error']}", file=sys.stderr)
    return 0


def _cmd_train(o: TrainFlowSettings) -> int:
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # a rank under torchrun: the stage, no Prefect
        from flows.data_parallel import rank_main

        rows = rank_main(o)
        if rows is None:  # not rank 0: quiet
            return 0
    else:
        from flows.train import run

        rows = run(o)
    import pandas as pd

    print(pd.DataFrame(rows).drop(columns=["checkpoint"]).to_string(index=False))
    print(f"checkpoints and logs under {o.out}")
    return 0


def _cmd_score(o: ScoreOptions) -> int:
    from pipeline.scoring import score_folder

    r = score_folder(o.pred, o.root, o.subset, o.split, progress=not o.as_json and sys.stderr.isatty())
    if o.as_json:
        print(json.dumps(r))
    else:
        counts = f"{r['frames']} frames, {r['videos']} videos"
        print(f"M_J {r['M_J']:.4f}  M_F {r['M_F']:.4f}  ({r['batching']}; {counts})")
        print(f"masks read as: {r['convention']}")
        resized = f" ({r['resized_to_protocol']} predictions resized)" if r["resized_to_protocol"] else ""
        print(f"scored at: {r['scored_at']}{resized}")
    return 0


def _cmd_evaluate(o: EvalConfig) -> int:
    from stages.evaluate import evaluate

    r = evaluate(o.model_copy(update={"progress": sys.stderr.isatty()}))
    print(f"{r['subset']} {r['split']} ({r['mode']}): {r['videos']} videos, {r['frames']} frames")
    width = max([24] + [len(row["label"]) + 2 for row in r["score_rows"]])  # values in one column
    for row in r["score_rows"]:
        print(f"  {row['label']:<{width}}{row['value']:.4f}")
    print(f"M_F batching: {r['M_F_batching']}")
    print(f"report: {o.out / 'report.json'} (and report.md, CSV tables, overlays/)")
    if "comparison" in r:
        c = r["comparison"]
        print(
            f"compared with {c['previous'] or 'nothing (no earlier report of this subset, split and mode)'}"
        )
        print(f"  {c['change']}; tolerance {c['tolerance']}")
        for row in c["rows"]:
            before = "—" if row["previous"] is None else f"{row['previous']:.4f}"
            delta = "" if row["delta"] is None else f" ({row['delta']:+.4f})"
            flag = "  REGRESSION" if row["regression"] else ""
            print(f"  {row['metric']:<{width}}{before} -> {row['now']:.4f}{delta}{flag}")
    return 0


def _cmd_segment(o: SegmentConfig) -> int:
    from flows.heads import head_for
    from stages.segment import segment

    head, weights = head_for(o.checkpoint, o.out, o.weights_dir, o.preset)
    preset = None if head != o.checkpoint else o.preset  # an imported head carries the preset it was given
    cfg = o.model_copy(
        update={"checkpoint": head, "weights_dir": weights, "preset": preset, "progress": sys.stderr.isatty()}
    )
    r = segment(cfg)
    for d in r["done"]:
        area = d["mean_sounding_area"]
        print(
            f"{d['video']}: {len(d['frames'])} frames, {d['seconds']:.1f} s, mean sounding area {area:.3f} -> {d['folder']}"
        )
        for problem in d["problems"]:
            print(f"av2t: warning: {d['video']}: {problem}", file=sys.stderr)
    for f in r["failed"]:
        print(f"av2t: error: {f['error']}", file=sys.stderr)
    if r["failed"]:
        print(
            f"av2t: {len(r['failed'])} of {len(r['failed']) + len(r['done'])} videos failed", file=sys.stderr
        )
        return EXIT_ERROR
    return 0


def _cmd_app(o: AppSettings) -> int:
    from flows.app import main as app

    app(o)
    return 0


def _cmd_demo(o: DemoSettings) -> int:
    from flows.demo import main as demo

    demo(o)
    return 0


def _cmd_official_import(o: OfficialImportOptions) -> int:
    from stages.official import import_reference

    written = import_reference(o.checkpoint, o.out, o.weights_dir, o.preset)
    for what, path in written.items():
        print(f"{what:8} {path}")
    print(
        f"evaluate it with: av2t evaluate --checkpoint {written['head']} --weights-dir {written['weights']} "
        "--mode end-to-end --root <AVSBench root> --subset s4|ms3"
    )
    return 0


def _cmd_official_export(o: OfficialExportOptions) -> int:
    from stages.official import export_reference

    path = export_reference(o.checkpoint, o.out, o.weights_dir, o.device)
    print(
        f"wrote {path} (bok-bok/AV2T-SAM layout: AVTSAM.load_state_dict(torch.load(...)) loads it strictly)"
    )
    return 0


def _cmd_serve(o: ServeSettings) -> int:
    from flows.serve import main as serve

    serve(o)
    return 0


def _command(
    sub: Any,
    name: str,
    help_: str,
    run: Callable[[Any], int],
    model: type[BaseModel] | None = None,
    **opts: Any,
) -> argparse.ArgumentParser:
    """A subcommand whose options are `model`'s fields (see flows.options.options for `opts`)."""
    p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
    if model is not None:
        options(p, model, **opts)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    p.set_defaults(run=run, model=model, parser=p)
    return p


def _group(sub: Any, name: str, help_: str) -> Any:
    p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
    return p.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(
        prog="av2t",
        description="AV2T-SAM audio-visual segmentation pipeline",
        formatter_class=HelpFormatter,
        epilog="exit status: 0 done, 1 problems found or an unexpected error, 2 an error (one line), "
        "130 interrupted, 141 stdout closed by its reader (| head), 143 terminated (see docs/guarantees.md, Errors)",
    )
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subset = {"required": ["subset"]}  # the commands ask for the subset rather than assume s4

    _command(sub, "synth", "write a synthetic AVSBench tree (official layout)", _cmd_synth, SynthOptions)
    data = _group(sub, "data", "AVSBench data tools")
    _command(
        data,
        "check",
        "validate an AVSBench tree: counts per split and every problem",
        _cmd_data_check,
        DataCheckOptions,
        flags=JSON_FLAG,
    )
    cache = _group(sub, "cache", "feature store tools")
    _command(
        cache,
        "info",
        "groups, encoders, fingerprints, rows done, bytes, compression",
        _cmd_cache_info,
        CacheInfoOptions,
        positional=["store"],
        flags=JSON_FLAG,
    )
    _command(
        cache,
        "verify",
        "read every chunk; name damaged or missing ones (exit 1); --repair marks their rows for re-extraction",
        _cmd_cache_verify,
        CacheVerifyOptions,
        positional=["store"],
        flags=JSON_FLAG,
    )
    _command(
        cache,
        "export",
        "write split groups to HDF5, bit-exact",
        _cmd_cache_export,
        CacheExportOptions,
        positional=["store"],
    )
    _command(
        cache,
        "import",
        "read split groups from an exported HDF5 file into a store",
        _cmd_cache_import,
        CacheImportOptions,
        positional=["store"],
    )
    _command(
        sub,
        "extract",
        "run the extract-features flow here (no server needed)",
        _cmd_extract,
        ExtractFlowSettings,
        **subset,
    )
    _command(
        sub,
        "train",
        "run the train-head flow here: one head, or --sweep FILE of heads",
        _cmd_train,
        TrainFlowSettings,
        exclude=["optim", "progress"],
        flags={"sweep_file": "--sweep"},
        **subset,
    )
    _command(
        sub,
        "score",
        "score a folder of predicted masks (<name>/<name>_<k>.png) on a split",
        _cmd_score,
        ScoreOptions,
        flags=JSON_FLAG,
    )
    _command(
        sub,
        "evaluate",
        "score a head checkpoint on a split and write a report",
        _cmd_evaluate,
        EvalConfig,
        exclude=["progress"],
        defaults={"store": DEFAULT_STORE},  # read in cached mode only
        **subset,
    )
    _command(
        sub,
        "segment",
        "segment video files with a head: masks, overlay.mp4 (with its sound) and segments.json per video",
        _cmd_segment,
        SegmentConfig,
        exclude=["progress"],
        positional=["videos"],
    )
    _command(
        sub,
        "app",
        "a web page on 127.0.0.1 to try a head on a video (needs the app extra: pip install 'av2t[app]')",
        _cmd_app,
        AppSettings,
    )
    _command(
        sub,
        "demo",
        "synthetic S4 + MS3 -> extract -> train -> evaluate, tiny preset",
        _cmd_demo,
        DemoSettings,
    )
    official = _group(sub, "official", "published AV2T-SAM checkpoints (bok-bok/AV2T-SAM layout)")
    _command(
        official,
        "import",
        "reference {name}_best.pth -> our head.pt + an EVF-SAM2 weights folder",
        _cmd_official_import,
        OfficialImportOptions,
        positional=["checkpoint"],
    )
    _command(
        official,
        "export",
        "our head checkpoint -> a reference {name}_best.pth",
        _cmd_official_export,
        OfficialExportOptions,
        positional=["checkpoint"],
    )
    _command(
        sub,
        "serve",
        "serve extract-features/extract, train-head/train, evaluate/on-demand, segment-videos/segment and the scheduled "
        "evaluate/nightly (needs a Prefect server: PREFECT_API_URL)",
        _cmd_serve,
        ServeSettings,
    )
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every `finally` and context manager runs (the temporary
    Prefect server stops, partial files are removed); a second SIGTERM ends the process at once."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _option_name(parser: argparse.ArgumentParser | None) -> Callable[[str], str]:
    """Field name -> the option that sets it (`--epochs`, `--sweep`, `STORE`)."""
    actions = {a.dest: a for a in parser._actions} if parser is not None else {}

    def name(field: str) -> str:
        a = actions.get(field)
        if a is None:
            return field
        return a.option_strings[0] if a.option_strings else (a.metavar or a.dest.upper())

    return name


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on its write end)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _pipe_closed() -> int:
    """The reader of stdout went away: end quietly, as Unix tools do, with 141 (128 + SIGPIPE)."""
    # stdout now writes to /dev/null, so that the interpreter's last flush has nothing to complain about.
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)
    return EXIT_PIPE


def _error(message: str) -> int:
    print(f"av2t: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    model = args.model
    try:
        o = None if model is None else model.model_validate(values(args, model))
    except ValidationError as e:
        if errors.debug():
            traceback.print_exc()
        return _error(errors.validation_line(e, _option_name(getattr(args, "parser", None))))
    try:
        return int(args.run(o) or 0)
    except json.JSONDecodeError as e:
        named = _named_metadata_error(o, e)
        if named is None:
            raise
        raise named from e


def _named_metadata_error(o: Any, e: json.JSONDecodeError) -> Exception | None:
    """A store's metadata file that is not JSON, as the store's error naming that file (None: no such file).

    The one path for every command with a store: zarr reads a node's zarr.json wherever the command first
    opens it (an array's size in `cache info`, its chunks in `cache verify`, ...), and says only 'not JSON'.
    """
    store, module = getattr(o, "store", None), sys.modules.get("cache.errors")
    if not isinstance(store, str) or module is None:
        return None
    return module.metadata_error(store, e)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `av2t` console script: every ordinary error is one line and exit status 2."""
    args = build_parser().parse_args(argv)
    debug_before = errors.set_debug(args.debug or errors.debug())
    try:
        with _sigterm_raises():
            code = _run(args)
            sys.stdout.flush()  # here, where a closed pipe is still ours to handle
            return code
    except BrokenPipeError:
        if _stdout_closed():
            return _pipe_closed()
        traceback.print_exc()
        print("av2t: unexpected error (BrokenPipeError), probably a bug: please report it", file=sys.stderr)
        return EXIT_BUG
    except Terminated:
        print("av2t: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("av2t: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as e:
        if isinstance(e.code, str):  # raise SystemExit("message"): an ordinary error too
            return _error(e.code)
        raise
    except Exception as e:
        line = errors.one_line(e)
        if line is None:
            traceback.print_exc()
            print(
                f"av2t: unexpected error ({type(e).__name__}), probably a bug: please report it with the "
                "traceback above (and the output of the command re-run with --debug)",
                file=sys.stderr,
            )
            return EXIT_BUG
        if errors.debug():
            traceback.print_exc()
        return _error(line)
    finally:
        errors.set_debug(debug_before)


if __name__ == "__main__":
    sys.exit(main())
