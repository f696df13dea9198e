"""Audio loading: decode a WAV, mix or flatten the channels, resample, cut into one-second segments."""

from __future__ import annotations

import math
from functools import cache
from math import gcd
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from pipeline.data.clips import DataError
from pipeline.data.layout import FRAMES_PER_VIDEO

Stereo = Literal["mean", "flatten"]
# polyphase: scipy's resample_poly (Kaiser-windowed FIR), our default. sinc_hann: torchaudio's default
# `Resample` (Hann-windowed sinc, 6 zero crossings, roll-off 0.99), which the reference uses for MS-CLAP.
Resampler = Literal["polyphase", "sinc_hann"]

# torchaudio.transforms.Resample's defaults (lowpass_filter_width, rolloff).
SINC_ZEROS = 6
SINC_ROLLOFF = 0.99


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a WAV as float32 (frames, channels) and its sample rate; clear error on bad files and NaN/Inf."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError or OSError
        raise DataError(f"{path}: unreadable WAV: {e}") from e
    if data.shape[0] == 0:
        raise DataError(f"{path}: empty WAV (no samples)")
    finite = np.isfinite(data)
    if not finite.all():
        # Only float WAVs can hold them; resampling would smear them, clipping would hide them.
        first, n = int(np.argmin(finite.all(axis=1))), int((~finite).sum())
        count = f"{n} samples are" if n != 1 else "1 sample is"
        raise DataError(
            f"{path}: {count} NaN or infinite (the first at {first / rate:.3f} s); "
            "the file is broken: re-export or replace it"
        )
    return data, rate


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average (frames, channels) to one channel."""
    return data.mean(axis=1)


@cache
def sinc_hann_kernel(rate_in: int, rate_out: int) -> tuple[torch.Tensor, int]:
    """The polyphase filter bank of torchaudio's default `Resample(rate_in, rate_out)`: (new, 1, K), width.

    With the ratio reduced to orig:new (both divided by their gcd), every block of `orig` input samples gives
    `new` outputs; output phase j (0 <= j < new) lies at input time j * orig / new. Its filter is the ideal
    low-pass sinc with cut-off `SINC_ROLLOFF * min(orig, new)` (in the reduced units; Nyquist of the slower
    rate, rolled off) times a Hann window reaching zero after `SINC_ZEROS` zero crossings, sampled at the
    inputs -width .. width + orig - 1 around the block. Computed in float64 and kept in float32, as torchaudio
    caches it; the phase offsets j / new are formed in float32 first, as torchaudio forms them (with float64
    phases about 7% of the taps differ, by up to 6e-6), so the kernels agree bit for bit.
    """
    g = gcd(rate_in, rate_out)
    orig, new = rate_in // g, rate_out // g
    cutoff = min(orig, new) * SINC_ROLLOFF
    width = math.ceil(SINC_ZEROS * orig / cutoff)
    taps = np.arange(-width, width + orig, dtype=np.float64) / orig
    phase = (-np.arange(new, dtype=np.float32) / np.float32(new)).astype(np.float64)
    t = (phase[:, None] + taps[None, :]) * cutoff
    t = np.clip(t, -SINC_ZEROS, SINC_ZEROS)
    window = np.cos(t * math.pi / SINC_ZEROS / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel = kernel * (window * (cutoff / orig))
    return torch.from_numpy(kernel.astype(np.float32))[:, None, :], width


def resample_sinc_hann(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample the last axis the way torchaudio's default `Resample` does (float32 in, float32 out)."""
    g = gcd(rate_in, rate_out)
    orig, new = rate_in // g, rate_out // g
    kernel, width = sinc_hann_kernel(rate_in, rate_out)
    wav = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    shape, length = wav.shape[:-1], wav.shape[-1]
    rows = wav.reshape(-1, length)
    # On some CPUs (AVX-512 here) conv1d takes another kernel for a batch of one row, whose float32 sums
    # differ in the last bit: a lone row runs beside a copy, so a row's result never depends on its company.
    n = rows.shape[0]
    rows = torch.cat([rows, rows]) if n == 1 else rows
    wav = torch.nn.functional.pad(rows, (width, width + orig))
    with torch.inference_mode():
        y = torch.nn.functional.conv1d(wav[:, None], kernel, stride=orig)[:n]  # (rows, new, blocks)
    y = y.transpose(1, 2).reshape(y.shape[0], -1)[:, : math.ceil(new * length / orig)]
    return y.reshape(*shape, -1).numpy()


def resample(x: np.ndarray, rate_in: int, rate_out: int, method: Resampler = "polyphase") -> np.ndarray:
    """Resample the last axis by an exact rational ratio: scipy polyphase, or torchaudio's windowed sinc."""
    if rate_in == rate_out:
        return x.astype(np.float32, copy=False)
    if method == "sinc_hann":
        return resample_sinc_hann(x, rate_in, rate_out)
    if method != "polyphase":
        raise ValueError(f"unknown resampler {method!r}")
    g = gcd(rate_in, rate_out)
    return resample_poly(x, rate_out // g, rate_in // g, axis=-1).astype(np.float32)


def segments(x: np.ndarray, rate: int, n: int = FRAMES_PER_VIDEO, seconds: float = 1.0) -> np.ndarray:
    """Cut into n segments of `seconds` from t=0; zero-pad a short signal. Returns (n, samples)."""
    length = int(round(rate * seconds))
    out = np.zeros(n * length, dtype=np.float32)
    take = min(len(x), out.size)
    out[:take] = x[:take]
    return out.reshape(n, length)


def load_segments(
    path: str | Path,
    rate: int,
    n: int = FRAMES_PER_VIDEO,
    stereo: Stereo = "mean",
    resampler: Resampler = "polyphase",
) -> np.ndarray:
    """A clip's audio as (n, samples) float32 one-second segments at `rate` Hz; segment i goes with frame i+1.

    stereo="mean" (our default) averages the channels first: (n, rate). stereo="flatten" is what the
    reference's MS-CLAP loader does: every channel is resampled and cut into one-second pieces on its own,
    and segment i is channel 0's piece i followed by channel 1's piece i ...: (n, channels * rate), so a
    stereo segment is a two-second signal (a mono file gives (n, rate) either way). Offered for parity only.
    """
    data, rate_in = read_wav(path)
    if stereo == "mean":
        return segments(resample(to_mono(data), rate_in, rate, resampler), rate, n)
    if stereo == "flatten":
        channels = resample(np.ascontiguousarray(data.T), rate_in, rate, resampler)
        return np.concatenate([segments(ch, rate, n) for ch in channels], axis=1)
    raise ValueError(f"unknown stereo handling {stereo!r}")
