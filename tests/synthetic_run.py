"""One synthetic AVSBench run for the tests: a tree, its feature store, and a head trained on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.synth import SynthSpec, write_synthetic
from pipeline.model.config import HeadConfig
from pipeline.settings import ExtractConfig, OptimConfig, TrainConfig
from stages.extract import extract
from stages.train import train


def synthetic_store(
    tmp: Path,
    subset: str = "s4",
    videos: int = 6,
    seed: int = 5,
    test_fraction: float | None = 0.3,
    **extract_fields: Any,
) -> dict[str, Any]:
    """A synthetic tree under tmp/data and its store tmp/store.zarr (every encoder, tiny preset, CPU).

    test_fraction None: the generator's own split.
    """
    root = tmp / "data"
    spec = SynthSpec() if test_fraction is None else SynthSpec(test_fraction=test_fraction)
    write_synthetic(root, subset, videos=videos, seed=seed, spec=spec)
    store = str(tmp / "store.zarr")
    cfg = ExtractConfig(root=root, subset=subset, store=store, device="cpu", **extract_fields)
    extract(cfg, progress=False)
    return {"tmp": tmp, "root": root, "store": store, "subset": subset}


def train_head(
    run: dict[str, Any], out: Path, head: HeadConfig | None = None, epochs: int = 1, **train_fields: Any
) -> Path:
    """Train one head on the run's store into out; returns its best.pt."""
    cfg = TrainConfig(
        store=run["store"],
        subset=run["subset"],
        device="cpu",
        out=out,
        progress=False,
        head=head,
        optim=OptimConfig(epochs=epochs, batch_size=4),
        **train_fields,
    )
    train(cfg)
    return out / "best.pt"
