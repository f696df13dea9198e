"""Audio loading: decode a WAV, mix to mono, resample, cut into one-second segments."""

from __future__ import annotations

from math import gcd
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from pipeline.data.clips import DataError
from pipeline.data.layout import FRAMES_PER_VIDEO

Stereo = Literal["mean", "flatten"]


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a WAV as float32 (frames, channels) and its sample rate; clear error on bad files."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError or OSError
        raise DataError(f"{path}: unreadable WAV: {e}") from e
    if data.shape[0] == 0:
        raise DataError(f"{path}: empty WAV (no samples)")
    return data, rate


def to_mono(data: np.ndarray, stereo: Stereo = "mean") -> np.ndarray:
    """Mix (frames, channels) to one channel.

    "mean" averages the channels (our default). "flatten" interleaves them into one signal twice as
    long, which is what the reference code ends up doing with stereo files; offered only for parity.
    """
    if stereo == "mean":
        return data.mean(axis=1)
    if stereo == "flatten":
        return data.reshape(-1)
    raise ValueError(f"unknown stereo handling {stereo!r}")


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy), exact rational ratio."""
    if rate_in == rate_out:
        return x.astype(np.float32, copy=False)
    g = gcd(rate_in, rate_out)
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)


def segments(x: np.ndarray, rate: int, n: int = FRAMES_PER_VIDEO, seconds: float = 1.0) -> np.ndarray:
    """Cut into n segments of `seconds` from t=0; zero-pad a short signal. Returns (n, samples)."""
    length = int(round(rate * seconds))
    out = np.zeros(n * length, dtype=np.float32)
    take = min(len(x), out.size)
    out[:take] = x[:take]
    return out.reshape(n, length)


def load_segments(
    path: str | Path, rate: int, n: int = FRAMES_PER_VIDEO, stereo: Stereo = "mean"
) -> np.ndarray:
    """A clip's audio as (n, rate) float32 one-second segments at `rate` Hz; segment i goes with frame i+1."""
    data, rate_in = read_wav(path)
    return segments(resample(to_mono(data, stereo), rate_in, rate), rate, n)
