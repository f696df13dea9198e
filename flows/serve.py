"""The deployments `av2t serve` serves (`av2t serve`, or `python -m flows.cli serve`).

| deployment | flow | tags | runs |
|---|---|---|---|
| `extract-features/extract` | extract-features | extract, on-demand | when asked |
| `train-head/train` | train-head | train, on-demand | when asked |
| `evaluate/on-demand` | evaluate (`flows.evaluate.evaluate`) | evaluate, on-demand | when asked |
| `evaluate/nightly` | evaluate (`flows.evaluate.nightly`) | evaluate, nightly, the mode, each subset | on its cron |
| `segment-videos/segment` | segment-videos | segment, on-demand | when asked |

The nightly's paths are made absolute here, against the working directory of `av2t serve`, and checked;
its deployment carries every parameter, so a run with no parameters (what the schedule starts) works.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from flows.settings import EvalFlowSettings, ServeSettings


class DeploymentError(ValueError):
    """A deployment cannot be served as asked (a missing folder, a bad schedule); names the option."""


def _folder(option: str, path: Path, what: str) -> Path:
    """path made absolute; a DeploymentError naming the option when it is not a folder."""
    path = path.expanduser().resolve()
    if not path.is_dir():
        problem = "is not a folder" if path.exists() else "no such folder"
        raise DeploymentError(f"{option} {path}: {problem} ({what})")
    return path


def _made(option: str, path: Path) -> Path:
    """path made absolute and created if missing; a DeploymentError naming the option when it cannot be."""
    path = path.expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # FileExistsError: a file there
        raise DeploymentError(f"{option} {path}: cannot create it ({e.strerror or e})") from e
    return path


def resolve(s: ServeSettings) -> ServeSettings:
    """The settings with absolute paths; for the nightly, root must be a folder, and the checkpoints and
    reports folders are created if missing (served before the first head is trained: `av2t serve` warns)."""
    paths = {"checkpoints": s.checkpoints.expanduser().resolve(), "reports": s.reports.expanduser().resolve()}
    if s.root is not None:
        paths["root"] = s.root.expanduser().resolve()
    if s.nightly:
        paths["root"] = _folder("--root", s.root, "the nightly's AVSBench root")
        paths["checkpoints"] = _made("--checkpoints", s.checkpoints)
        paths["reports"] = _made("--reports", s.reports)
        writable(paths["reports"])
    return s.model_copy(update=paths)


def writable(folder: Path) -> None:
    """Refuse a reports folder the nightly could not write (found now, not at its first run)."""
    probe = folder / f".av2t-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DeploymentError(
            f"--reports {folder}: cannot write there ({e.strerror or e}); choose a folder this user can write"
        ) from e


def schedule_words(cron: str, tz: str) -> str:
    """`every day at 03:00 UTC` for a daily cron line; the line itself otherwise."""
    parts = cron.split()
    if len(parts) == 5 and parts[2:] == ["*", "*", "*"] and parts[0].isdigit() and parts[1].isdigit():
        return f"every day at {int(parts[1]):02d}:{int(parts[0]):02d} {tz}"
    return f"on the cron line `{cron}` ({tz} time)"


def nightly_warnings(s: ServeSettings) -> list[str]:
    """What the nightly would fail on tonight as things stand (no clip list, no head for a subset)."""
    from pipeline.data import layout
    from pipeline.evaluation.compare import NoHead, newest_checkpoint

    found = []
    for subset in s.subsets:
        csv = layout.meta_csv(s.root, subset)
        if not csv.is_file():
            found.append(f"{subset}: {csv} not found (is --root the AVSBench root?)")
        try:
            newest_checkpoint(s.checkpoints, subset)
        except NoHead:
            found.append(f"{subset}: no head trained on {subset} under {s.checkpoints} yet")
    return found


def _nightly_parameters(s: ServeSettings) -> dict[str, Any]:
    return {
        "root": str(s.root),
        "checkpoints": str(s.checkpoints),
        "reports": str(s.reports),
        "subsets": list(s.subsets),
        "split": s.split,
        "mode": s.mode,
        "store": s.store,
        "tolerance": s.tolerance,
        "on_regression": s.on_regression,
        **({"robustness": True} if s.robustness else {}),  # off: the flow's default (prefect.yaml as is)
    }


def nightly_description(s: ServeSettings) -> str:
    """The nightly deployment's description: when, what, and what a regression does.

    The UI renders descriptions as markdown: names with placeholders are code spans (a bare `<subset>` would
    be taken for an HTML tag and vanish).
    """
    end = (
        "the run ends Failed, named Regression"
        if s.on_regression == "fail"
        else "the run ends Completed, named 'Completed with regression'"
    )
    robust = (
        "; with the robustness suite also FPR per negative condition, where a rise is worse" * s.robustness
    )
    return (
        f"Runs {schedule_words(s.cron, s.timezone)}. Re-evaluates {', '.join(s.subsets)} on the {s.split} split "
        f"({s.mode}) of {s.root}, each subset with the newest best.pt trained on it under {s.checkpoints}, "
        f"one `evaluate` subflow run per subset (`nightly-<subset>-...`), and compares each with the previous "
        f"report of the same subset, split and mode under {s.reports}. A regression is a compared score "
        f"(M_J, M_F, batch-free M_F{robust}) worse than the previous report's by more than {s.tolerance:g}: {end} "
        f"(artifacts `nightly-<subset>-{s.split}` and `nightly-<subset>-{s.split}-scores` say which; the run's "
        "own summary: `nightly-summary`). Run it now with no parameters: `prefect deployment run evaluate/nightly`."
    )


def deployments(settings: ServeSettings) -> list:
    """The deployments this project serves (the nightly's from `settings`, made absolute and checked)."""
    from prefect.schedules import Cron

    from flows.evaluate import evaluate, nightly
    from flows.extract import extract_features
    from flows.segment import segment_videos
    from flows.train import train_head

    s = resolve(settings)
    on_demand: dict[str, Any] = {"checkpoints": str(s.checkpoints)}
    if s.root is not None:
        on_demand["root"] = str(s.root)
    on_demand["reports"] = str(Path(EvalFlowSettings.model_fields["reports"].default).resolve())
    served = [
        extract_features.to_deployment(
            name="extract",
            tags=["extract", "on-demand"],
            description="Extract the frozen encoders' features (CLIP, CLAP, SAM 2, BEiT-3, GT masks) of one "
            "AVSBench subset into the feature store; resumable. Needs root and subset, e.g. `prefect "
            "deployment run extract-features/extract --param root=/data/AVSBench --param subset=s4`.",
        ),
        train_head.to_deployment(
            name="train",
            tags=["train", "on-demand"],
            description="Train one head (or a sweep file of heads) on a subset from the feature store; writes "
            "best.pt, last.pt, metrics.csv and a comparison artifact under out. E.g. `prefect deployment run "
            "train-head/train --param store=runs/store.zarr --param subset=s4`.",
        ),
        evaluate.to_deployment(
            name="on-demand",
            tags=["evaluate", "on-demand"],
            parameters=on_demand,
            description="Score one head on one subset (default: the newest best.pt trained on it under "
            f"checkpoints, {s.checkpoints}) and compare with the previous report under reports "
            f"({on_demand['reports']}); artifacts `evaluate-<subset>-<split>`. A regression ends the run "
            "'Completed with regression' (on_regression=fail: Failed). E.g. `prefect deployment run "
            "evaluate/on-demand --param subset=s4"
            + ("" if s.root else " --param root=/data/AVSBench")
            + "`.",
        ),
    ]
    served.append(
        segment_videos.to_deployment(
            name="segment",
            tags=["segment", "on-demand"],
            description="Segment a folder of videos (any container and codec FFmpeg reads) with a head: per "
            "video masks, overlay.mp4 (with its sound) and segments.json under out; one task per video, a table "
            "artifact segment-videos. E.g. prefect deployment run segment-videos/segment --param videos=/data/clips "
            "--param checkpoint=runs/head/best.pt --param out=runs/segment.",
        )
    )
    if s.nightly:
        try:
            schedule = Cron(s.cron, timezone=s.timezone, slug="nightly")
        except ValueError:  # pydantic's ValidationError of the schedule
            raise DeploymentError(
                f"--cron {s.cron!r}: not a cron line (minute hour day month weekday, e.g. '0 3 * * *')"
            ) from None
        served.append(
            nightly.to_deployment(
                name="nightly",
                schedules=[schedule],
                parameters=_nightly_parameters(s),
                tags=["evaluate", "nightly", s.mode, *s.subsets],
                description=nightly_description(s),
            )
        )
    for d in served:  # absolute: Prefect writes it relative to the serving folder (`../../<...>/flows/...`)
        file, name = d.entrypoint.rsplit(":", 1)
        d.entrypoint = f"{Path(file).resolve()}:{name}"
    return served


def main(settings: ServeSettings) -> None:
    """Serve until interrupted (on the server at PREFECT_API_URL: a temporary one would die with us)."""
    import prefect.flows
    from prefect.runner import Runner

    from flows.prefect_runtime import ServerError, api_url

    s = resolve(settings)
    served = deployments(s)  # the options' errors before the server's
    if not api_url():
        raise ServerError(
            "serving needs a running Prefect server: start one (`prefect server start`) and set "
            "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        )
    if s.nightly:
        for w in nightly_warnings(s):
            print(f"av2t serve: warning: the nightly would fail now: {w}", file=sys.stderr)
        print(f"av2t serve: evaluate/nightly runs {schedule_words(s.cron, s.timezone)}", file=sys.stderr)
    # prefect.serve's own loop, without its catch of KeyboardInterrupt: ctrl-C and SIGTERM reach the CLI, which
    # exits 130 / 143 as for every command (prefect.serve returned normally: exit 0).
    runner = Runner(pause_on_shutdown=True)
    for d in served:
        runner.add_deployment(d)
    show = getattr(prefect.flows, "_display_serve_start_message", None)  # the table of served deployments
    if show is not None:
        show(*served)
    serve_until_stopped(runner.start)


STOP_S = 15.0  # how long ctrl-C / SIGTERM waits for the runner to pause its deployments and stop
_STOP_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)"}


def serve_until_stopped(start: Callable[[], Awaitable[Any]]) -> None:
    """Run start() until ctrl-C or SIGTERM, let it shut down, then do what the signal did before (the CLI turns
    that into exit 130 / 143).

    The signal cancels the main task once, as asyncio.run does for ctrl-C, so the Prefect runner's shutdown can
    still pause its deployments through the server (a KeyboardInterrupt raised inside the loop cancels every task,
    and the pause was then cut short, leaving the nightly's scheduled runs behind). A shutdown that hangs is cut
    after STOP_S; a second signal ends the process at once.
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        asyncio.run(start())
        return
    got: list[signal.Signals] = []
    deadline = threading.Timer(STOP_S, lambda: _stop_now(got[0]))  # started by the first signal
    deadline.daemon = True
    # a signal ignored before (SIGINT of a background job) stays ignored
    sigs = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not signal.SIG_IGN]
    before = {sig: signal.getsignal(sig) for sig in sigs}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal(sig: signal.Signals) -> None:
            if got:
                _stop_now(sig, "a second signal: stopped without waiting for the Prefect runner")
            got.append(sig)
            deadline.start()
            task.cancel()

        for sig in sigs:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await start()
        except asyncio.CancelledError:
            if not got:
                raise
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(main())
    finally:
        for sig in sigs:
            signal.signal(sig, before[sig])
        deadline.cancel()
    if got:
        _resignal(got[0], before[got[0]])


def _resignal(sig: signal.Signals, handler: Any) -> None:
    """What the signal would have done without us: the CLI's handler, KeyboardInterrupt, or the default action."""
    if callable(handler):
        handler(sig, None)
    if sig == signal.SIGINT:
        raise KeyboardInterrupt
    os.kill(os.getpid(), sig)


def _stop_now(signum: int, why: str = "") -> None:
    """End the process with 128 + signum, now, saying why (the CLI's words for that signal first)."""
    word = _STOP_WORDS.get(signal.Signals(signum), signal.Signals(signum).name)
    why = why or f"the Prefect runner did not stop within {STOP_S:.0f} s"
    print(f"av2t: {word} ({why})", file=sys.stderr, flush=True)
    os._exit(128 + signum)
