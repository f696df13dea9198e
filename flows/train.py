"""The `train-head` flow: train one head, or a sweep of heads in one pass, against the cached features."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from pipeline.model import HeadConfig
from stages.train import OptimConfig, TrainConfig, load_sweep, sweep


@flow(name="train-head")
def train_head(
    store: str = "runs/store.zarr",
    subset: Literal["s4", "ms3"] = "s4",
    preset: str = "tiny",
    head: HeadConfig | None = None,
    sweep_file: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    out: str = "runs/train",
    device: str = "auto",
    seed: int = 0,
    resume: bool = True,
    weights_dir: str | None = None,
    threads: int = 0,
) -> list[dict[str, Any]]:
    """Train AV2T-SAM heads from the feature store; returns the comparison table rows."""
    log = get_run_logger()
    cfg = TrainConfig(
        store=store,
        subset=subset,
        preset=preset,
        out=Path(out),
        device=device,
        seed=seed,
        resume=resume,
        weights_dir=Path(weights_dir) if weights_dir else None,
        threads=threads,
        progress=False,
    )
    optim = cfg.optimiser().model_dump()
    optim |= {
        k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items() if v is not None
    }
    cfg = cfg.model_copy(update={"optim": OptimConfig(**optim)})
    heads = load_sweep(sweep_file, preset) if sweep_file else {"head": head or cfg.head_config()}
    table = sweep(cfg, heads)
    log.info("\n" + table.to_string(index=False))
    create_markdown_artifact(
        key="train-head-comparison",
        markdown=table.to_markdown(index=False),
        description=f"heads trained on {subset} from {store}",
    )
    return table.to_dict(orient="records")
