"""Where predictions come from without a cache: raw frames and audio decoded per video, every encoder run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.audio import load_segments
from pipeline.data.clips import Clip
from pipeline.data.images import load_frame, protocol_mask
from pipeline.encoders.base import Encoder
from pipeline.encoders.registry import get_encoder
from pipeline.evaluation.evaluators import REAL, SILENCE, SWAPPED, VideoOutput
from pipeline.evaluation.negative_audio import noise_segments, segment_samples, silence_segments
from pipeline.evaluation.robustness import NOISE, OFFSCREEN
from pipeline.model.av2t_sam import AV2TSAM
from pipeline.model.build import build_model, encoder_widths, sam2_overrides
from pipeline.model.head_checkpoint import HeadCheckpoint, check_features, load_head
from pipeline.model.precision import as_fp32, autocast, resolve_precision

# The encoders a head reads features of (the end-to-end model runs them all on raw inputs).
FEATURE_ENCODERS = ("clip", "clap", "sam2", "beit3")


def swap_order(n: int) -> np.ndarray:
    """The fixed derangement: video i hears video i + 1 (the last one the first); n = 1 keeps its own."""
    return (np.arange(n) + 1) % max(n, 1)


def silence_embedding(clap: Encoder, dtype: str | None, device: torch.device) -> torch.Tensor:
    """CLAP's embedding of one all-zero segment (1, d), rounded through the store's dtype when given."""
    x = clap.preprocess(silence_segments(segment_samples(clap))).to(clap.device)
    with torch.inference_mode():
        emb = clap.encode(x)["clap"].float().cpu()
    if dtype is not None:  # what extraction into the store would have kept
        emb = torch.from_numpy(emb.numpy().astype(dtype).astype(np.float32))
    return emb.to(device)


def end_to_end_model(
    ck: HeadCheckpoint, weights_dir: str | Path | None, device: torch.device, precision: str = "auto"
) -> tuple[AV2TSAM, dict[str, Encoder]]:
    """The head on encoders built from its preset, every encoder checked against the features it was trained on.

    The one builder of raw-input predictions: `evaluate --mode end-to-end` and `segment` both take it, so the
    same frames and audio give the same masks. bf16 (precision auto on CUDA) wraps the head's forward only:
    CLIP and CLAP stay fp32, as extraction ran them.
    """
    preset = ck.preset
    encs = {
        n: get_encoder(n, preset, weights_dir, device, sam2_overrides(ck.head) if n == "sam2" else None)
        for n in FEATURE_ENCODERS
    }
    check_features(ck, {n: e.provenance() for n, e in encs.items()}, f"preset {preset!r} built here")
    encs["gt"] = get_encoder("gt", preset, weights_dir, "cpu")
    model = build_model(
        ck.head, preset, **encoder_widths(encs), weights_dir=weights_dir, device=device, encoders=encs
    )
    load_head(ck, model)
    model.eval()
    if resolve_precision(precision, device) == "bf16":
        forward_raw = model.forward_raw

        def bf16_forward_raw(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
            with autocast("bf16", device):
                return as_fp32(forward_raw(*args, **kwargs))

        model.forward_raw = bf16_forward_raw  # type: ignore[method-assign]
    return model, encs


def clip_embeddings(clip: Encoder, frames: np.ndarray) -> torch.Tensor:
    """CLIP embeddings (B, d) of uint8 RGB frames (B, H, W, 3)."""
    with torch.inference_mode():
        return clip.encode(clip.preprocess(frames).to(clip.device))["clip"]


def clap_embeddings(clap: Encoder, segments: np.ndarray) -> torch.Tensor:
    """CLAP embeddings (B, d) of one-second segments (B, samples) at the encoder's rate."""
    with torch.inference_mode():
        return clap.encode(clap.preprocess(segments).to(clap.device))["clap"]


def end_to_end_outputs(
    model: AV2TSAM,
    encoders: dict[str, Encoder],
    clips: list[Clip],
    variants: tuple[str, ...],
    device: torch.device,
    partners: dict[str, str] | None = None,
    seed: int = 0,
) -> Iterator[VideoOutput]:
    """Per clip: decode the annotated frames and the audio, run CLIP and CLAP, then `forward_raw`.

    Negative audio (robustness variants) is made here as extraction makes it for the store: CLAP on
    `noise_segment(seed, video, frame)`, and the same frames of the partner video's audio (`partners`).
    """
    clip_enc, clap_enc, gt_enc = encoders["clip"], encoders["clap"], encoders["gt"]
    silence = silence_embedding(clap_enc, None, device) if SILENCE in variants else None
    swap = swap_order(len(clips))
    position = {c.id: i for i, c in enumerate(clips)}
    # clip position -> (frames, d) CLAP embeddings (small; kept for the swap)
    audio: dict[int, torch.Tensor] = {}

    def clap_of(i: int) -> torch.Tensor:
        if i not in audio:
            seg = load_segments(clips[i].audio_path, n=len(clips[i].frames), **clap_enc.audio_loading())
            audio[i] = clap_embeddings(clap_enc, seg)
        return audio[i]

    for i, clip in enumerate(clips):
        ks = list(clip.annotated)
        idx = torch.tensor([k - 1 for k in ks])
        frames = np.stack([load_frame(clip.frame_paths[k - 1]) for k in ks])
        gt = gt_enc.preprocess(np.stack([protocol_mask(clip, k, gt_enc.cfg.size) for k in ks]))
        emb = clip_embeddings(clip_enc, frames)
        with torch.inference_mode():
            claps = {REAL: clap_of(i)[idx]}
            if SWAPPED in variants:
                claps[SWAPPED] = clap_of(int(swap[i]))[idx]
            if silence is not None:
                claps[SILENCE] = silence.expand(len(ks), -1)
            if NOISE in variants:
                noise = noise_segments(segment_samples(clap_enc), seed, [clip.id] * len(ks), ks)
                claps[NOISE] = clap_enc.encode(clap_enc.preprocess(noise).to(clap_enc.device))["clap"]
            if OFFSCREEN in variants:
                claps[OFFSCREEN] = clap_of(position[(partners or {})[clip.id]])[idx]
            logits = {v: model.forward_raw(frames, emb, claps[v])["logits"].float().cpu() for v in variants}
        yield VideoOutput(clip.id, clip.category, ks, gt, logits)
