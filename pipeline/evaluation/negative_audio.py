"""The audio encoder's inputs for the negative conditions: silence and white-noise segments of its own length.

One place for both routes, so that they feed CLAP the very same samples: extraction (`av2t extract
--negatives`, rows stored in the feature store) and the end-to-end robustness suite (computed on the fly).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from pipeline.negatives import noise_segment, silence_segment


def segment_samples(encoder: Any) -> int:
    """Samples of one negative segment: the audio encoder's one-second segment at its sample rate (mono)."""
    return int(encoder.sample_rate)


def silence_segments(n_samples: int) -> np.ndarray:
    """(1, n_samples): the silent segment."""
    return silence_segment(n_samples)[None]


def noise_segments(n_samples: int, seed: int, videos: Iterable[str], frames: Iterable[int]) -> np.ndarray:
    """(n, n_samples): the white-noise segment of each (video, 1-based frame)."""
    rows = [noise_segment(n_samples, seed, str(v), int(k)) for v, k in zip(videos, frames, strict=True)]
    return np.stack(rows) if rows else np.zeros((0, n_samples), np.float32)
