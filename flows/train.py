"""The `train-head` flow: train one head, or a sweep of heads in one pass, against the cached features."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.params import model_params, settings
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
