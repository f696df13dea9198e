"""Write small video files with PyAV for the tests (and the bench): any container, codec, rate and audio."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

# (video codec, pixel format) per container as the tests use them; FFV1 + PCM is lossless.
LOSSLESS = {"video": ("ffv1", "bgr0"), "audio": "pcm_s16le"}


def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: Fraction | int = 16,
    video_codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio: np.ndarray | None = None,
    rate: int = 16000,
    audio_codec: str = "aac",
    options: dict[str, str] | None = None,
) -> Path:
    """frames: uint8 RGB (H, W, 3); audio: float32 (channels, samples) in [-1, 1] or None (no audio stream)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    fps = Fraction(fps)
    with av.open(str(path), mode="w") as out:
        frames = iter(frames)
        first = next(frames)
        v = out.add_stream(video_codec, rate=fps)
        v.width, v.height, v.pix_fmt = first.shape[1], first.shape[0], pix_fmt
        if options:
            v.options = options
        a = None
        if audio is not None:
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            a = out.add_stream(audio_codec, rate=rate, layout=layout)
        for n, img in enumerate(_chain(first, frames)):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts = n
            f.time_base = 1 / fps
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        if a is not None:
            fmt = "s16" if audio_codec.startswith("pcm_s16") else "fltp"
            data = audio.astype(np.float32)
            if fmt == "s16":  # packed int16: (1, samples * channels)
                data = np.round(np.clip(data, -1, 32767 / 32768) * 32768).astype(np.int16).T.reshape(1, -1)
            step = 1024
            for s in range(0, audio.shape[1], step):
                chunk = (
                    data[:, s * audio.shape[0] : (s + step) * audio.shape[0]]
                    if fmt == "s16"
                    else data[:, s : s + step]
                )
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout=layout)
                f.rate = rate
                f.pts = s
                f.time_base = Fraction(1, rate)
                for p in a.encode(f):
                    out.mux(p)
            for p in a.encode():
                out.mux(p)
    return path


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]):
    yield first
    yield from rest


def tone(seconds: float, rate: int, channels: int = 1, hz: float = 440.0) -> np.ndarray:
    """A sine tone (channels, samples), a different pitch per channel."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * hz * (c + 1) * t) for c in range(channels)]).astype(np.float32)


def moving_frames(n: int, h: int, w: int, seed: int = 0) -> Iterable[np.ndarray]:
    """n frames of a bright square moving over a dim noisy background."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    side = max(4, min(h, w) // 3)
    for i in range(n):
        img = base.copy()
        x = (i * 7) % max(1, w - side)
        y = (i * 3) % max(1, h - side)
        img[y : y + side, x : x + side] = (230, 200, 40)
        yield img
