"""Segment one video file: picked frames + paired audio -> the head's masks, overlay.mp4 and segments.json.

The predictions come from the end-to-end evaluation's own parts (pipeline.evaluation.end_to_end: the model
builder, CLIP and CLAP embeddings, `forward_raw`), so a frame and audio second that the evaluation also sees
give the same mask. Each picked frame is first resized to 224 x 224 (PIL bilinear, antialiased), the size of
AVSBench's frames (the toolkit squashes every frame to 224 x 224 with cv2.resize, aspect ratio not kept); from
there every encoder resizes exactly as in the evaluation (CLIP: shortest side + centre crop; SAM: plain square
resize; BEiT-3: bicubic 224). Masks are 224 x 224, the protocol's size; the overlay stretches them back to the
frame's own size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from pipeline.data.images import PROTOCOL_SIZE
from pipeline.encoders.base import Encoder
from pipeline.evaluation.end_to_end import clap_embeddings, clip_embeddings
from pipeline.files import write_text
from pipeline.model.av2t_sam import AV2TSAM
from pipeline.scoring import mark_folder, prediction_path, write_probability
from pipeline.video.decode import AudioWindows, Picked, VideoFrames, frame_rate, probe
from pipeline.video.errors import VideoError
from pipeline.video.overlay import OverlayWriter
from pipeline.video.pairing import Pairing

AudioMode = Literal["own", "own-or-silence", "silence"]
SOUNDING = 0.5  # a pixel sounds where p > 0.5, M_J's threshold


@dataclass(frozen=True)
class AudioPlan:
    """Where a video's audio comes from: a file's first audio stream, or silence (source None), and why."""

    source: Path | None
    note: str


def plan_audio(video: Path, mode: AudioMode, audio_from: Path | None = None) -> AudioPlan:
    """The audio a video is segmented with; a video without audio is refused unless silence is allowed."""
    if audio_from is not None:
        if probe(audio_from).audio is None:
            raise VideoError(f"{audio_from}: no audio stream to take (--audio-from)")
        return AudioPlan(Path(audio_from), f"swapped: the audio of {audio_from}")
    if mode == "silence":
        return AudioPlan(None, "silence (asked): every segment all zeros")
    info = probe(video)
    if info.video is None:
        raise VideoError(f"{video}: no video stream; give a video file")
    if info.audio is not None:
        return AudioPlan(Path(video), "the video's own audio")
    if mode == "own-or-silence":
        return AudioPlan(None, "silence: the file has no audio stream")
    raise VideoError(
        f"{video}: no audio stream; segment it on silence with --audio own-or-silence (recorded in "
        "segments.json), or give its sound with --audio-from FILE"
    )


def to_protocol(rgb: np.ndarray) -> np.ndarray:
    """A frame as AVSBench stores them: 224 x 224 uint8 RGB (bilinear, antialiased; as is at that size)."""
    if rgb.shape[:2] == (PROTOCOL_SIZE, PROTOCOL_SIZE):
        return rgb
    img = Image.fromarray(rgb).resize((PROTOCOL_SIZE, PROTOCOL_SIZE), Image.BILINEAR)
    return np.asarray(img)


@dataclass
class Segmenter:
    """A head on its encoders (pipeline.evaluation.end_to_end.end_to_end_model): frames + segments -> masks."""

    model: AV2TSAM
    encoders: dict[str, Encoder]
    batch_size: int = 8

    @property
    def audio(self) -> dict[str, Any]:
        """How the CLAP encoder wants its audio: rate, stereo rule, resampler."""
        return self.encoders["clap"].audio_loading()

    def probabilities(self, frames: np.ndarray, segments: np.ndarray) -> torch.Tensor:
        """(B, 224, 224) sounding probabilities of uint8 frames (B, 224, 224, 3) and their segments (B, n)."""
        emb = clip_embeddings(self.encoders["clip"], frames)
        clap = clap_embeddings(self.encoders["clap"], segments)
        with torch.inference_mode():
            logits = self.model.forward_raw(frames, emb, clap)["logits"].float().cpu()
        return torch.sigmoid(logits)


def segment_video(
    seg: Segmenter,
    video: str | Path,
    out: str | Path,
    name: str,
    pairing: Pairing,
    audio: AudioPlan,
    overlay: bool = True,
    meta: dict[str, Any] | None = None,
    on_frame: Callable[[int, int | None], None] | None = None,
) -> dict[str, Any]:
    """Write out/masks/<name>/<name>_<k>.png, out/overlay.mp4 and out/segments.json; return segments.json.

    on_frame(done, expected) after every batch (expected: from the declared duration, None if unknown).
    """
    t_start = time.perf_counter()
    video, out = Path(video), Path(out)
    frames = VideoFrames(video, pairing)
    rate = seg.audio["rate"]
    windows = AudioWindows(audio.source, **seg.audio) if audio.source is not None else None
    writer = None
    try:
        masks = out / "masks"
        mark_folder(masks, "probability")
        if overlay:
            channels = min(windows.channels, 2) if windows else 1
            writer = OverlayWriter(
                out / "overlay.mp4",
                frame_rate(pairing.rate),
                (frames.width, frames.height),
                windows.source_rate if windows else 48000,
                channels,
            )
            if windows is not None:
                windows.on_frame = writer.add_audio
        records: list[dict[str, Any]] = []
        batch: list[tuple[Picked, np.ndarray]] = []

        def flush() -> None:
            if not batch:
                return
            rgb = np.stack([to_protocol(p.rgb) for p, _ in batch])
            probs = seg.probabilities(rgb, np.stack([s for _, s in batch]))
            for (p, _), prob in zip(batch, probs, strict=True):
                write_probability(prediction_path(masks, name, p.j + 1), prob)
                start, end = pairing.window(p.j)
                records.append(
                    {
                        "k": p.j + 1,
                        "time": round(p.instant, 6),
                        "frame_time": round(p.frame_time, 6),
                        "audio": [round(start, 6), round(end, 6)],
                        "sounding_area": round(float((prob > SOUNDING).float().mean()), 6),
                        "max_probability": round(float(prob.max()), 6),
                    }
                )
                if writer is not None:
                    writer.add(p.rgb, prob)
            batch.clear()
            if on_frame is not None:
                on_frame(len(records), frames.expected())

        for picked in frames:
            start, _ = pairing.window(picked.j)
            segment = windows.window(start) if windows else np.zeros(rate, np.float32)
            batch.append((picked, segment))
            if len(batch) == seg.batch_size:
                flush()
        flush()
        seconds_out = len(records) / pairing.rate
        if writer is not None:
            if windows is not None:
                windows.drain(frames.duration)
            if writer.has_audio and windows is None:
                writer.add_silence(seconds_out)
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if windows is not None:
            windows.close()
    problems = frames.problems + (windows.problems if windows else [])
    result = {
        "video": str(video),
        "name": name,
        "seconds": round(frames.duration, 6),
        "declared_seconds": frames.declared,
        "source": {
            "width": frames.width,
            "height": frames.height,
            "fps": frames.source_fps,
            "frames_decoded": frames.frames_decoded,
        },
        "pairing": pairing.describe(),
        "fps": pairing.rate,
        "audio": {
            "source": str(audio.source) if audio.source else "silence",
            "note": audio.note,
            "codec": windows.codec if windows else None,
            "rate": windows.source_rate if windows else None,
            "channels": windows.channels if windows else None,
            "fed_to_clap": f"{rate} Hz, {seg.audio['stereo']} of the channels, {seg.audio['resampler']} resampling",
        },
        "frame_size_fed": f"{PROTOCOL_SIZE}x{PROTOCOL_SIZE} (PIL bilinear), then each encoder's own resize",
        "masks": f"masks/{name}/{name}_<k>.png",
        "overlay": "overlay.mp4" if writer is not None else None,
        "frames": records,
        "mean_sounding_area": round(float(np.mean([r["sounding_area"] for r in records])), 6)
        if records
        else 0.0,
        "problems": problems,
        "wall_seconds": round(time.perf_counter() - t_start, 3),
        **(meta or {}),
    }
    write_text(out / "segments.json", json.dumps(result, indent=2) + "\n")
    return result
