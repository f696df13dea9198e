"""The evaluate stage: score a trained head on a split, from cached features or end to end from the raw files.

A thin stage over library parts: where the predictions come from (the feature store, or
`pipeline.evaluation.end_to_end`), the evaluators (`pipeline.evaluation.evaluators`, one class per score)
and the report writer (`pipeline.evaluation.report`). Both modes build the head with the one builder and
load it with the head-checkpoint module, which checks the frozen weights; only annotated frames are scored.
The features the head was trained on (the checkpoint's `features` fingerprints) must be the ones used here.

Outputs under `out`: report.json, report.md, the evaluators' CSV tables (frames.csv, videos.csv,
categories.csv; with robustness robustness_categories.csv and the plot robustness.png), overlays/ (frame | GT | prediction for the best and worst videos by M_J) and, with
save_masks, masks/<name>/<name>_<k>.png holding the predicted probability as the 8-bit level that keeps
every official threshold decision (pipeline.scoring.probability_png; within one level of round(p * 255)), so
`av2t score` on them gives the report's M_J and M_F exactly (a hard 0/255 mask would lose the soft scores
M_F needs).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache import FeatureStore, FingerprintMismatch, StoreError
from cache.batches import FeatureBatches, sources, video_outputs
from cache.negatives import read_negative_clap
from pipeline.checkpoints import CheckpointError
from pipeline.data.clips import DataError, read_clips
from pipeline.data.layout import data_layout, mask_kind
from pipeline.data.releases import release_of
from pipeline.devices import resolve_device, torch_threads
from pipeline.encoders.gt_mask import ground_truth_group
from pipeline.encoders.registry import get_encoder
from pipeline.evaluation import VideoOutput, build_evaluators, summarize, variants_of
from pipeline.evaluation.compare import compare_with_reports
from pipeline.evaluation.end_to_end import (
    FEATURE_ENCODERS,
    end_to_end_model,
    end_to_end_outputs,
    silence_embedding,
    swap_order,
)
from pipeline.evaluation.evaluators import REAL, SILENCE, SWAPPED
from pipeline.evaluation.report import MaskWriter, Overlays, clips_digest, write_report
from pipeline.evaluation.robustness import NOISE, OFFSCREEN, Robustness
from pipeline.files import write_text
from pipeline.model.build import build_model, frozen_encoders
from pipeline.model.head_checkpoint import HeadCheckpoint, check_features, load_head, read_head
from pipeline.model.precision import autocast, resolve_precision
from pipeline.negatives import offscreen_partners
from pipeline.settings import EvalConfig

__all__ = ["EvalConfig", "evaluate", "swap_order"]
log = logging.getLogger("av2t.evaluate")


def check_store_features(cfg: EvalConfig, ck: HeadCheckpoint) -> None:
    """The store's split must hold exactly the features the head was trained on (named both ways if not)."""
    group = FeatureStore(cfg.store, mode="r").split(cfg.subset, cfg.split)
    held: dict[str, list[str]] = {}
    for e in group.encoders():
        held.setdefault(e.name, []).append(e.fingerprint)
    bad = [
        f"{name}: checkpoint {want}, store {', '.join(held.get(name, [])) or 'none'}"
        for name, want in ck.features.items()
        if want not in held.get(name, [])
    ]
    if bad:
        raise FingerprintMismatch(
            f"{cfg.checkpoint} was trained on other features than {cfg.store} holds for "
            f"{cfg.subset}/{cfg.split} ({'; '.join(bad)}); evaluate with a store extracted by the same "
            "encoders, or end to end"
        )


def cached_outputs(
    cfg: EvalConfig,
    ck: HeadCheckpoint,
    device: torch.device,
    variants: tuple[str, ...],
    partners: dict[str, str] | None = None,
) -> tuple[list[str], Iterator[VideoOutput], dict[str, str]]:
    """The split's videos, their outputs from the store (annotated rows, GT from it), the features' fingerprints."""
    check_store_features(cfg, ck)
    frozen = frozen_encoders(ck.head, ck.preset, cfg.weights_dir, device)
    group = FeatureStore(cfg.store, mode="r").split(cfg.subset, cfg.split)
    gt = ground_truth_group(group.encoders(), mask_kind(cfg.subset), cfg.store, cfg.subset)
    groups = {
        n: group.encoder_for(n, frozen[n].provenance())
        if n in frozen
        else (gt if n == "gt" and gt is not None else group.encoder(n, ck.features.get(n)))
        for n in (*FEATURE_ENCODERS, "gt")
    }
    widths = {f"d_{n}": int(groups[n].specs[n].shape[0]) for n in ("clip", "clap")}
    model = build_model(
        ck.head, ck.preset, **widths, weights_dir=cfg.weights_dir, device=device, encoders=frozen
    )
    load_head(ck, model)
    model.eval()
    index = group.index
    rows = np.flatnonzero(index.has_mask)
    if not len(rows):
        raise StoreError(f"{cfg.store}: {cfg.subset}/{cfg.split} has no rows with a GT mask to score")
    ds = FeatureBatches(
        cfg.store, cfg.subset, cfg.split, sources([model], groups), rows=rows, batch_size=cfg.batch_size
    )
    claps = replaced_audio(cfg, ck, groups, index, rows, device, variants, partners or {})

    def forward(batch: dict[str, torch.Tensor], r: np.ndarray) -> dict[str, Any]:
        logits = {}
        with torch.inference_mode():
            for v in variants:
                b = batch if v == REAL else {**batch, "clap": claps[v](r).float()}
                with autocast(cfg.precision, device):
                    out = model.forward_cached(b)
                logits[v] = out["logits"].float().cpu()
        return {"logits": logits}

    def outputs() -> Iterator[VideoOutput]:
        for v in video_outputs(ds, index, forward, device):
            yield VideoOutput(v.video, v.category, v.frames, v.fields["mask"], v.fields["logits"])

    return index.videos(), outputs(), {n: g.fingerprint for n, g in groups.items() if n != "gt"}


def partner_rows(index, rows: np.ndarray, partner: dict[str, str]) -> np.ndarray:
    """Per store row (filled at `rows`), the row of the same frame of the partner video; a store without that
    frame (S4 train) gives the partner's first row."""
    where = {(v, int(f)): r for r, (v, f) in enumerate(zip(index.video, index.frame, strict=True))}
    out = np.empty(index.video.shape[0], np.int64)
    for r in rows:
        v, k = index.video[r], int(index.frame[r])
        other = where.get((partner[v], k))
        out[r] = other if other is not None else index.rows_of(partner[v])[0]
    return out


def replaced_audio(
    cfg: EvalConfig,
    ck: HeadCheckpoint,
    groups,
    index,
    rows: np.ndarray,
    device: torch.device,
    variants: tuple[str, ...],
    partners: dict[str, str],
):
    """Per audio variant other than the real one, rows -> the CLAP features fed instead: by row (swapped,
    off-screen: other videos' cached rows; noise: the rows `av2t extract --negatives` stored) or one (silence)."""
    clap_group = groups["clap"]
    by_row = {SWAPPED, OFFSCREEN} & set(variants)  # these read other videos' cached CLAP rows
    feats = clap_group.read("clap", slice(None)) if by_row else None
    videos = index.videos()
    out = {}
    if SWAPPED in variants:
        nxt = dict(zip(videos, (videos[i] for i in swap_order(len(videos))), strict=True))
        swapped = partner_rows(index, rows, nxt)
        out[SWAPPED] = lambda r: torch.from_numpy(feats[swapped[r]]).to(device)
    if OFFSCREEN in variants:
        offscreen = partner_rows(index, rows, partners)
        out[OFFSCREEN] = lambda r: torch.from_numpy(feats[offscreen[r]]).to(device)
    if NOISE in variants:  # the stored negative rows: no CLAP forward here
        neg = read_negative_clap(
            cfg.store, cfg.subset, cfg.split, clap_group.fingerprint, cfg.robustness_seed
        )
        noise, silence = neg["noise"], torch.from_numpy(neg["silence"]).to(device)
        out[NOISE] = lambda r: torch.from_numpy(noise[r]).to(device)
    elif SILENCE in variants:
        clap = get_encoder("clap", ck.preset, cfg.weights_dir, str(device))
        check_features(ck, {"clap": clap.provenance()}, f"preset {ck.preset!r} built here")
        silence = silence_embedding(clap, clap_group.specs["clap"].dtype, device)
    if SILENCE in variants:
        out[SILENCE] = lambda r: silence.expand(len(r), -1)
    return out


def check_subset(cfg: EvalConfig, ck: HeadCheckpoint) -> list[str]:
    """A head trained on another subset is refused, or (allow_other_subset) scored with a warning."""
    if ck.subset is None or ck.subset == cfg.subset:
        return []
    msg = f"{ck.path} was trained on {ck.subset}, and is scored here on {cfg.subset}"
    if not cfg.allow_other_subset:
        raise CheckpointError(f"{msg}: refused; pass --allow-other-subset to score it anyway")
    log.warning(msg)
    return [msg]


def robustness_partners(cfg: EvalConfig, clips, evaluators) -> dict[str, str]:
    """With the robustness suite: the off-screen partner of every clip for cfg's seed, handed to its evaluator
    (which records them); else none."""
    suites = [e for e in evaluators if isinstance(e, Robustness)]
    if not suites:
        return {}
    if len(clips) < 2:
        raise DataError(
            f"{cfg.root}: {cfg.subset}/{cfg.split} has one clip: off-screen audio needs two or more"
        )
    partners = offscreen_partners([(c.id, c.category) for c in clips], cfg.robustness_seed)
    for e in suites:
        e.seed, e.partners = cfg.robustness_seed, partners
    return partners


def trained_epoch(data: dict[str, Any]) -> int | None:
    """The head's epoch numbered as training logged and tabled it (from 1); the checkpoint's own `epoch`
    counts from 0 (the resume point), so it is shifted when the saved metrics do not say."""
    logged = (data.get("metrics") or {}).get("epoch")
    if logged is not None:
        return int(logged)
    return None if data.get("epoch") is None else int(data["epoch"]) + 1


def evaluate(cfg: EvalConfig, on_video: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score the checkpoint's head on the split; write the report files under cfg.out; return the report.

    on_video(done, total), if given, is called once the model is built (done 0) and after each video scored.
    """
    with torch_threads(cfg.threads):  # the caller's thread count given back after
        if release_of(cfg.subset).expressions is not None:  # Ref-AVS: per expression, its own metrics
            return evaluate_ref_avs(cfg, on_video)
        return _evaluate(cfg, on_video)


def _evaluate(cfg: EvalConfig, on_video: Callable[[int, int], None] | None) -> dict[str, Any]:
    from tqdm import tqdm

    t0 = time.perf_counter()
    ck = read_head(cfg.checkpoint)
    warnings = check_subset(cfg, ck)
    device = resolve_device(cfg.device)
    extra = ("vision_bias",) * cfg.vision_bias + ("robustness",) * cfg.robustness
    evaluators = build_evaluators(extra=extra)
    variants = variants_of(evaluators)
    clips = read_clips(cfg.root, cfg.subset, cfg.split)
    if not clips:
        raise DataError(f"{cfg.root}: no {cfg.subset} clips in split {cfg.split!r}")
    partners = robustness_partners(cfg, clips, evaluators)
    store_features = None
    if cfg.mode == "cached":
        videos, outputs, store_features = cached_outputs(cfg, ck, device, variants, partners)
        if videos != [c.id for c in clips]:
            raise StoreError(
                f"{cfg.store}: {cfg.subset}/{cfg.split} holds {len(videos)} videos that are not the "
                f"{len(clips)} clips of {cfg.root} (another data tree or clip list)"
            )
    else:
        model, encs = end_to_end_model(ck, cfg.weights_dir, device, cfg.precision)
        videos = [c.id for c in clips]
        outputs = end_to_end_outputs(model, encs, clips, variants, device, partners, cfg.robustness_seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    overlays = Overlays(cfg.overlays)
    sinks = [*evaluators, overlays] + ([MaskWriter(out / "masks")] if cfg.save_masks else [])
    if on_video is not None:
        on_video(0, len(videos))
    bar = tqdm(outputs, total=len(videos), desc="evaluate", unit="video", disable=not cfg.progress)
    for done, video in enumerate(bar, start=1):
        for sink in sinks:
            sink.process(video)
        if on_video is not None:
            on_video(done, len(videos))
    evaluation = summarize(evaluators)
    report: dict[str, Any] = {
        **evaluation.fields,
        "mode": cfg.mode,
        "subset": cfg.subset,
        "split": cfg.split,
        "checkpoint": str(cfg.checkpoint),
        "model": {
            "preset": ck.preset,
            "backbone": ck.data.get("backbone", "sam2"),  # heads saved before SAM 1 are all on SAM 2
            "head_digest": ck.digest(),
            "trained_subset": ck.subset,
            "epoch": trained_epoch(ck.data),
            "head": ck.data["head"],
            "frozen": ck.data["frozen"],
            "features": ck.features,
        },
        "data": {
            "root": str(cfg.root),
            # avsbench-object (s4, ms3) or avsbench-semantic (v1s, v1m, v2)
            "layout": data_layout(cfg.subset),
            "subset": cfg.subset,
            "clips_digest": clips_digest(videos),
        },
        "store_features": store_features,
        "warnings": warnings,
        "store": cfg.store if cfg.mode == "cached" else None,
        "device": str(device),
        "precision": resolve_precision(cfg.precision, device),
        "evaluators": [e.name for e in evaluators],
        "score_rows": [row.to_json() for row in evaluation.rows],
    }
    report["masks"] = "masks" if cfg.save_masks else None
    report["overlays"] = overlays.write({c.id: c for c in clips}, out)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_report(report, evaluation, out)
    if cfg.compare_with is not None:  # comparison.json beside the report; the report itself stays as written
        header, rows, _ = compare_with_reports(report, out, cfg.compare_with, cfg.tolerance)
        return {**report, "comparison": {**header, "rows": rows}}
    return report


def evaluate_ref_avs(cfg: EvalConfig, on_video: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """A head on a Ref-AVS split from the store (cached mode): every expression's frames scored with the Ref-AVS
    metrics; report.json under cfg.out with J and F (and S on test_n) at the official batching, the batch-free
    variants beside them, and the conventions stated."""
    from cache.expression_rows import read_expression_split
    from cache.expressions import feature_key
    from pipeline.encoders.text_tokens import load_tokenizer
    from pipeline.presets import weights_dir
    from pipeline.ref_avs_rows import METRIC_NOTE, score

    t0 = time.perf_counter()
    if cfg.mode != "cached":
        raise ValueError("Ref-AVS evaluation runs in cached mode (end to end with text is not built yet)")
    ck = read_head(cfg.checkpoint)
    warnings = check_subset(cfg, ck)
    check_store_features(cfg, ck)
    device = resolve_device(cfg.device)
    frozen = frozen_encoders(ck.head, ck.preset, cfg.weights_dir, device)
    group = FeatureStore(cfg.store, mode="r").split(cfg.subset, cfg.split)
    groups = {
        n: group.encoder_for(n, frozen[n].provenance())
        if n in frozen
        else group.encoder(n, ck.features.get(n))
        for n in FEATURE_ENCODERS
    }
    widths = {f"d_{n}": int(groups[n].specs[n].shape[0]) for n in ("clip", "clap")}
    model = build_model(
        ck.head, ck.preset, **widths, weights_dir=cfg.weights_dir, device=device, encoders=frozen
    )
    load_head(ck, model)
    srcs = sources([model], {**groups, "gt": groups["clip"]})
    srcs.pop("mask")  # Ref-AVS masks are per expression
    text_key = feature_key("text", load_tokenizer(ck.preset, weights_dir(cfg.weights_dir)).provenance())
    data = read_expression_split(cfg.store, cfg.subset, cfg.split, srcs, text_key)
    if on_video is not None:
        on_video(0, len(data.uid))
    precision = resolve_precision(cfg.precision, device)
    summary = score(model, data, device, precision).summary()
    main = summary["official"]
    report: dict[str, Any] = {
        "subset": cfg.subset,
        "split": cfg.split,
        "mode": cfg.mode,
        "J": main["J"],
        "F": main["F"],
        **({"S": main["S"]} if cfg.split == "test_n" else {}),
        "scores": summary,
        "conventions": METRIC_NOTE,
        "checkpoint": str(cfg.checkpoint),
        "model": {
            "preset": ck.preset,
            "head_digest": ck.digest(),
            "trained_subset": ck.subset,
            "epoch": trained_epoch(ck.data),
            "head": ck.data["head"],
            "features": ck.features,
        },
        "store_features": {n: g.fingerprint for n, g in groups.items()},
        "warnings": warnings,
        "store": cfg.store,
        "device": str(device),
        "precision": precision,
        "seconds": round(time.perf_counter() - t0, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    if on_video is not None:
        on_video(len(data.uid), len(data.uid))
    return report
