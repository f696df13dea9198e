"""The `train-head` flow: train one head, or a sweep of heads in one pass, against the cached features.

What the run page shows: the run named `train-<subset>-<preset>` (`-<sweep file stem>` added for a sweep),
tagged with the subset and the preset; one task `fit-heads` (the training, all heads in one pass; its run
is named `fit-heads/<subset>/<heads>x<epochs>-epochs`); one log
line per head per epoch (train loss, val loss, val M_J, val M_F, lr); while it trains a table artifact
`train-<subset>-epochs` (one row per head per epoch, a new version each epoch) and a progress artifact
`train-<subset>-progress` (epochs done over all heads); at the end a markdown artifact
`train-<subset>-comparison` (the comparison table, the store and split it trained on, and the path of
each head's best.pt, metrics.csv and curves.png: artifacts cannot show local images).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows.params import flow_kwargs, model_params, settings
from flows.prefect_runtime import quiet_run_logs, run_flow
from flows.run_page import absolute, label_run, preset_label, run_param
from flows.settings import TrainFlowSettings
from pipeline.files import OutputLock
from pipeline.model import HeadConfig
from pipeline.model.sweep import load_sweep
from pipeline.settings import TrainConfig
from stages.train import head_folders, sweep


def train_run_name(parameters: dict[str, Any] | None = None) -> str:
    """`train-<subset>-<preset>`, plus `-<sweep file stem>` for a sweep: the run's name in the UI."""
    subset, preset, sweep_file = (
        run_param(TrainFlowSettings, k, parameters) for k in ("subset", "preset", "sweep_file")
    )
    name = f"train-{subset}-{preset_label(preset)}"
    return f"{name}-{Path(str(sweep_file)).stem}" if sweep_file else name


class EpochReport:
    """The `on_epoch` hook of the train stage: a log line, the epoch table and the progress, per head epoch."""

    def __init__(self, cfg: TrainConfig, heads: list[str]):
        self.log = get_run_logger()
        self.epochs, self.heads, self.subset = cfg.optimiser().epochs, heads, cfg.subset
        self.done = dict.fromkeys(heads, 0)  # last epoch reported per head (a resumed head starts later)
        self.rows: list[dict[str, Any]] = []
        self.bar = create_progress_artifact(
            0.0, key=f"train-{cfg.subset}-progress", description=self._progress()
        )

    def _progress(self) -> str:
        done = sum(self.done.values())
        return (
            f"{done}/{self.epochs * len(self.heads)} head epochs ({len(self.heads)} head(s) x {self.epochs})"
        )

    def __call__(self, head: str, m: dict[str, Any]) -> None:
        self.log.info(
            f"{head}: epoch {m['epoch']}/{self.epochs}: train loss {m['train_loss']:.4f}, "
            f"val loss {m['val_loss']:.4f}, val M_J {m['val_M_J']:.4f}, val M_F {m['val_M_F']:.4f} "
            f"(lr {m['lr']:.2e}, {m['seconds']:.1f} s of training so far)"
        )
        self.rows.append({"head": head, **epoch_row(m)})
        create_table_artifact(
            key=f"train-{self.subset}-epochs",
            table=self.rows,
            description=f"per-epoch losses and validation scores on {self.subset}, one row per head epoch",
        )
        self.done[head] = int(m["epoch"])
        done = sum(self.done.values())
        update_progress_artifact(self.bar, 100.0 * done / (self.epochs * len(self.heads)), self._progress())


def epoch_row(m: dict[str, Any]) -> dict[str, Any]:
    """One row of the epochs table: scores to 6 digits, lr as `5.01e-05`, the training time so far named as
    cumulative (metrics.csv keeps the stage's names and values)."""
    row = {k: round(v, 6) if isinstance(v, float) else v for k, v in m.items() if k not in ("lr", "seconds")}
    return {**row, "lr": f"{m['lr']:.3g}", "cumulative_seconds": m["seconds"]}


def _fit_name(parameters: dict[str, Any]) -> str:
    heads, cfg = parameters["heads"], parameters["cfg"]
    return f"fit-heads/{cfg.subset}/{len(heads)}x{cfg.optimiser().epochs}-epochs"


@task(name="fit-heads", task_run_name=_fit_name, cache_policy=NO_CACHE)
def fit_heads(
    cfg: TrainConfig, heads: dict[str, HeadConfig], launch_settings: TrainFlowSettings | None = None
) -> list[dict[str, Any]]:
    """Train the heads in one pass (the train stage's `sweep`), reporting every epoch to the run.

    With launch_settings (nproc > 1 or a rendezvous), torchrun runs the ranks and rank 0's epochs are reported
    as they come; a failed rank fails the task with its one line.
    """
    report = EpochReport(cfg, list(heads))
    if launch_settings is not None:
        from flows.data_parallel import launch

        return launch(launch_settings, on_epoch=report)
    return sweep(cfg, heads, on_epoch=report).to_dict(orient="records")


def comparison_markdown(cfg: TrainConfig, table: pd.DataFrame, sweep_file: Path | None) -> str:
    """The comparison artifact: what was trained on what, the table, and where each head's files are."""
    optim = cfg.optimiser()
    lines = [
        f"# train-head: {cfg.subset}, preset {cfg.preset}",
        "",
        f"- store: `{cfg.store}` (train split `{cfg.train_split}`, best epoch by val M_J on `{cfg.val_split}`)",
        f"- {len(table)} head(s)"
        + (f" from sweep file `{sweep_file}`" if sweep_file else "")
        + f", {optim.epochs} epochs x batch {optim.batch_size}, lr {optim.lr:g}",
        f"- output folder: `{cfg.out}` (comparison.csv, comparison.md)",
        "",
        table.drop(columns=["checkpoint"]).to_markdown(index=False),
        "",
        "## Files per head",
        "",
        "Prefect artifacts cannot show local images: open curves.png (train / val loss and val M_J / M_F",
        "per epoch) from its path.",
        "",
        "| head | best.pt | metrics.csv | curves.png |",
        "|---|---|---|---|",
    ]
    for r in table.to_dict(orient="records"):
        folder = Path(r["checkpoint"]).parent
        lines.append(
            f"| {r['head']} | `{r['checkpoint']}` | `{folder / 'metrics.csv'}` | `{folder / 'curves.png'}` |"
        )
    return "\n".join(lines) + "\n"


@flow(name="train-head", flow_run_name=train_run_name)
@model_params(TrainFlowSettings, exclude=["optim", "progress"])
def train_head(**params: Any) -> list[dict[str, Any]]:
    """Train AV2T-SAM heads from the feature store; returns the comparison table rows."""
    quiet_run_logs()
    log = get_run_logger()
    s = settings(TrainFlowSettings, params, progress=False)
    cfg = s.stage()
    # Absolute: best.pt, the store and the output folder as a UI user can open them, wherever serve runs.
    cfg = cfg.model_copy(update={"store": absolute(cfg.store), "out": cfg.out.resolve()})
    run_tags = (cfg.subset, preset_label(cfg.preset))
    label_run(add_tags=run_tags)
    heads = load_sweep(s.sweep_file, s.preset) if s.sweep_file else {"head": cfg.head_config()}
    optim = cfg.optimiser()
    log.info(
        f"training {len(heads)} head(s) ({', '.join(heads)}) on {cfg.subset} from {cfg.store} for "
        f"{optim.epochs} epochs into {cfg.out}"
    )
    parallel = s.nproc > 1 or s.rdzv_endpoint is not None
    if parallel:
        log.info(f"data parallel: {s.nproc} rank(s) per node x {s.nnodes} node(s) through torchrun")
    launch_settings = (
        s.model_copy(update={"store": cfg.store, "out": cfg.out, "progress": False}) if parallel else None
    )
    with tags(*run_tags):
        rows = fit_heads(cfg, heads, launch_settings)
    table = pd.DataFrame(rows)
    log.info("\n" + table.drop(columns=["checkpoint"]).to_string(index=False))
    for r in rows:
        log.info(
            f"{r['head']}: best.pt {r['checkpoint']}; curves {Path(r['checkpoint']).parent / 'curves.png'}"
        )
    create_markdown_artifact(
        key=f"train-{cfg.subset}-comparison",
        markdown=comparison_markdown(cfg, table, s.sweep_file and s.sweep_file.resolve()),
        description=f"{len(rows)} head(s) trained on {cfg.subset} from {cfg.store}",
    )
    return rows


def run(s: TrainFlowSettings) -> list[dict[str, Any]]:
    """`av2t train`: the flow (a temporary Prefect server if none is set), or, when no server can start,
    the train stage in this process; the comparison rows either way."""

    cfg = s.stage()
    # Read here first: a bad sweep file is refused before any server starts or any head trains.
    heads = load_sweep(s.sweep_file, s.preset) if s.sweep_file else {"head": cfg.head_config()}
    head_folders(cfg, heads)

    def direct() -> list[dict[str, Any]]:
        if s.nproc > 1 or s.rdzv_endpoint is not None:
            from flows.data_parallel import launch

            return launch(s)
        return sweep(cfg.model_copy(update={"progress": sys.stderr.isatty()}), heads).to_dict(
            orient="records"
        )

    # One writer per --out, refused before a server starts (the stage takes the same lock again inside).
    with OutputLock(cfg.out):
        return run_flow("train", lambda: train_head(**flow_kwargs(train_head.fn, s)), direct)
