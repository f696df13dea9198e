"""The evaluate stage: score a trained head on a split, from cached features or end to end from the raw files.

Both modes build the head the same way (the checkpoint's preset and head config on the frozen encoders,
load_head checking the frozen weights) and score only annotated frames, one video per M_F batch (AV2T's
test), with the batch-free M_F and AV2T's raw-logit M_F as extra fields. "cached" reads the split's rows from
the feature store; "end-to-end" decodes frames and audio, runs CLIP and CLAP, then `forward_raw`. The
features the head was trained on (the checkpoint's `features` fingerprints) must be the ones used here.

Outputs under `out`: report.json, report.md, frames.csv, videos.csv, categories.csv, overlays/ (frame | GT |
prediction for the best and worst videos by M_J) and, with save_masks, masks/<name>/<name>_<k>.png holding
the predicted probability as round(p * 255) (not a 0/255 threshold: `av2t score` on them then gives the
report's M_J exactly and its M_F to ~1e-4, where a hard mask would lose the soft scores M_F needs).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cache import ArraySpec, FeatureStore, FingerprintMismatch, StoreError, fingerprint
from cache.batches import FeatureBatches
from pipeline.checkpoints import CheckpointError
from pipeline.data.audio import load_segments
from pipeline.data.clips import Clip, DataError, read_clips
from pipeline.data.images import load_frame, load_mask
from pipeline.metrics import MetricAccumulator, m_f_raw_logits, m_j
from pipeline.model import AV2TSAM, HeadConfig
from pipeline.scoring import prediction_path, probability_png, write_probability
from stages.extract import get_encoder, resolve_device
from stages.train import (
    Frozen,
    TrainConfig,
    build_model,
    load_frozen,
    load_head,
    read_head_checkpoint,
    sam2_overrides,
    sources,
    to_device,
)

M_F_BATCHING = "one video per batch (AV2T test); batch-free M_F also reported"
VARIANTS = ("real", "swapped", "silence")
FEATURE_ENCODERS = ("clip", "clap", "sam2", "beit3")


class EvalConfig(BaseModel):
    """One evaluation: which head, on which data, from where, and what to write."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path = Field(description="a head checkpoint (best.pt) written by the train stage")
    root: Path = Field(description="AVSBench root (clip list, frames for overlays, raw data end to end)")
    subset: Literal["s4", "ms3"] = "s4"
    split: Literal["train", "val", "test"] = "test"
    mode: Literal["cached", "end-to-end"] = "cached"
    store: str | None = Field(None, description="feature store (cached mode)")
    device: str = "auto"
    out: Path = Path("runs/eval")
    batch_size: int = Field(8, ge=1, description="rows per forward (cached mode; end to end: one video)")
    vision_bias: bool = Field(False, description="also score with swapped and silent audio")
    weights_dir: Path | None = None
    threads: int = Field(0, ge=0, description="torch threads (0: leave as is)")
    save_masks: bool = Field(False, description="write predicted probabilities as PNG under out/masks")
    overlays: int = Field(3, ge=0, description="overlay PNGs of this many best and worst videos")
    progress: bool = True

    @model_validator(mode="after")
    def _store_for_cached(self) -> EvalConfig:
        """Cached mode reads a store."""
        if self.mode == "cached" and not self.store:
            raise ValueError("mode 'cached' needs a store")
        return self


# ---------------------------------------------------------------- checkpoint and model


def read_checkpoint(path: Path) -> tuple[dict[str, Any], HeadConfig]:
    """The head checkpoint and its head config (clear errors for anything else)."""
    ck = read_head_checkpoint(path)
    missing = [k for k in ("preset", "head", "trainable", "frozen", "features") if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: head checkpoint lacks {missing}")
    try:
        return ck, HeadConfig.model_validate(ck["head"])
    except ValidationError as e:
        raise CheckpointError(f"{path}: invalid head config: {e}") from e


def _train_cfg(cfg: EvalConfig, ck: dict[str, Any]) -> TrainConfig:
    """The settings load_frozen reads, with the checkpoint's preset."""
    return TrainConfig(
        store=cfg.store or "",
        subset=cfg.subset,
        preset=ck["preset"],
        weights_dir=cfg.weights_dir,
        device=cfg.device,
        progress=False,
    )


def check_store_features(cfg: EvalConfig, ck: dict[str, Any]) -> None:
    """The store's split must hold exactly the features the head was trained on (named both ways if not)."""
    group = FeatureStore(cfg.store, mode="r").split(cfg.subset, cfg.split)
    held: dict[str, list[str]] = {}
    for e in group.encoders():
        held.setdefault(e.name, []).append(e.fingerprint)
    bad = [
        f"{name}: checkpoint {want}, store {', '.join(held.get(name, [])) or 'none'}"
        for name, want in ck["features"].items()
        if want not in held.get(name, [])
    ]
    if bad:
        raise FingerprintMismatch(
            f"{cfg.checkpoint} was trained on other features than {cfg.store} holds for "
            f"{cfg.subset}/{cfg.split} ({'; '.join(bad)}); evaluate with a store extracted by the same "
            "encoders, or end to end"
        )


def check_encoder_features(path: Path, ck: dict[str, Any], have: dict[str, str]) -> None:
    """Encoders built here must give the features the head was trained on (named both ways if not)."""
    bad = [
        f"{name}: checkpoint {ck['features'][name]}, encoder {fp}"
        for name, fp in have.items()
        if name in ck["features"] and ck["features"][name] != fp
    ]
    if bad:
        raise CheckpointError(
            f"{path}: was trained on features of other encoders than preset {ck['preset']!r} builds here "
            f"({'; '.join(bad)}); use the same preset, weights and preprocessing"
        )


def _finish(model: AV2TSAM, path: Path, device: torch.device) -> AV2TSAM:
    """Load the head's weights (frozen fingerprints checked) and switch to inference."""
    model = model.to(device)
    load_head(path, model)
    return model.eval()


@dataclass(frozen=True)
class _Widths:
    """Stands in for a store group where build_model reads an embedding width (end to end has no store)."""

    specs: dict[str, ArraySpec]


# ---------------------------------------------------------------- model outputs per video


@dataclass
class VideoOutput:
    """A video's scored frames: 1-based numbers, GT (N, H, W) and logits per audio variant (N, H, W)."""

    video: str
    category: str | None
    frames: list[int]
    gt: torch.Tensor
    logits: dict[str, torch.Tensor]


@dataclass
class EvalSource:
    """Where the outputs come from: the model, the video ids in split order, and a video iterator."""

    model: AV2TSAM
    videos: list[str]
    outputs: Iterator[VideoOutput]


def _prefetch(ds: FeatureBatches) -> Iterator[dict[str, torch.Tensor]]:
    """The dataset's batches in order, the next one read in a thread while this one runs."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(ds.__getitem__, 0) if len(ds) else None
        for i in range(len(ds)):
            batch = nxt.result()
            nxt = pool.submit(ds.__getitem__, i + 1) if i + 1 < len(ds) else None
            yield batch


def _silence(clap, dtype: str | None, device: torch.device) -> torch.Tensor:
    """CLAP's embedding of one all-zero segment (1, d), rounded through the store's dtype when given."""
    x = clap.preprocess(np.zeros((1, clap.sample_rate), np.float32)).to(clap.device)
    with torch.inference_mode():
        emb = clap.encode(x)["clap"].float().cpu()
    if dtype is not None:  # what extraction into the store would have kept
        emb = torch.from_numpy(emb.numpy().astype(dtype).astype(np.float32))
    return emb.to(device)


def swap_order(n: int) -> np.ndarray:
    """The fixed derangement: video i hears video i + 1 (the last one the first); n = 1 keeps its own."""
    return (np.arange(n) + 1) % max(n, 1)


def _cached_claps(
    cfg: EvalConfig, ck: dict[str, Any], groups, index, rows: np.ndarray, device: torch.device
) -> dict[str, Any]:
    """Per store row, the CLAP feature each vision-bias variant feeds (swapped: by row; silence: one)."""
    clap_group = groups["clap"]
    spec = clap_group.specs["clap"]
    feats = clap_group.read("clap", slice(None))
    videos = index.videos()
    nxt = dict(zip(videos, (videos[i] for i in swap_order(len(videos))), strict=True))
    where = {(v, int(f)): r for r, (v, f) in enumerate(zip(index.video, index.frame, strict=True))}
    swapped = np.empty(index.video.shape[0], np.int64)
    for r in rows:
        v, k = index.video[r], int(index.frame[r])
        # Same frame of the next video; a store without that frame (S4 train) takes its first row.
        other = where.get((nxt[v], k))
        swapped[r] = other if other is not None else index.rows_of(nxt[v])[0]
    clap = get_encoder("clap", ck["preset"], cfg.weights_dir, str(device))
    check_encoder_features(cfg.checkpoint, ck, {"clap": fingerprint(clap.provenance())})
    return {"swapped": (feats, swapped), "silence": _silence(clap, spec.dtype, device)}


def cached_source(
    cfg: EvalConfig, ck: dict[str, Any], head: HeadConfig, device: torch.device, variants: tuple[str, ...]
) -> EvalSource:
    """Outputs from the feature store: the split's annotated rows in index order, GT from the store."""
    check_store_features(cfg, ck)
    frozen = load_frozen(_train_cfg(cfg, ck), head, [cfg.split])
    model = _finish(build_model(head, frozen, cfg.split), cfg.checkpoint, device)
    groups = frozen.groups[cfg.split]
    index = groups["gt"].split.index
    rows = np.flatnonzero(index.has_mask)
    if not len(rows):
        raise StoreError(f"{cfg.store}: {cfg.subset}/{cfg.split} has no rows with a GT mask to score")
    ds = FeatureBatches(
        cfg.store, cfg.subset, cfg.split, sources([model], groups), rows=rows, batch_size=cfg.batch_size
    )
    claps = _cached_claps(cfg, ck, groups, index, rows, device) if len(variants) > 1 else {}

    def clap_of(variant: str, r: np.ndarray, n: int) -> torch.Tensor:
        if variant == "silence":
            return claps["silence"].expand(n, -1)
        feats, swapped = claps["swapped"]
        return torch.from_numpy(feats[swapped[r]]).to(device)

    def outputs() -> Iterator[VideoOutput]:
        expected = Counter(index.video[rows].tolist())
        pending: dict[str, list] = {}
        for raw in _prefetch(ds):
            batch = to_device(raw, device)
            r = raw["row"].numpy()
            logits = {}
            with torch.inference_mode():
                for v in variants:
                    b = batch if v == "real" else {**batch, "clap": clap_of(v, r, len(r)).float()}
                    logits[v] = model.forward_cached(b)["logits"].float().cpu()
            mask = raw["mask"]
            for j, row in enumerate(r):
                video = str(index.video[row])
                item = (int(index.frame[row]), mask[j], {v: x[j] for v, x in logits.items()})
                pending.setdefault(video, []).append(item)
                if len(pending[video]) == expected[video]:
                    yield _video(video, str(index.category[row]) or None, pending.pop(video))

    return EvalSource(model, index.videos(), outputs())


def _video(video: str, category: str | None, items: list) -> VideoOutput:
    """Gather (frame, gt, logits per variant) items into one VideoOutput in frame order."""
    items.sort(key=lambda t: t[0])
    variants = items[0][2].keys()
    return VideoOutput(
        video,
        category,
        [t[0] for t in items],
        torch.stack([t[1] for t in items]),
        {v: torch.stack([t[2][v] for t in items]) for v in variants},
    )


def end_to_end_source(
    cfg: EvalConfig,
    ck: dict[str, Any],
    head: HeadConfig,
    device: torch.device,
    variants: tuple[str, ...],
    clips: list[Clip],
) -> EvalSource:
    """Outputs from the raw files: frames and audio decoded per video, CLIP and CLAP run, then forward_raw."""
    preset, wd, dev = ck["preset"], cfg.weights_dir, str(device)
    encs = {
        n: get_encoder(n, preset, wd, dev, sam2_overrides(head) if n == "sam2" else None)
        for n in FEATURE_ENCODERS
    }
    check_encoder_features(cfg.checkpoint, ck, {n: fingerprint(e.provenance()) for n, e in encs.items()})
    gt_enc = get_encoder("gt", preset, wd, "cpu")
    widths = {n: _Widths({n: ArraySpec(tuple(encs[n].output_shapes()[n]))}) for n in ("clip", "clap")}
    frozen = Frozen(encs["sam2"], encs["beit3"], wd, {cfg.split: widths})
    model = _finish(build_model(head, frozen, cfg.split), cfg.checkpoint, device)
    clip_enc, clap_enc = encs["clip"], encs["clap"]
    silence = _silence(clap_enc, None, device) if "silence" in variants else None
    swap = swap_order(len(clips))
    audio: dict[int, torch.Tensor] = {}  # clip position -> (5, d) CLAP embeddings (small; kept for the swap)

    def clap_of(i: int) -> torch.Tensor:
        if i not in audio:
            seg = load_segments(clips[i].audio_path, **clap_enc.audio_loading())
            with torch.inference_mode():
                audio[i] = clap_enc.encode(clap_enc.preprocess(seg).to(clap_enc.device))["clap"]
        return audio[i]

    def outputs() -> Iterator[VideoOutput]:
        for i, clip in enumerate(clips):
            ks = list(clip.annotated)
            idx = torch.tensor([k - 1 for k in ks])
            frames = np.stack([load_frame(clip.frame_paths[k - 1]) for k in ks])
            gt = gt_enc.preprocess(np.stack([load_mask(clip.mask_paths[k - 1]) for k in ks]))
            with torch.inference_mode():
                emb = clip_enc.encode(clip_enc.preprocess(frames).to(clip_enc.device))["clip"]
                claps = {"real": clap_of(i)[idx]}
                if "swapped" in variants:
                    claps["swapped"] = clap_of(int(swap[i]))[idx]
                if silence is not None:
                    claps["silence"] = silence.expand(len(ks), -1)
                logits = {
                    v: model.forward_raw(frames, emb, claps[v])["logits"].float().cpu() for v in variants
                }
            yield VideoOutput(clip.id, clip.category, ks, gt, logits)

    return EvalSource(model, [c.id for c in clips], outputs())


# ---------------------------------------------------------------- scoring


@dataclass
class Kept:
    """A video kept for an overlay: its M_J, split position, frames, GT and predicted probability (uint8)."""

    mj: float
    order: int
    video: str
    frames: list[int]
    gt: np.ndarray
    prob: np.ndarray


@dataclass
class Scorer:
    """Accumulates every score of the evaluation, the masks to save and the overlay candidates."""

    variants: tuple[str, ...]
    keep: int = 3
    masks_dir: Path | None = None
    acc: MetricAccumulator = field(default_factory=lambda: MetricAccumulator(batching="video"))
    acc_all: MetricAccumulator = field(default_factory=lambda: MetricAccumulator(batching="all"))
    raw_f: list[float] = field(default_factory=list)
    bias: dict[str, MetricAccumulator] = field(default_factory=dict)
    best: list[Kept] = field(default_factory=list)
    worst: list[Kept] = field(default_factory=list)

    def __post_init__(self) -> None:
        """One accumulator per replaced-audio variant."""
        self.bias = {v: MetricAccumulator(batching="video") for v in self.variants if v != "real"}

    def add(self, out: VideoOutput) -> None:
        """Score one video under every variant; save its masks; keep it if it is among the best / worst."""
        logits, gt = out.logits["real"], out.gt
        self.acc.add(out.video, logits, gt, frames=out.frames, category=out.category)
        self.acc_all.add(out.video, logits, gt, frames=out.frames, category=out.category)
        self.raw_f.append(m_f_raw_logits(logits, gt))
        for v, acc in self.bias.items():
            acc.add(out.video, out.logits[v], gt, frames=out.frames, category=out.category)
        prob = torch.sigmoid(logits)
        if self.masks_dir is not None:
            for k, p in zip(out.frames, prob, strict=True):
                write_probability(prediction_path(self.masks_dir, out.video, k), p)
        self._keep(m_j(logits, gt), out, prob)

    def _keep(self, mj: float, out: VideoOutput, prob: torch.Tensor) -> None:
        """Update the best and worst lists (ties: the earlier video first); arrays only for kept videos."""
        if not self.keep:
            return
        order = len(self.raw_f) - 1
        cand = None
        for lst, sign in ((self.best, -1.0), (self.worst, 1.0)):
            if len(lst) < self.keep or (sign * mj, order) < (sign * lst[-1].mj, lst[-1].order):
                if cand is None:  # copy the arrays once, and only for a video that is kept
                    gt = out.gt.cpu().numpy() != 0
                    cand = Kept(mj, order, out.video, list(out.frames), gt, probability_png(prob))
                lst.append(cand)
                lst.sort(key=lambda k, s=sign: (s * k.mj, k.order))
                del lst[self.keep :]

    def scores(self) -> dict[str, Any]:
        """The dataset scores."""
        s, free = self.acc.summary(), self.acc_all.summary()
        return {
            "M_J": s["M_J"],
            "M_F": s["M_F"],
            "M_F_batching": M_F_BATCHING,
            "M_F_batch_free": free["M_F"],
            "M_F_raw_logits_av2t": float(np.mean(self.raw_f)) if self.raw_f else float("nan"),
            "frames": s["frames"],
            "videos": s["videos"],
            "gt_empty_frames": s["gt_empty_frames"],
        }

    def vision_bias(self) -> dict[str, float]:
        """M_J with the real, the swapped and the silent audio, and the drops."""
        real = self.acc.summary()["M_J"]
        swapped, silence = (self.bias[v].summary()["M_J"] for v in ("swapped", "silence"))
        return {
            "M_J_real": real,
            "M_J_swapped": swapped,
            "M_J_silence": silence,
            "drop_swapped": real - swapped,
            "drop_silence": real - silence,
            "swapped": "each clip hears the next clip's audio in split order (the last one the first's)",
            "silence": "every frame gets CLAP's embedding of an all-zero one-second segment",
        }


# ---------------------------------------------------------------- report files


def clips_digest(videos: list[str]) -> str:
    """sha256 of the clip ids in split order, one per line."""
    return hashlib.sha256("\n".join(videos).encode()).hexdigest()


def overlay(kept: Kept, clip: Clip, title: str) -> Any:
    """One PIL image: a row per scored frame, columns frame | GT | prediction, a title above.

    The prediction column is the probability in grey, tinted red where it is above 0.5 (the scored mask).
    """
    from PIL import Image, ImageDraw

    h, w = kept.gt.shape[1:]
    rows = []
    for j, k in enumerate(kept.frames):
        frame = Image.fromarray(load_frame(clip.frame_paths[k - 1]))
        if frame.size != (w, h):
            frame = frame.resize((w, h), Image.BILINEAR)
        gt = np.repeat((kept.gt[j].astype(np.uint8) * 255)[..., None], 3, axis=2)
        pred = np.repeat(kept.prob[j][..., None], 3, axis=2).astype(np.float32)
        fg = kept.prob[j] > 127  # sigmoid > 0.5: the mask M_J scores, tinted red over the probability
        pred[fg] = 0.5 * pred[fg] + 0.5 * np.array([255, 0, 0], np.float32)
        pred = pred.round().astype(np.uint8)
        rows.append(np.concatenate([np.asarray(frame), gt, pred], axis=1))
    bar = 18
    img = Image.new("RGB", (3 * w, bar + h * len(rows)), "white")
    img.paste(Image.fromarray(np.concatenate(rows, axis=0)), (0, bar))
    ImageDraw.Draw(img).text((4, 3), f"{title}   (frame | GT | prediction)", fill="black")
    return img


def write_overlays(scorer: Scorer, clips: dict[str, Clip], out: Path) -> list[str]:
    """overlays/best_<k>_<video>.png and worst_<k>_<video>.png; returns their paths relative to out."""
    paths = []
    for tag, kept in (("best", scorer.best), ("worst", scorer.worst)):
        for rank, k in enumerate(kept, start=1):
            rel = f"overlays/{tag}_{rank}_{k.video}.png"
            (out / "overlays").mkdir(parents=True, exist_ok=True)
            overlay(k, clips[k.video], f"{tag} {rank}: {k.video}  M_J {k.mj:.4f}").save(out / rel)
            paths.append(rel)
    return paths


def _fmt(x: Any) -> str:
    """A score for the markdown report."""
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def report_markdown(report: dict[str, Any], categories: pd.DataFrame) -> str:
    """The short human report: scores, the M_F batching note, vision bias, categories, overlays."""
    lines = [
        f"# Evaluation: {report['subset']} {report['split']} ({report['mode']})",
        "",
        f"Checkpoint `{report['checkpoint']}` (preset {report['model']['preset']}), "
        f"{report['videos']} videos, {report['frames']} annotated frames, {report['seconds']:.1f} s.",
        "",
        "| score | value |",
        "|---|---|",
        f"| M_J | {_fmt(report['M_J'])} |",
        f"| M_F | {_fmt(report['M_F'])} |",
        f"| M_F, batch-free | {_fmt(report['M_F_batch_free'])} |",
        f"| M_F on raw logits (AV2T's code) | {_fmt(report['M_F_raw_logits_av2t'])} |",
        "",
        f"M_F batching: {report['M_F_batching']}. M_F depends on the batch: AVSBench's test uses 4 videos per "
        "batch; the batch-free M_F averages the F curve over every frame before taking the max. AV2T's code "
        "thresholds raw logits instead of probabilities (reported for comparison only).",
    ]
    if "vision_bias" in report:
        vb = report["vision_bias"]
        lines += [
            "",
            "## Vision bias",
            "",
            "| audio | M_J | drop |",
            "|---|---|---|",
            f"| real | {_fmt(vb['M_J_real'])} | |",
            f"| swapped (next clip's) | {_fmt(vb['M_J_swapped'])} | {_fmt(vb['drop_swapped'])} |",
            f"| silence | {_fmt(vb['M_J_silence'])} | {_fmt(vb['drop_silence'])} |",
        ]
    named = categories.assign(category=categories["category"].fillna("(none: MS3)"))
    lines += ["", "## Per category", "", named.to_markdown(index=False, floatfmt=".4f")]
    if report["overlays"]:
        lines += ["", "## Overlays", ""]
        lines += [f"- [{Path(p).stem}]({p})" for p in report["overlays"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], scorer: Scorer, out: Path) -> None:
    """report.json, report.md and the frame / video / category tables."""
    scorer.acc.frame_table().to_csv(out / "frames.csv", index=False)
    scorer.acc.video_table().to_csv(out / "videos.csv", index=False)
    categories = scorer.acc.category_table()
    categories.to_csv(out / "categories.csv", index=False)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report, categories))


# ---------------------------------------------------------------- the stage


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Score the checkpoint's head on the split; write the report files under cfg.out; return the report."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ck, head = read_checkpoint(cfg.checkpoint)
    device = resolve_device(cfg.device)
    variants = VARIANTS if cfg.vision_bias else ("real",)
    clips = read_clips(cfg.root, cfg.subset, cfg.split)
    if not clips:
        raise DataError(f"{cfg.root}: no {cfg.subset} clips in split {cfg.split!r}")
    if cfg.mode == "cached":
        src = cached_source(cfg, ck, head, device, variants)
        if src.videos != [c.id for c in clips]:
            raise StoreError(
                f"{cfg.store}: {cfg.subset}/{cfg.split} holds {len(src.videos)} videos that are not the "
                f"{len(clips)} clips of {cfg.root} (another data tree or clip list)"
            )
    else:
        src = end_to_end_source(cfg, ck, head, device, variants, clips)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    scorer = Scorer(variants, cfg.overlays, out / "masks" if cfg.save_masks else None)
    for video in tqdm(
        src.outputs, total=len(src.videos), desc="evaluate", unit="video", disable=not cfg.progress
    ):
        scorer.add(video)
    report: dict[str, Any] = {
        **scorer.scores(),
        "mode": cfg.mode,
        "subset": cfg.subset,
        "split": cfg.split,
        "checkpoint": str(cfg.checkpoint),
        "model": {
            "preset": ck["preset"],
            "trained_subset": ck.get("subset"),
            "epoch": ck.get("epoch"),
            "head": ck["head"],
            "frozen": ck["frozen"],
            "features": ck["features"],
        },
        "data": {"root": str(cfg.root), "clips_digest": clips_digest(src.videos)},
        "store": cfg.store if cfg.mode == "cached" else None,
        "device": str(device),
    }
    if cfg.vision_bias:
        report["vision_bias"] = scorer.vision_bias()
    report["masks"] = "masks" if cfg.save_masks else None
    report["overlays"] = write_overlays(scorer, {c.id: c for c in clips}, out)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_report(report, scorer, out)
    return report
