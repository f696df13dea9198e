"""The `train-head` flow: train one head, or a sweep of heads in one pass, against the cached features."""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.params import flow_kwargs, model_params, settings
from flows.prefect_runtime import run_flow
from pipeline.settings import TrainFlowSettings
from stages.train import load_sweep, sweep


@flow(name="train-head")
@model_params(TrainFlowSettings, exclude=["optim", "progress"])
def train_head(**params: Any) -> list[dict[str, Any]]:
    """Train AV2T-SAM heads from the feature store; returns the comparison table rows."""
    log = get_run_logger()
    s = settings(TrainFlowSettings, params, progress=False)
    cfg = s.stage()
    heads = load_sweep(s.sweep_file, s.preset) if s.sweep_file else {"head": cfg.head_config()}
    table = sweep(cfg, heads)
    log.info("\n" + table.to_string(index=False))
    create_markdown_artifact(
        key="train-head-comparison",
        markdown=table.to_markdown(index=False),
        description=f"heads trained on {s.subset} from {s.store}",
    )
    return table.to_dict(orient="records")


def run(s: TrainFlowSettings) -> list[dict[str, Any]]:
    """`av2t train`: the flow (a temporary Prefect server if none is set), or, when no server can start,
    the train stage in this process; the comparison rows either way."""

    cfg = s.stage()
    # Read here first: a bad sweep file is refused before any server starts or any head trains.
    heads = load_sweep(s.sweep_file, s.preset) if s.sweep_file else {"head": cfg.head_config()}

    def direct() -> list[dict[str, Any]]:
        return sweep(cfg.model_copy(update={"progress": sys.stderr.isatty()}), heads).to_dict(
            orient="records"
        )

    return run_flow("train", lambda: train_head(**flow_kwargs(train_head.fn, s)), direct)
