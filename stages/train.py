"""The train stage: fit fusion heads (projections, MLP, adapters, decoder) against cached features."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cache import EncoderGroup, FeatureStore
from cache.batches import FeatureBatches, Source, sources, to_device, video_outputs
from cache.feed import TrainReader, open_reader, steps_per_epoch, video_shares
from cache.negative_batches import NegativeMixer, negative_bank
from cache.quant import nonfinite_row_flags
from pipeline import ranks as distributed
from pipeline.data.layout import mask_kind
from pipeline.data.releases import release_of
from pipeline.devices import resolve_device, torch_threads
from pipeline.encoders.gt_mask import ground_truth_group
from pipeline.evaluation.evaluators import REAL, OfficialScores, VideoOutput
from pipeline.files import OutputLock, clean_temp, inside, safe_name, save_torch, write_atomic, write_text
from pipeline.model import AV2TSAM, HeadConfig, segmentation_loss
from pipeline.model.build import build_model, frozen_encoders, sam2_overrides
from pipeline.model.head_checkpoint import head_payload, save_head
from pipeline.model.precision import as_fp32, autocast, resolve_precision
from pipeline.model.resume import read_last, restore
from pipeline.negatives import offscreen_rank
from pipeline.ranks import Ranks
from pipeline.settings import OptimConfig, TrainConfig

FEATURES = ("clip", "clap", "sam2", "beit3", "gt")


class TrainingDiverged(RuntimeError):
    """Training met a non-finite loss, output or weight; nothing was saved from that state."""


def batch_nonfinite(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) bool on the batch's device: rows with a non-finite value in any feature (no host round trip)."""
    return nonfinite_row_flags({k: v for k, v in batch.items() if k != "row"})


def describe_rows(bad: torch.Tensor, rows: np.ndarray, index) -> list[str]:
    """The rows flagged by `nonfinite_row_flags`, as 'video frame k (row r)'."""
    return [f"{index.video[r]} frame {int(index.frame[r])} (row {int(r)})" for r in rows[bad.cpu().numpy()]]


def diverged(what: str, bad: torch.Tensor, rows: np.ndarray, index, cfg: TrainConfig) -> TrainingDiverged:
    """The error for a non-finite value at `what`, naming the rows whose features are not finite, if any.

    `bad` is the step's `batch_nonfinite` flags (kept per step: the batch itself is gone when the epoch's
    losses are read).
    """
    found = describe_rows(bad, rows, index)
    if found:
        cause = (
            f"non-finite features in {len(found)} row(s): {', '.join(found[:5])}"
            f"{' ...' if len(found) > 5 else ''}; check the store with `av2t cache verify {cfg.store}`"
        )
    else:
        cause = "the features are finite: training diverged (lower the learning rate, e.g. --lr)"
    return TrainingDiverged(
        f"{what} is not finite; {cause}. No checkpoint was written from this state "
        f"(last.pt / best.pt under {cfg.out} hold the last good epoch, if any)"
    )


def check_finite_weights(run: HeadRun, where: str) -> None:
    """Refuse to go on (and to save) with non-finite trainable weights."""
    bad = [k for k, v in run.model.trainable_state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        raise TrainingDiverged(
            f"{run.name}: {where}: {len(bad)} trainable tensor(s) hold non-finite values ({', '.join(bad[:3])}); "
            "training diverged (lower the learning rate, e.g. --lr); nothing was saved from this state"
        )


@dataclass
class Features:
    """The store sub-groups a head reads in one split, by encoder name."""

    groups: dict[str, EncoderGroup]

    @property
    def index(self):
        """The split's index table."""
        return self.groups["gt"].split.index

    def widths(self) -> dict[str, int]:
        """d_clip / d_clap: the cached embeddings' widths."""
        return {f"d_{n}": int(self.groups[n].specs[n].shape[0]) for n in ("clip", "clap")}

    def fingerprints(self) -> dict[str, str]:
        """Encoder name -> fingerprint of the features (what a head checkpoint records)."""
        return {k: g.fingerprint for k, g in self.groups.items() if k != "gt"}


def open_features(cfg: TrainConfig, split: str, frozen: dict[str, Any]) -> Features:
    """The split's sub-groups: SAM 2 / BEiT-3 computed by the encoders built here (fp32 or bf16), the rest as
    held."""
    group = FeatureStore(cfg.store, mode="r").split(cfg.subset, split)
    gt = ground_truth_group(group.encoders(), mask_kind(cfg.subset), cfg.store, cfg.subset)
    # CLIP / CLAP run only at extraction: take the one fingerprint the store holds.
    return Features(
        {
            n: group.encoder_for(n, frozen[n].provenance())
            if n in frozen
            else (gt if n == "gt" and gt is not None else group.encoder(n))
            for n in FEATURES
        }
    )


def open_batches(
    cfg: TrainConfig,
    split: str,
    srcs: dict[str, Source],
    shuffle: bool,
    batch_size: int,
    device: torch.device | None = None,
    rows: np.ndarray | None = None,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int = 1,
    show: bool = True,
) -> TrainReader:
    """A split's reader (`cache.feed.open_reader`): resident when it fits cfg's budget, else streaming.

    Open once per run (the store's metadata and completion records are read here; a resident split is read
    whole here). `reader.epoch(e, max_steps)` yields the epoch's batches; the decision is logged.
    """
    budget = None if cfg.memory_budget_gib is None else cfg.memory_budget_gib * 2**30
    reader = open_reader(
        cfg.store, cfg.subset, split, srcs, batch_size=batch_size, shuffle=shuffle, seed=cfg.seed,
        mode=cfg.feed, memory_budget=budget, device=device, rows=rows, window=cfg.shuffle_window,
        threads=cfg.reader_threads, drop_last=drop_last, rank=rank, world_size=world_size,
    )  # fmt: skip
    if cfg.progress and show:
        print(reader.describe())
    return reader


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
    precision: str = "fp32"  # resolved: "fp32" or "bf16"
    forward: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None  # compiled, if asked
    negatives: NegativeMixer | None = None  # turns a share of each batch's rows into negatives
    steps: list[dict[str, Any]] = field(default_factory=list)  # per-step losses (cfg.step_log)


def make_run(
    name: str,
    head: HeadConfig,
    model: AV2TSAM,
    optim: OptimConfig,
    steps_per_epoch: int,
    precision: str = "fp32",
    compile: bool = False,
) -> HeadRun:
    """AdamW over the trainable parameters, cosine over all steps; optionally a torch.compile'd forward."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(1, optim.epochs * steps_per_epoch), eta_min=optim.min_lr
    )
    forward = torch.compile(model.forward_cached, dynamic=False) if compile else None
    return HeadRun(name, head, model, opt, sched, precision=precision, forward=forward)


def train_step(
    run: HeadRun,
    batch: dict[str, torch.Tensor] | None,
    share: float = 1.0,
    reduce: bool = False,
    micro: list[tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on one batch; (the global batch's loss, this batch's loss), detached 0-dim tensors.

    Nothing here reads a value back to the host: the caller keeps the losses and reads them once per epoch.
    The forward runs under the run's precision (bf16 autocast or fp32); the loss is computed in fp32.
    Data parallel (`reduce`): the batch is this rank's slice of the global batch, `share` its part of the
    global rows (None: an empty slice); the loss is a mean over rows, so the global loss is the sum over ranks
    of share x the slice's loss, and so are the gradients: one all-reduce sums them (and the losses).
    `micro` (one process taking an N-rank run's global batches): the (start, end) of each rank's slice in the
    batch; the slices run one after another and their weighted gradients add up in rank order, as the
    all-reduce adds them.
    """
    t = time.perf_counter()
    run.model.train()
    run.opt.zero_grad(set_to_none=True)
    n = 0 if batch is None else len(batch["mask"])
    parts = [(0, n, 1.0)] if micro is None else [(a, b, (b - a) / n) for a, b in micro if b > a]
    weighted = local = None
    for a, b, w in parts if batch is not None else []:
        part = batch if micro is None else {k: v[a:b] for k, v in batch.items()}
        with autocast(run.precision, run.model.device):
            out = (run.forward or run.model.forward_cached)(part)
        loss = segmentation_loss(as_fp32(out), part["mask"], run.head)["loss"]
        scale = share if reduce else (w if micro is not None else None)
        (loss if scale is None else loss * scale).backward()
        term = loss.detach() if scale is None else loss.detach() * scale
        weighted = term if weighted is None else weighted + term
        local = loss.detach()
    zero = torch.zeros((), device=run.model.device)
    weighted = zero if weighted is None else weighted
    local = (zero if local is None else local) if reduce else weighted
    total = weighted
    if reduce:
        params = [p for g in run.opt.param_groups for p in g["params"]]
        total = distributed.reduce_gradients(params, weighted)
    run.opt.step()
    run.sched.step()
    run.seconds += time.perf_counter() - t
    return total, local


def negative_mixers(runs: list[HeadRun], cfg: TrainConfig, feats: Features, device: torch.device) -> None:
    """Give each head with negatives > 0 its mixer; one bank of negative CLAP rows serves them all.

    Silence / noise rows missing from the store fail here, before any step, naming `av2t extract --negatives`.
    """
    wanted = [r for r in runs if r.head.negatives > 0]
    if not wanted:
        return
    conditions = {c for r in wanted for c in r.head.negative_weights()}
    bank = negative_bank(
        cfg.store,
        cfg.subset,
        cfg.train_split,
        feats.groups["clap"],
        conditions,
        device,
        offscreen_rank,
        cfg.negatives_seed,
    )
    for r in wanted:
        r.negatives = NegativeMixer(r.head.negatives, r.head.negative_weights(), bank, cfg.seed)


def epoch_loss(
    run: HeadRun,
    epoch: int,
    losses: list[torch.Tensor],
    bad: Mapping[int, torch.Tensor],
    rows: Mapping[int, np.ndarray],
    index,
    cfg: TrainConfig,
) -> float:
    """The epoch's mean train loss, read from the device once; the first non-finite step raises, named.

    losses, bad (each step's `batch_nonfinite`) and rows (each step's store rows) are kept per step (0-based).
    """
    if not losses:
        return float("nan")
    values = torch.stack(losses).cpu().numpy().astype(np.float64)  # the one read of the epoch's losses
    nonfinite = np.flatnonzero(~np.isfinite(values))
    if len(nonfinite):
        step = int(nonfinite[0])
        what = f"{run.name}: epoch {epoch + 1}, step {step + 1}: the loss ({values[step]})"
        raise diverged(what, bad[step], rows[step], index, cfg)
    return float(np.mean(values))


@torch.no_grad()
def validate(
    runs: list[HeadRun],
    cfg: TrainConfig,
    val: FeatureBatches,
    index,
    device: torch.device,
    ranks: Ranks | None = None,
) -> list[dict[str, Any]]:
    """Val loss, M_J and M_F (one video per M_F batch: the evaluate stage's evaluator) of every head.

    Everything stays on the device (logits, per-video scores, losses, finiteness flags) until the end,
    where each head's values are read once; the scores are the official ones bit for bit. The val loss is
    the mean over rows (batch losses weighted by their rows).

    Data parallel: each rank scores its share of whole videos (`val` reads it); every rank's per-video
    records (frame IoUs, per-video M_J and F curves) are gathered and merged in the split's row order into
    one accumulator, so M_J / M_F are those of one process scoring every video (the same sums in the same
    order); the loss sums are summed.
    """
    ranks = ranks or Ranks()
    evaluators = [OfficialScores() for _ in runs]
    losses: list[list[torch.Tensor]] = [[] for _ in runs]
    sizes: list[int] = []
    finite: list[list[torch.Tensor]] = [[] for _ in runs]
    bad: list[torch.Tensor] = []
    seen: list[np.ndarray] = []

    def forward(batch: dict[str, torch.Tensor], rows) -> dict[str, Any]:
        logits = {}
        bad.append(batch_nonfinite(batch))
        seen.append(rows)
        sizes.append(len(rows))
        for i, run in enumerate(runs):
            run.model.eval()
            with autocast(run.precision, device):
                out = as_fp32(run.model.forward_cached(batch))
            finite[i].append(torch.isfinite(out["logits"]).all())
            losses[i].append(segmentation_loss(out, batch["mask"], run.head)["loss"])
            logits[str(i)] = out["logits"]
        return {"logits": logits}

    if len(val.rows):
        for v in video_outputs(val, index, forward, device, cfg.max_steps):
            for i, e in enumerate(evaluators):
                logits = {REAL: v.fields["logits"][str(i)]}
                e.process(VideoOutput(v.video, v.category, v.frames, v.fields["mask"], logits))
    error = None
    for i in range(len(runs)):
        if finite[i]:
            ok = torch.stack(finite[i]).cpu().numpy()
            if not ok.all():
                step = int(np.flatnonzero(~ok)[0])
                what = f"{runs[i].name}: validation ({cfg.val_split}) output"
                error = diverged(what, bad[step], seen[step], index, cfg)
                break
    distributed.agree(ranks, error)
    weights = torch.tensor(sizes, dtype=torch.float64)
    mine = [
        (
            evaluators[i].acc.records(),
            float((torch.stack(losses[i]).cpu().double() * weights).sum()) if losses[i] else 0.0,
            int(weights.sum()),
        )
        for i in range(len(runs))
    ]
    parts = distributed.gather(mine) if ranks.active else [mine]
    videos, starts = np.unique(np.asarray(index.video).astype(str), return_index=True)
    first_row = dict(zip(videos.tolist(), starts.tolist(), strict=True))
    results = []
    for i in range(len(runs)):
        records = sorted((r for p in parts for r in p[i][0]), key=lambda r: first_row[r.video])
        merged = OfficialScores()
        merged.acc.extend(records)
        s = merged.evaluate()
        total, n = sum(p[i][1] for p in parts), sum(p[i][2] for p in parts)
        results.append(
            {"val_loss": total / n if n else float("nan"), "val_M_J": s["M_J"], "val_M_F": s["M_F"]}
        )
    return results


def val_subset(index, n_rows: int | None, seed: int) -> np.ndarray | None:
    """A fixed, seeded subset of whole validation videos holding at least n_rows rows (None: every row).

    The same for every epoch and every head of a run (it depends on the seed and the index only).
    """
    if n_rows is None or n_rows >= len(index.video):
        return None
    videos = index.videos()
    picked, total = [], 0
    for k in np.random.default_rng((seed, 1)).permutation(len(videos)):
        rows = index.rows_of(videos[k])
        picked.append(rows)
        total += len(rows)
        if total >= n_rows:
            break
    return np.sort(np.concatenate(picked)).astype(np.int64)


def save_checkpoints(
    run: HeadRun, cfg: TrainConfig, feats: Features, out: Path, epoch: int, metrics: dict[str, Any]
) -> None:
    """last.pt (with optimiser state, for resume) every epoch; best.pt when a validated M_J improves; atomic."""
    payload = head_payload(
        run.model,
        name=run.name,
        preset=cfg.preset,
        subset=cfg.subset,
        features=feats.fingerprints(),
        epoch=epoch,
        metrics=metrics,
        optim=cfg.optimiser().model_dump(),
        precision=run.precision,
    )
    if metrics.get("validated", True) and metrics["val_M_J"] > run.best_mj:
        run.best_mj = metrics["val_M_J"]
        save_head(payload, out / "best.pt")
    last = {
        **payload,
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "best_mj": run.best_mj,
        "history": run.history,
        "seconds": run.seconds,
        "torch_rng": torch.get_rng_state(),
    }
    save_torch(last, out / "last.pt")


def try_resume(run: HeadRun, out: Path, optim: OptimConfig) -> int:
    """Restore a run from out/last.pt (pipeline.model.resume); the first epoch still to train (0: fresh)."""
    held = read_last(out / "last.pt", run.head, optim)
    if held is None:
        return 0
    state = restore(held, out / "last.pt", run.model, run.opt, run.sched)
    run.best_mj, run.history, run.seconds = state.best_mj, state.history, state.seconds
    return state.next_epoch


def write_log(run: HeadRun, out: Path) -> None:
    """metrics.csv and a loss / M_J curve PNG (and steps.csv when steps are kept)."""
    df = pd.DataFrame(run.history)
    write_text(out / "metrics.csv", df.to_csv(index=False))
    if run.steps:
        write_text(out / "steps.csv", pd.DataFrame(run.steps).to_csv(index=False))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(df["epoch"], df["train_loss"], label="train")
    ax[0].plot(df["epoch"], df["val_loss"], "o-", ms=3, label="val")  # NaN on epochs not validated
    ax[0].set(xlabel="epoch", ylabel="loss", title=run.name)
    ax[0].legend()
    ax[1].plot(df["epoch"], df["val_M_J"], "o-", ms=3, label="M_J")
    ax[1].plot(df["epoch"], df["val_M_F"], "o-", ms=3, label="M_F")
    ax[1].set(xlabel="epoch", ylim=(0, 1), title="validation")
    ax[1].legend()
    fig.tight_layout()
    write_atomic(out / "curves.png", lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


EpochHook = Callable[[str, dict[str, Any]], None]


def head_folders(cfg: TrainConfig, heads: dict[str, HeadConfig]) -> dict[str, Path]:
    """Each head's output folder: cfg.out for one head, cfg.out/<name> in a sweep (a safe name, inside cfg.out)."""
    if len(heads) == 1:
        return dict.fromkeys(heads, cfg.out)
    return {n: inside(cfg.out, safe_name(n, "sweep head")) for n in heads}


def fit(cfg: TrainConfig, heads: dict[str, HeadConfig], on_epoch: EpochHook | None = None) -> pd.DataFrame:
    """Train every head in one pass over the cached batches (each batch read once, fed to every head).

    on_epoch(head name, metrics row) is called after each head's epoch is validated and saved (the flow
    reports progress to Prefect with it; the stage knows nothing of Prefect). One writer per cfg.out: a
    second run into it is refused (pipeline.files.OutputLock).
    """
    outs = head_folders(cfg, heads)
    with torch_threads(cfg.threads):  # the caller's thread count given back after
        # Data parallel: rank 0 alone writes (the launcher holds the lock).
        if not distributed.writes_outputs():
            return _fit(cfg, heads, outs, on_epoch)
        with OutputLock(cfg.out):
            clean_temp(cfg.out)  # temporary files of a run killed mid-save (dead pids only)
            return _fit(cfg, heads, outs, on_epoch)


def _fit(
    cfg: TrainConfig, heads: dict[str, HeadConfig], outs: dict[str, Path], on_epoch: EpochHook | None
) -> pd.DataFrame:
    if release_of(cfg.subset).expressions is not None:  # Ref-AVS: rows are (expression, frame) pairs
        return _fit_ref_avs(cfg, heads, outs, on_epoch)
    torch.manual_seed(cfg.seed)
    optim = cfg.optimiser()
    ranks, device = distributed.setup(resolve_device(cfg.device), cfg.collective_timeout_s)
    if ranks.active and cfg.world_size not in (None, ranks.world):
        raise ValueError(
            f"--world-size {cfg.world_size} but torchrun started {ranks.world} ranks: leave it out"
        )
    world = ranks.world if ranks.active else (cfg.world_size or 1)
    talk = cfg.progress and ranks.main
    first = next(iter(heads.values()))
    if len({json.dumps(sam2_overrides(h), sort_keys=True) for h in heads.values()}) > 1:
        raise ValueError("heads of one sweep must read the same SAM 2 features (same adapter start block)")
    frozen = frozen_encoders(first, cfg.preset, cfg.weights_dir, device)
    feats = {split: open_features(cfg, split, frozen) for split in (cfg.train_split, cfg.val_split)}
    train_feats = feats[cfg.train_split]
    runs = []
    n_train = train_feats.groups["gt"].split.n_rows
    # compile: a static batch, so training drops the last, short batch of an epoch.
    if cfg.compile and n_train < optim.batch_size:
        raise ValueError(
            f"compile drops short batches: {n_train} training rows < batch size {optim.batch_size}"
        )
    steps = steps_per_epoch(n_train, optim.batch_size, world, cfg.compile)
    steps = max(1, steps if cfg.max_steps is None else min(cfg.max_steps, steps))
    precision = resolve_precision(cfg.precision, device)
    for name, head in heads.items():
        torch.manual_seed(head.seed)
        model = build_model(
            head,
            cfg.preset,
            **train_feats.widths(),
            weights_dir=cfg.weights_dir,
            device=device,
            encoders=frozen,
        )
        runs.append(make_run(name, head, model, optim, steps, precision, cfg.compile))
    negative_mixers(runs, cfg, train_feats, device)
    start = min(try_resume(r, outs[r.name], optim) if cfg.resume else 0 for r in runs)
    models = [r.model for r in runs]
    train_ds = open_batches(
        cfg, cfg.train_split, sources(models, train_feats.groups), True, optim.batch_size, device,
        drop_last=cfg.compile,  # a static batch shape for the compiled step
        rank=ranks.rank if ranks.active else None, world_size=world, show=not ranks.active,
    )  # fmt: skip
    val_feats = feats[cfg.val_split]
    val_rows = val_subset(val_feats.index, cfg.val_rows, cfg.seed)
    n_val = len(val_feats.index.video) if val_rows is None else len(val_rows)
    if ranks.active:  # each rank validates its share of whole videos
        every = np.arange(len(val_feats.index.video)) if val_rows is None else val_rows
        val_rows = video_shares(every, val_feats.index.video, ranks.world)[ranks.rank]
    val_ds = open_batches(
        cfg, cfg.val_split, sources(models, val_feats.groups), False, optim.batch_size, device, val_rows,
        show=not ranks.active,
    )  # fmt: skip
    if ranks.active and cfg.progress:
        lines = distributed.gather(f"{train_ds.describe()}\n  {val_ds.describe()}")
        if ranks.main:
            print("\n".join(lines))

    from tqdm import tqdm

    last = optim.epochs if cfg.stop_after is None else min(optim.epochs, start + cfg.stop_after)
    for epoch in range(start, last):
        todo = [i for i, r in enumerate(runs) if len(r.history) <= epoch]  # a resumed head may be past it
        # Kept on the device per step, read once after the epoch: losses and non-finite feature rows.
        losses: list[list[torch.Tensor]] = [[] for _ in runs]
        bad: dict[int, torch.Tensor] = {}
        step_rows: dict[int, np.ndarray] = {}
        mine_losses: list[list[torch.Tensor]] = [[] for _ in runs]  # this rank's slices (data parallel)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{optim.epochs}", disable=not talk, leave=False)
        for step, raw in enumerate(train_ds.epoch(epoch, cfg.max_steps)):
            step_rows[step] = raw["row"].numpy()
            whole, at = train_ds.global_batch(step)
            share = len(step_rows[step]) / len(whole)
            batch = to_device(raw, device) if len(step_rows[step]) else None
            bad[step] = batch_nonfinite(batch) if batch is not None else torch.zeros(0, dtype=torch.bool)
            for i in todo:
                mix = runs[i].negatives
                mine = batch
                if mix is not None and batch is not None:
                    mine = mix.apply(batch, step_rows[step], epoch, step, whole if ranks.active else None, at)
                micro = train_ds.rank_slices(step) if world > 1 and not ranks.active else None
                total, local = train_step(runs[i], mine, share, ranks.active, micro)
                losses[i].append(total)
                mine_losses[i].append(local)
            bar.update()
        bar.close()
        error = None
        try:  # a non-finite loss on this rank's slices: named by this rank (the others stop too)
            for i in todo:
                epoch_loss(runs[i], epoch, mine_losses[i], bad, step_rows, train_feats.index, cfg)
        except TrainingDiverged as e:
            error = e
        distributed.agree(ranks, error)
        train_loss = {
            i: epoch_loss(runs[i], epoch, losses[i], bad, step_rows, train_feats.index, cfg) for i in todo
        }
        if cfg.step_log:
            for i in todo:
                values = torch.stack(losses[i]).cpu().tolist() if losses[i] else []
                runs[i].steps += [
                    {"epoch": epoch + 1, "step": k + 1, "loss": v} for k, v in enumerate(values)
                ]
        validated = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == optim.epochs
        if validated:
            vals = validate([runs[i] for i in todo], cfg, val_ds, val_feats.index, device, ranks)
        else:
            vals = [{"val_loss": math.nan, "val_M_J": math.nan, "val_M_F": math.nan} for _ in todo]
        for i, v in zip(todo, vals, strict=True):
            run = runs[i]
            metrics = {
                "epoch": epoch + 1,
                "train_loss": train_loss[i],
                **v,
                "lr": run.sched.get_last_lr()[0],
                "seconds": round(run.seconds, 2),
                "precision": run.precision,
                "validated": validated,
                "val_rows": n_val,
            }
            check_finite_weights(run, f"epoch {epoch + 1}")
            run.history.append(metrics)
            if not ranks.main:  # the others keep the same state, and say nothing
                if metrics.get("validated", True) and metrics["val_M_J"] > run.best_mj:
                    run.best_mj = metrics["val_M_J"]
                continue
            save_checkpoints(run, cfg, train_feats, outs[run.name], epoch, metrics)
            write_log(run, outs[run.name])
            if on_epoch is not None:
                on_epoch(run.name, metrics)
            if cfg.progress:
                print(
                    f"[{run.name}] epoch {epoch + 1}: loss {metrics['train_loss']:.4f} "
                    + (
                        f"val M_J {v['val_M_J']:.4f} M_F {v['val_M_F']:.4f}"
                        if validated
                        else "(not validated)"
                    )
                )
    return comparison(runs, outs)


def ref_avs_split(cfg: TrainConfig, split: str, model: AV2TSAM, frozen: dict[str, Any], preset: str | Path):
    """A Ref-AVS split in memory (cache.expression_rows): the frame features `model` reads, the preset
    tokenizer's tokens, the expressions' masks."""
    from cache.expression_rows import read_expression_split
    from cache.expressions import feature_key
    from pipeline.encoders.text_tokens import load_tokenizer
    from pipeline.presets import weights_dir

    group = FeatureStore(cfg.store, mode="r").split(cfg.subset, split)
    groups = {
        n: group.encoder_for(n, frozen[n].provenance()) if n in frozen else group.encoder(n)
        for n in FEATURES
        if n != "gt"
    }
    srcs = sources([model], {**groups, "gt": groups["clip"]})
    srcs.pop("mask")  # Ref-AVS masks are per expression
    text_key = feature_key("text", load_tokenizer(preset, weights_dir(cfg.weights_dir)).provenance())
    return read_expression_split(cfg.store, cfg.subset, split, srcs, text_key), groups


def _fit_ref_avs(
    cfg: TrainConfig, heads: dict[str, HeadConfig], outs: dict[str, Path], on_epoch: EpochHook | None
) -> pd.DataFrame:
    """The train stage on a release with expressions (Ref-AVS): rows are (expression, frame) pairs, each the
    frame's features, the expression's tokens and mask (pipeline.ref_avs_rows); every head sees the same batches;
    validated on cfg.val_split with the Ref-AVS J / F (official batching), best.pt = best J."""
    from pipeline.ref_avs_rows import head_batch, score

    torch.manual_seed(cfg.seed)
    optim = cfg.optimiser()
    device = resolve_device(cfg.device)
    first = next(iter(heads.values()))
    frozen = frozen_encoders(first, cfg.preset, cfg.weights_dir, device)
    group = FeatureStore(cfg.store, mode="r").split(cfg.subset, cfg.train_split)
    widths = {f"d_{n}": int(group.encoder(n).specs[n].shape[0]) for n in ("clip", "clap")}
    models = {}
    for name, head in heads.items():
        torch.manual_seed(head.seed)
        models[name] = build_model(
            head, cfg.preset, **widths, weights_dir=cfg.weights_dir, device=device, encoders=frozen
        )
    any_model = next(iter(models.values()))
    train, groups = ref_avs_split(cfg, cfg.train_split, any_model, frozen, cfg.preset)
    val, _ = ref_avs_split(cfg, cfg.val_split, any_model, frozen, cfg.preset)
    feats = Features({**groups, "gt": groups["clip"]})  # what the checkpoint records (fingerprints)
    pairs = train.pairs()
    steps = -(-len(pairs) // optim.batch_size)
    steps = max(1, steps if cfg.max_steps is None else min(cfg.max_steps, steps))
    precision = resolve_precision(cfg.precision, device)
    runs = [make_run(n, heads[n], m, optim, steps, precision) for n, m in models.items()]
    start = min(try_resume(r, outs[r.name], optim) if cfg.resume else 0 for r in runs)
    last = optim.epochs if cfg.stop_after is None else min(optim.epochs, start + cfg.stop_after)
    n_val = int((val.frame_rows >= 0).sum())
    for epoch in range(start, last):
        todo = [r for r in runs if len(r.history) <= epoch]
        order = pairs[np.random.default_rng((cfg.seed, epoch)).permutation(len(pairs))]
        losses: dict[str, list[torch.Tensor]] = {r.name: [] for r in todo}
        for step in range(steps):
            sel = order[step * optim.batch_size : (step + 1) * optim.batch_size]
            batch = head_batch(train, sel, first.mask_size, device)
            for r in todo:
                losses[r.name].append(train_step(r, batch)[0])
        validated = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == optim.epochs
        for r in todo:
            loss = float(torch.stack(losses[r.name]).double().mean())
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"{r.name}: epoch {epoch + 1}: the train loss is not finite ({loss}); lower the learning rate"
                )
            s = score(r.model, val, device, r.precision).official() if validated else None
            metrics = {
                "epoch": epoch + 1,
                "train_loss": loss,
                "val_loss": math.nan,
                "val_M_J": s["J"] if s else math.nan,  # Ref-AVS J / F under the AVSBench column names
                "val_M_F": s["F"] if s else math.nan,
                "lr": r.sched.get_last_lr()[0],
                "seconds": round(r.seconds, 2),
                "precision": r.precision,
                "validated": validated,
                "val_rows": n_val,
            }
            check_finite_weights(r, f"epoch {epoch + 1}")
            r.history.append(metrics)
            save_checkpoints(r, cfg, feats, outs[r.name], epoch, metrics)
            write_log(r, outs[r.name])
            if on_epoch is not None:
                on_epoch(r.name, metrics)
            if cfg.progress:
                print(f"[{r.name}] epoch {epoch + 1}: loss {loss:.4f} val J {metrics['val_M_J']:.4f}")
    table = comparison(runs, outs)
    table.insert(1, "text", [r.head.text for r in runs])
    return table


def comparison(runs: list[HeadRun], outs: dict[str, Path]) -> pd.DataFrame:
    """One row per head: config, trainable params, best val M_J / M_F, training time."""
    rows = []
    for r in runs:
        validated = [h for h in r.history if h.get("validated", True) and not math.isnan(h["val_M_J"])]
        best = max(validated, key=lambda h: h["val_M_J"]) if validated else {}
        rows.append(
            {
                "head": r.name,
                "fusion": r.head.fusion,
                "adapters": r.head.adapters,
                "negatives": r.head.negatives,
                "params": sum(p.numel() for p in r.model.parameters() if p.requires_grad),
                "best_epoch": best.get("epoch"),
                "val_M_J": best.get("val_M_J"),
                "val_M_F": best.get("val_M_F"),
                "train_seconds": round(r.seconds, 1),
                "checkpoint": str(outs[r.name] / "best.pt"),
            }
        )
    return pd.DataFrame(rows)


def train(cfg: TrainConfig, on_epoch: EpochHook | None = None) -> pd.DataFrame:
    """Train the config's one head."""
    return fit(cfg, {"head": cfg.head_config()}, on_epoch)


def sweep(cfg: TrainConfig, heads: dict[str, HeadConfig], on_epoch: EpochHook | None = None) -> pd.DataFrame:
    """Train several heads in one pass and write comparison.csv / comparison.md under cfg.out."""
    head_folders(cfg, heads)  # a bad name is refused before the lock creates cfg.out
    if not distributed.env_ranks().main:  # data parallel: rank 0 alone writes
        return fit(cfg, heads, on_epoch)
    if not distributed.writes_outputs():  # rank 0 under a launcher that holds the lock
        table = fit(cfg, heads, on_epoch)
        write_text(cfg.out / "comparison.csv", table.to_csv(index=False))
        write_text(cfg.out / "comparison.md", table.to_markdown(index=False) + "\n")
        return table
    with OutputLock(cfg.out):  # held until the tables are written too
        table = fit(cfg, heads, on_epoch)
        write_text(cfg.out / "comparison.csv", table.to_csv(index=False))
        write_text(cfg.out / "comparison.md", table.to_markdown(index=False) + "\n")
    return table
