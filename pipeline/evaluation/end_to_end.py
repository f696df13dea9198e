"""Where predictions come from without a cache: raw frames and audio decoded per video, every encoder run."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pipeline.data.audio import load_segments
from pipeline.data.clips import Clip
from pipeline.data.images import load_frame, protocol_mask
from pipeline.encoders.base import Encoder
from pipeline.evaluation.evaluators import REAL, SILENCE, SWAPPED, VideoOutput
from pipeline.evaluation.negative_audio import noise_segments, segment_samples, silence_segments
from pipeline.evaluation.robustness import NOISE, OFFSCREEN
from pipeline.model.av2t_sam import AV2TSAM


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
            with torch.inference_mode():
                audio[i] = clap_enc.encode(clap_enc.preprocess(seg).to(clap_enc.device))["clap"]
        return audio[i]

    for i, clip in enumerate(clips):
        ks = list(clip.annotated)
        idx = torch.tensor([k - 1 for k in ks])
        frames = np.stack([load_frame(clip.frame_paths[k - 1]) for k in ks])
        gt = gt_enc.preprocess(np.stack([protocol_mask(clip, k, gt_enc.cfg.size) for k in ks]))
        with torch.inference_mode():
            emb = clip_enc.encode(clip_enc.preprocess(frames).to(clip_enc.device))["clip"]
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
