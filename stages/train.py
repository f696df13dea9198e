"""The train stage: fit fusion heads (projections, MLP, adapters, decoder) against cached features."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from cache import EncoderGroup, FeatureStore, StoreError, fingerprint
from cache.batches import FeatureBatches, Source
from pipeline.checkpoints import CheckpointError
from pipeline.config import preset_dir, resolve_weights
from pipeline.metrics import MetricAccumulator
from pipeline.model import AV2TSAM, HeadConfig, head_config, segmentation_loss
from pipeline.model.av2t_sam import read_text_hidden_fcs
from stages.extract import get_encoder, resolve_device

CHECKPOINT_FORMAT = "av2t-head/1"


class OptimConfig(BaseModel):
    """AdamW with a cosine schedule to min_lr (the paper: lr 2e-4, wd 0.01, 40 epochs, batch 8)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = 2e-4
    weight_decay: float = 0.01
    min_lr: float = 1e-7


def preset_optim(preset: str) -> OptimConfig:
    """The preset's training defaults (pipeline/presets/<preset>/train.json)."""
    path = preset_dir(preset) / "train.json"
    return OptimConfig.model_validate_json(path.read_text()) if path.is_file() else OptimConfig()


class TrainConfig(BaseModel):
    """One training run: where the features are, the head, the optimiser, where outputs go."""

    model_config = ConfigDict(extra="forbid")
    store: str = "runs/store.zarr"
    subset: Literal["s4", "ms3"] = "s4"
    train_split: str = "train"
    val_split: str = "val"
    preset: str = "tiny"
    weights_dir: Path | None = None
    head: HeadConfig | None = Field(
        None, description="default: the preset's head.json (the paper's mul head)"
    )
    optim: OptimConfig | None = Field(None, description="default: the preset's train.json")
    seed: int = 0
    device: str = "auto"
    out: Path = Path("runs/train")
    resume: bool = True
    threads: int = Field(0, ge=0, description="torch threads (0: leave as is)")
    max_steps: int | None = Field(None, description="stop each epoch after this many steps (benchmarks)")
    stop_after: int | None = Field(
        None, description="leave after this many epochs of this invocation (resume later)"
    )
    progress: bool = True

    def head_config(self) -> HeadConfig:
        """The effective head."""
        return self.head or head_config(self.preset)

    def optimiser(self) -> OptimConfig:
        """The effective optimiser settings."""
        return self.optim or preset_optim(self.preset)


@dataclass
class Frozen:
    """The frozen encoders a head needs live (SAM 2 and BEiT-3) and the feature sub-groups it reads."""

    sam2: Any
    beit3: Any
    weights_dir: Path | None = None
    groups: dict[str, dict[str, EncoderGroup]] = field(default_factory=dict)  # split -> encoder name -> group


def sam2_overrides(head: HeadConfig) -> dict[str, Any] | None:
    """SAM 2 must also cache the trunk activation where the adapters start."""
    return {"trunk_block": head.adapter_start_block} if head.adapters else None


def load_frozen(cfg: TrainConfig, head: HeadConfig, splits: list[str]) -> Frozen:
    """Build SAM 2 / BEiT-3 as extraction did and find the matching feature groups (by fingerprint)."""
    device = str(resolve_device(cfg.device))
    sam2 = get_encoder("sam2", cfg.preset, cfg.weights_dir, device, sam2_overrides(head))
    beit3 = get_encoder("beit3", cfg.preset, cfg.weights_dir, device)
    store = FeatureStore(cfg.store, mode="r")
    frozen = Frozen(sam2, beit3, cfg.weights_dir)
    for split in splits:
        g = store.split(cfg.subset, split)
        frozen.groups[split] = {
            "sam2": g.encoder("sam2", fingerprint(sam2.provenance())),
            "beit3": g.encoder("beit3", fingerprint(beit3.provenance())),
            # CLIP / CLAP run only at extraction: take the one fingerprint the store holds.
            "clip": g.encoder("clip"),
            "clap": g.encoder("clap"),
            "gt": g.encoder("gt"),
        }
    return frozen


def build_model(head: HeadConfig, frozen: Frozen, split: str) -> AV2TSAM:
    """A head on the frozen encoders, sized from the cached CLIP / CLAP dims."""
    groups = frozen.groups[split]
    d_clip = groups["clip"].specs["clip"].shape[0]
    d_clap = groups["clap"].specs["clap"].shape[0]
    fcs, source = None, "text_hidden_fcs"
    if frozen.beit3.cfg.weights is not None:  # the EVF-SAM2 file that holds BEiT-3 holds the fcs too
        source = resolve_weights(frozen.beit3.cfg.weights, frozen.weights_dir)
        fcs = read_text_hidden_fcs(source)
    return AV2TSAM(head, frozen.sam2, frozen.beit3, d_clip, d_clap, fcs, source)


def sources(models: list[AV2TSAM], groups: dict[str, EncoderGroup]) -> dict[str, Source]:
    """Store arrays every model needs, plus the GT mask."""
    out = {"mask": Source(groups["gt"].key, "mask")}
    for m in models:
        for enc_name, arrays in m.cached_fields().items():
            for a in arrays:
                out[a] = Source(groups[enc_name].key, a)
    return out


def open_batches(
    cfg: TrainConfig, split: str, srcs: dict[str, Source], shuffle: bool, batch_size: int
) -> FeatureBatches:
    """A split's batches; open once per run (the store's metadata and completion records are read here)."""
    return FeatureBatches(
        cfg.store, cfg.subset, split, srcs, batch_size=batch_size, shuffle=shuffle, seed=cfg.seed
    )


def batches(ds: FeatureBatches, epoch: int, max_steps: int | None = None):
    """One epoch of batches, read one ahead in a thread (zarr decoding overlaps the step)."""
    ds.set_epoch(epoch)
    n = len(ds) if max_steps is None else min(len(ds), max_steps)
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(ds.__getitem__, 0) if n else None
        for i in range(n):
            batch = nxt.result()
            nxt = pool.submit(ds.__getitem__, i + 1) if i + 1 < n else None
            yield batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Features as float32 on the device (the store holds float16), masks as float."""
    return {k: v.to(device, non_blocking=True).float() for k, v in batch.items() if k != "row"}


@dataclass
class HeadRun:
    """One head being trained: model, optimiser, schedule, history, best score."""

    name: str
    head: HeadConfig
    model: AV2TSAM
    opt: torch.optim.Optimizer
    sched: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    best_mj: float = -1.0
    seconds: float = 0.0


def make_run(
    name: str, head: HeadConfig, model: AV2TSAM, optim: OptimConfig, steps_per_epoch: int
) -> HeadRun:
    """AdamW over the trainable parameters, cosine over all steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(1, optim.epochs * steps_per_epoch), eta_min=optim.min_lr
    )
    return HeadRun(name, head, model, opt, sched)


def train_step(run: HeadRun, batch: dict[str, torch.Tensor]) -> float:
    """One optimiser step on one batch; returns the loss."""
    t = time.perf_counter()
    run.model.train()
    out = run.model.forward_cached(batch)
    loss = segmentation_loss(out, batch["mask"], run.head)["loss"]
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.sched.step()
    run.seconds += time.perf_counter() - t
    return float(loss.detach())


@torch.no_grad()
def validate(
    runs: list[HeadRun], cfg: TrainConfig, val: FeatureBatches, index, device: torch.device
) -> list[dict[str, Any]]:
    """Val loss, M_J and M_F (one video per M_F batch) of every head, reading each batch once."""
    accs = [MetricAccumulator(batching="video") for _ in runs]
    losses = [[] for _ in runs]
    pending: list[dict[str, list]] = [{} for _ in runs]  # video -> rows not yet added (videos span batches)
    for raw in batches(val, 0, cfg.max_steps):
        batch = to_device(raw, device)
        rows = raw["row"].numpy()
        for i, run in enumerate(runs):
            run.model.eval()
            out = run.model.forward_cached(batch)
            losses[i].append(float(segmentation_loss(out, batch["mask"], run.head)["loss"]))
            for j, r in enumerate(rows):
                pending[i].setdefault(index.video[r], []).append(
                    (int(index.frame[r]), out["logits"][j].cpu(), batch["mask"][j].cpu())
                )
    results = []
    for i, _ in enumerate(runs):
        for video, items in pending[i].items():
            items.sort(key=lambda t: t[0])
            acc = accs[i]
            acc.add(
                video,
                torch.stack([t[1] for t in items]),
                torch.stack([t[2] for t in items]),
                frames=[t[0] for t in items],
            )
        s = accs[i].summary()
        results.append(
            {
                "val_loss": float(np.mean(losses[i])) if losses[i] else float("nan"),
                "val_M_J": s["M_J"],
                "val_M_F": s["M_F"],
            }
        )
    return results


def checkpoint_payload(
    run: HeadRun, cfg: TrainConfig, frozen: Frozen, epoch: int, metrics: dict[str, Any]
) -> dict[str, Any]:
    """What a head checkpoint holds: trainable weights and the fingerprints of everything frozen it expects."""
    groups = frozen.groups[cfg.train_split]
    return {
        "format": CHECKPOINT_FORMAT,
        "name": run.name,
        "preset": cfg.preset,
        "subset": cfg.subset,
        "head": run.head.model_dump(mode="json"),
        "trainable": run.model.trainable_state_dict(),
        "frozen": run.model.frozen_fingerprints(),
        "features": {k: g.fingerprint for k, g in groups.items() if k != "gt"},
        "epoch": epoch,
        "metrics": metrics,
        "optim": cfg.optimiser().model_dump(),
    }


def save_checkpoints(
    run: HeadRun, cfg: TrainConfig, frozen: Frozen, out: Path, epoch: int, metrics: dict[str, Any]
) -> None:
    """last.pt (with optimiser state, for resume) every epoch; best.pt when val M_J improves."""
    out.mkdir(parents=True, exist_ok=True)
    payload = checkpoint_payload(run, cfg, frozen, epoch, metrics)
    if metrics["val_M_J"] > run.best_mj:
        run.best_mj = metrics["val_M_J"]
        torch.save(payload, out / "best.pt")
    last = {
        **payload,
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "best_mj": run.best_mj,
        "history": run.history,
        "seconds": run.seconds,
        "torch_rng": torch.get_rng_state(),
    }
    tmp = out / "last.pt.tmp"
    torch.save(last, tmp)
    tmp.replace(out / "last.pt")  # atomic: a kill mid-save never leaves a broken last.pt


def read_head_checkpoint(path: str | Path) -> dict[str, Any]:
    """A head checkpoint (best.pt / last.pt), read with weights_only; clear errors for other files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: head checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors have no common base
        raise CheckpointError(f"{path}: cannot read head checkpoint: {e}") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an av2t head checkpoint (format {CHECKPOINT_FORMAT})")
    return ck


def load_head(path: str | Path, model: AV2TSAM) -> dict[str, Any]:
    """Load a head's trainable weights into model, refusing frozen weights other than those it was trained on."""
    ck = read_head_checkpoint(path)
    have = model.frozen_fingerprints()
    diff = {k: (v, have.get(k)) for k, v in ck["frozen"].items() if have.get(k) != v}
    if diff:
        parts = ", ".join(f"{k}: trained on {a}, now {b}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"{path}: was trained against other frozen weights ({parts}); build the same preset/weights"
        )
    model.load_trainable_state_dict(ck["trainable"])
    return ck


def try_resume(run: HeadRun, out: Path, optim: OptimConfig) -> int:
    """Restore a run from out/last.pt; returns the first epoch still to train (0 when starting fresh)."""
    path = out / "last.pt"
    if not path.is_file():
        return 0
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck.get("head") != run.head.model_dump(mode="json"):
        raise StoreError(f"{path}: was trained with another head config; use another --out or --no-resume")
    if ck.get("optim") != optim.model_dump():
        raise StoreError(
            f"{path}: was trained with optimiser {ck.get('optim')}, not {optim.model_dump()}; "
            "the schedule would not match: use another --out or --no-resume"
        )
    run.model.load_trainable_state_dict(ck["trainable"])
    run.opt.load_state_dict(ck["optimizer"])
    run.sched.load_state_dict(ck["scheduler"])
    run.best_mj, run.history, run.seconds = ck["best_mj"], list(ck["history"]), ck["seconds"]
    torch.set_rng_state(ck["torch_rng"])
    return int(ck["epoch"]) + 1


def write_log(run: HeadRun, out: Path) -> None:
    """metrics.csv and a loss / M_J curve PNG."""
    df = pd.DataFrame(run.history)
    df.to_csv(out / "metrics.csv", index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(df["epoch"], df["train_loss"], label="train")
    ax[0].plot(df["epoch"], df["val_loss"], label="val")
    ax[0].set(xlabel="epoch", ylabel="loss", title=run.name)
    ax[0].legend()
    ax[1].plot(df["epoch"], df["val_M_J"], label="M_J")
    ax[1].plot(df["epoch"], df["val_M_F"], label="M_F")
    ax[1].set(xlabel="epoch", ylim=(0, 1), title="validation")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)


def fit(cfg: TrainConfig, heads: dict[str, HeadConfig]) -> pd.DataFrame:
    """Train every head in one pass over the cached batches (each batch read once, fed to every head)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    optim = cfg.optimiser()
    device = resolve_device(cfg.device)
    first = next(iter(heads.values()))
    if len({json.dumps(sam2_overrides(h), sort_keys=True) for h in heads.values()}) > 1:
        raise ValueError("heads of one sweep must read the same SAM 2 features (same adapter start block)")
    frozen = load_frozen(cfg, first, [cfg.train_split, cfg.val_split])
    val_index = frozen.groups[cfg.val_split]["gt"].split.index
    runs = []
    n_train = frozen.groups[cfg.train_split]["gt"].split.n_rows
    steps = (
        -(-n_train // optim.batch_size)
        if cfg.max_steps is None
        else min(cfg.max_steps, -(-n_train // optim.batch_size))
    )
    for name, head in heads.items():
        torch.manual_seed(head.seed)
        model = build_model(head, frozen, cfg.train_split).to(device)
        runs.append(make_run(name, head, model, optim, steps))
    outs = {r.name: (cfg.out if len(runs) == 1 else cfg.out / r.name) for r in runs}
    start = min(try_resume(r, outs[r.name], optim) if cfg.resume else 0 for r in runs)
    models = [r.model for r in runs]
    train_ds = open_batches(
        cfg, cfg.train_split, sources(models, frozen.groups[cfg.train_split]), True, optim.batch_size
    )
    val_ds = open_batches(
        cfg, cfg.val_split, sources(models, frozen.groups[cfg.val_split]), False, optim.batch_size
    )

    from tqdm import tqdm

    last = optim.epochs if cfg.stop_after is None else min(optim.epochs, start + cfg.stop_after)
    for epoch in range(start, last):
        losses = [[] for _ in runs]
        bar = tqdm(
            total=steps, desc=f"epoch {epoch + 1}/{optim.epochs}", disable=not cfg.progress, leave=False
        )
        for raw in batches(train_ds, epoch, cfg.max_steps):
            batch = to_device(raw, device)
            for i, run in enumerate(runs):
                if len(run.history) <= epoch:  # a resumed head may already be past this epoch
                    losses[i].append(train_step(run, batch))
            bar.update()
        bar.close()
        todo = [i for i, r in enumerate(runs) if len(r.history) <= epoch]
        vals = validate([runs[i] for i in todo], cfg, val_ds, val_index, device)
        for i, v in zip(todo, vals, strict=True):
            run = runs[i]
            metrics = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses[i])),
                **v,
                "lr": run.sched.get_last_lr()[0],
                "seconds": round(run.seconds, 2),
            }
            run.history.append(metrics)
            save_checkpoints(run, cfg, frozen, outs[run.name], epoch, metrics)
            write_log(run, outs[run.name])
            if cfg.progress:
                print(
                    f"[{run.name}] epoch {epoch + 1}: loss {metrics['train_loss']:.4f} "
                    f"val M_J {v['val_M_J']:.4f} M_F {v['val_M_F']:.4f}"
                )
    return comparison(runs, outs)


def comparison(runs: list[HeadRun], outs: dict[str, Path]) -> pd.DataFrame:
    """One row per head: config, trainable params, best val M_J / M_F, training time."""
    rows = []
    for r in runs:
        best = max(r.history, key=lambda h: h["val_M_J"]) if r.history else {}
        rows.append(
            {
                "head": r.name,
                "fusion": r.head.fusion,
                "adapters": r.head.adapters,
                "params": sum(p.numel() for p in r.model.parameters() if p.requires_grad),
                "best_epoch": best.get("epoch"),
                "val_M_J": best.get("val_M_J"),
                "val_M_F": best.get("val_M_F"),
                "train_seconds": round(r.seconds, 1),
                "checkpoint": str(outs[r.name] / "best.pt"),
            }
        )
    return pd.DataFrame(rows)


def train(cfg: TrainConfig) -> pd.DataFrame:
    """Train the config's one head."""
    return fit(cfg, {"head": cfg.head_config()})


def load_sweep(path: str | Path, preset: str = "tiny") -> dict[str, HeadConfig]:
    """A sweep file: JSON {name: HeadConfig fields} (or a list of {"name": ..., **fields}) over the preset's head."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read sweep file: {e}") from e
    items = raw.items() if isinstance(raw, dict) else ((d.pop("name"), d) for d in raw)
    try:
        return {str(name): head_config(preset, **fields) for name, fields in items}
    except Exception as e:  # pydantic's ValidationError says which field
        raise ValueError(f"{path}: invalid head config: {e}") from e


def sweep(cfg: TrainConfig, heads: dict[str, HeadConfig]) -> pd.DataFrame:
    """Train several heads in one pass and write comparison.csv / comparison.md under cfg.out."""
    table = fit(cfg, heads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(cfg.out / "comparison.csv", index=False)
    (cfg.out / "comparison.md").write_text(table.to_markdown(index=False) + "\n")
    return table
