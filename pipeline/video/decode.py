"""Streaming decode with PyAV: the picked frames of a video and the one-second audio windows paired with them.

Memory stays bounded whatever the length: frames are decoded one at a time and only the frame on screen is
held; audio is decoded ahead only as far as the next window needs and dropped behind it. Two demuxers read the
file (one per stream), so neither has to buffer the other's packets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.audio import Resampler, Stereo, resample
from pipeline.video.errors import VideoError
from pipeline.video.pairing import LATE, Pairing

TRUNCATED_SLACK = 0.5  # seconds short of the declared duration before a file is called truncated


def import_av():
    """PyAV, or an error saying how to install it."""
    try:
        import av
    except ImportError as e:
        raise ImportError(f"segmenting videos needs PyAV: {e}", name="av") from e
    return av


def open_container(path: str | Path) -> Any:
    """An opened input container; a file FFmpeg cannot read raises VideoError naming it."""
    av = import_av()
    p = Path(path)
    if not p.is_file():
        raise VideoError(f"{path}: not found")
    try:
        return av.open(str(p), mode="r")
    except av.FFmpegError as e:
        raise VideoError(
            f"{path}: not a video FFmpeg can read ({_reason(e)}); check the file, or re-encode it (e.g. to mp4)"
        ) from e


def _reason(e: Exception) -> str:
    """FFmpeg's words for an error, without the file name PyAV appends."""
    return getattr(e, "strerror", None) or str(e)


@dataclass
class StreamInfo:
    """What a file holds: its first video and audio streams (None when absent)."""

    path: Path
    video: dict[str, Any] | None
    audio: dict[str, Any] | None
    duration: float | None  # declared by the container, seconds


def probe(path: str | Path) -> StreamInfo:
    """The file's streams and declared duration (headers only)."""
    with open_container(path) as c:
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        duration = c.duration / 1_000_000 if c.duration else None
        video = None
        if v is not None:
            video = {
                "codec": v.codec_context.name if v.codec_context else None,
                "width": v.codec_context.width if v.codec_context else None,
                "height": v.codec_context.height if v.codec_context else None,
                "fps": float(v.average_rate) if v.average_rate else None,
                "duration": float(v.duration * v.time_base) if v.duration and v.time_base else None,
            }
        audio = None
        if a is not None:
            audio = {
                "codec": a.codec_context.name if a.codec_context else None,
                "rate": a.rate,
                "channels": a.channels,
            }
    return StreamInfo(Path(path), video, audio, duration)


def _decoder_check(path: Path, stream: Any, what: str) -> None:
    """A stream whose codec FFmpeg has no decoder for is refused by name."""
    if stream.codec_context is None:
        raise VideoError(
            f"{path}: the {what} stream's codec is unknown to FFmpeg (no decoder); re-encode it (e.g. H.264 / AAC)"
        )


@dataclass
class Picked:
    """One output frame: its index, instant, the decoded frame's own time, and the frame as uint8 RGB."""

    j: int
    instant: float
    frame_time: float
    rgb: np.ndarray


@dataclass
class VideoFrames:
    """The picked frames of a file's first video stream, decoded as a stream (see pipeline.video.pairing).

    After iteration: `duration` (seconds decoded), `frames_decoded`, and `problems` (a truncated or damaged
    file: where decoding stopped short of the declared duration).
    """

    path: Path
    pairing: Pairing
    duration: float = 0.0
    frames_decoded: int = 0
    problems: list[str] = field(default_factory=list)
    width: int = 0
    height: int = 0
    declared: float | None = None
    source_fps: float | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        with open_container(self.path) as c:
            if not c.streams.video:
                kinds = ", ".join(sorted({s.type for s in c.streams})) or "none"
                raise VideoError(f"{self.path}: no video stream (streams: {kinds}); give a video file")
            v = c.streams.video[0]
            _decoder_check(self.path, v, "video")
            self.width, self.height = v.codec_context.width, v.codec_context.height
            self.source_fps = float(v.average_rate) if v.average_rate else None
            if v.duration and v.time_base:
                self.declared = float(v.duration * v.time_base)
            elif c.duration:
                self.declared = c.duration / 1_000_000

    def expected(self) -> int | None:
        """Output frames the declared duration promises (for a progress bar), or None."""
        if not self.declared:
            return None
        return self.pairing.count(self.declared - 1 / (self.source_fps or 25.0))

    def __iter__(self) -> Iterator[Picked]:
        av = import_av()
        j, prev, prev_t, t0, step = 0, None, 0.0, None, None
        cache: dict[int, np.ndarray] = {}

        def rgb(frame: Any) -> np.ndarray:
            key = id(frame)
            if key not in cache:  # several instants may fall on one frame: convert it once
                cache.clear()
                cache[key] = frame.to_ndarray(format="rgb24")
            return cache[key]

        with open_container(self.path) as c:
            v = c.streams.video[0]
            v.thread_type = "AUTO"
            rate = float(v.average_rate) if v.average_rate else None
            frames = c.decode(v)
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except av.FFmpegError as e:
                    self.problems.append(
                        f"decoding stopped at {prev_t:.2f} s: {_reason(e)}; the frames before were kept"
                    )
                    break
                t_abs = frame.time if frame.time is not None else self.frames_decoded / (rate or 25.0)
                t0 = t_abs if t0 is None else t0
                t = t_abs - t0
                if prev is not None and t > prev_t:
                    step = t - prev_t
                while prev is not None and self.pairing.instant(j) < t - LATE:
                    yield Picked(j, self.pairing.instant(j), prev_t, rgb(prev))
                    j += 1
                prev, prev_t = frame, t
                self.frames_decoded += 1
            if prev is None:
                raise VideoError(f"{self.path}: no video frame could be decoded (an empty or broken file)")
            self.duration = prev_t + self._frame_duration(prev, step, rate)
            while j < self.pairing.count(prev_t):
                yield Picked(j, self.pairing.instant(j), prev_t, rgb(prev))
                j += 1
        if self.declared and self.duration < self.declared - TRUNCATED_SLACK and not self.problems:
            self.problems.append(
                f"truncated: frames end at {self.duration:.2f} s of the declared {self.declared:.2f} s; "
                "the frames before were kept"
            )

    @staticmethod
    def _frame_duration(frame: Any, step: float | None, rate: float | None) -> float:
        """How long the last frame is shown: its own duration, else the last interval, else 1 / rate."""
        if getattr(frame, "duration", None) and frame.time_base:
            return float(frame.duration * frame.time_base)
        if step:
            return step
        return 1.0 / rate if rate else 0.04


@dataclass
class AudioWindows:
    """One-second windows of a file's first audio stream at `rate` Hz, as pipeline.data.audio.load_segments
    makes them (channels averaged for stereo 'mean', or kept and concatenated for 'flatten'; the same resampler),
    but decoded and resampled piece by piece.

    A window is resampled from the input samples around it with a margin wider than the resampling filter, its
    first input sample on the ratio's block grid, so it equals the window cut from the whole file resampled at
    once (up to float rounding). `on_frame`, if set, receives every decoded audio frame (the overlay's muxer).
    """

    path: Path
    rate: int
    stereo: Stereo = "mean"
    resampler: Resampler = "polyphase"
    on_frame: Callable[[Any], None] | None = None
    problems: list[str] = field(default_factory=list)
    source_rate: int = 0
    channels: int = 0
    codec: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._container = open_container(self.path)
        if not self._container.streams.audio:
            self._container.close()
            raise VideoError(f"{self.path}: no audio stream")
        self._stream = self._container.streams.audio[0]
        _decoder_check(self.path, self._stream, "audio")
        self.source_rate = int(self._stream.rate)
        self.channels = int(self._stream.channels)
        self.codec = self._stream.codec_context.name
        self._frames = self._container.decode(self._stream)
        self._buf = np.zeros((1 if self.stereo == "mean" else self.channels, 0), np.float32)
        self._base = 0  # absolute input sample index of _buf[:, 0]
        self._eof = False
        self._t0: float | None = None
        self._decoded = 0.0  # seconds of audio decoded
        av = import_av()
        self._to_float = av.AudioResampler(format="fltp")  # format only: rate and layout kept

    def close(self) -> None:
        """Close the file."""
        self._container.close()

    def __enter__(self) -> AudioWindows:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def end(self) -> int:
        """Input samples decoded so far (the file's length once at EOF)."""
        return self._base + self._buf.shape[1]

    def _decode_more(self) -> bool:
        """Decode one more audio frame into the buffer; False at the end (or where the file is damaged)."""
        av = import_av()
        if self._eof:
            return False
        try:
            frame = next(self._frames)
        except StopIteration:
            self._eof = True
            return False
        except av.FFmpegError as e:
            self._eof = True
            self.problems.append(
                f"audio decoding stopped at {self._decoded:.2f} s: {_reason(e)}; silence after that"
            )
            return False
        if self.on_frame is not None:
            self.on_frame(frame)
        parts = [f.to_ndarray() for f in self._to_float.resample(frame)]
        if not parts:
            return True
        x = np.concatenate(parts, axis=1).astype(np.float32, copy=False)  # (channels, n), planar float
        self._decoded += x.shape[1] / self.source_rate
        if self.stereo == "mean":
            # as pipeline.data.audio.to_mono: the mean over channels of float32 samples
            x = x.T.mean(axis=1)[None, :]
        self._buf = np.concatenate([self._buf, x], axis=1)
        return True

    def _input(self, lo: int, hi: int) -> np.ndarray:
        """Input samples [lo, hi) (fewer at the end of the file); samples before lo are dropped for good."""
        while self.end < hi and self._decode_more():
            pass
        if lo > self._base:
            self._buf = self._buf[:, lo - self._base :]
            self._base = lo
        if lo < self._base:
            raise AssertionError(f"audio window before the kept samples ({lo} < {self._base})")
        return self._buf[:, : max(0, hi - self._base)]

    def window(self, start: float) -> np.ndarray:
        """The one-second segment from `start` seconds (may be negative): (rate,) mono, or (channels * rate,)."""
        g = gcd(self.source_rate, self.rate)
        up, down = self.rate // g, self.source_rate // g
        margin = math.ceil(10 * max(up, down) / up) + 2 * down + 64  # > the filter's half length, in inputs
        p = round(start * self.rate)  # first output sample (on the global output grid)
        lo = max(0, math.floor(p * down / up) - margin)
        lo -= lo % down  # a block start: output sample lo * up / down is on the grid
        hi = math.ceil((p + self.rate) * down / up) + margin
        x = self._input(lo, hi)
        rows = []
        for ch in x:
            y = resample(ch, self.source_rate, self.rate, self.resampler) if ch.size else ch
            o = lo * up // down  # global index of y[0]
            seg = np.zeros(self.rate, np.float32)
            a, b = max(p, o), min(p + self.rate, o + y.size)
            if b > a:
                seg[a - p : b - p] = y[a - o : b - o]
            rows.append(seg)
        return np.concatenate(rows)

    def drain(self, until: float) -> None:
        """Decode (and hand to on_frame) the audio up to `until` seconds (the overlay's muxer wants it all)."""
        while self._decoded < until and self._decode_more():
            self._base, self._buf = self.end, self._buf[:, :0]  # no window reads these samples


def silence_windows(rate: int, n: int, stereo_channels: int = 1) -> np.ndarray:
    """n silent one-second segments (n, rate)."""
    return np.zeros((n, rate * stereo_channels), np.float32)


def frame_rate(fps: float) -> Fraction:
    """An output frame rate as the rational a muxer takes (29.97 -> 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)
