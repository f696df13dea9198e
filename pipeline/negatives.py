"""Negative audio (AVSBench-Robust, arXiv 2502.00358): audio whose correct mask is empty, and the false-positive rate.

Three conditions, each paired with every frame of a video:
- silence: an all-zero segment;
- noise: white noise, uniform in [-1, 1) at full scale (as AVSBench-Robust's `generate_noise_audio`), seeded per
  (seed, video, frame), so the same seed gives the same noise everywhere;
- offscreen: the audio of another video, from another semantic group of categories (`category_groups.json`: music,
  human, animal, device, as AVSBench-Robust groups the S4 / MS3 classes), never from the group its dataset calls the
  least suitable contrast (music <-> human, animal -> human); chosen deterministically for a seed, and recorded.

FPR (AVSBench-Robust's `calculate_FPR`): per frame, the fraction of pixels with sigmoid(logit) > 0.5 (strictly, the
sigmoid computed in float32: a pixel at exactly 0.5 is background), averaged over the negative frames.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

CONDITIONS = ("silence", "noise", "offscreen")
GROUPS_FILE = Path(__file__).with_name("category_groups.json")
OTHER = "other"  # the group of a category the file does not know (each such category is its own group)


@lru_cache(maxsize=1)
def _groups_file() -> dict:
    """category_groups.json: {"groups": {category: group}, "least_suitable": {group: group}}."""
    return json.loads(GROUPS_FILE.read_text())


def category_group(category: str | None) -> str:
    """The semantic group of a category: music, human, animal, device; unknown categories are their own group."""
    if category is None:
        return OTHER
    return _groups_file()["groups"].get(category, f"{OTHER}:{category}")


def least_suitable(group: str) -> str | None:
    """The group AVSBench-Robust never draws off-screen audio from for this group (too close to it)."""
    return _groups_file()["least_suitable"].get(group)


def offscreen_fits(own: str | None, other: str | None) -> bool:
    """Whether audio of category `other` is a fitting off-screen negative for a frame of category `own`."""
    g = category_group(own)
    return category_group(other) not in {g, least_suitable(g)}


def _key(seed: int, *parts: object) -> int:
    """A 32-bit seed from the seed and some names (crc32: the same in every process)."""
    return zlib.crc32("\x1f".join(map(str, (seed, *parts))).encode())


def offscreen_partners(videos: Sequence[tuple[str, str | None]], seed: int = 0) -> dict[str, str]:
    """video id -> the video whose audio plays off-screen for it, for (id, category) pairs.

    Candidates: videos of another group that is not the least suitable contrast; if none, videos of another
    category; if none, any other video. One candidate per video, drawn with a generator seeded by (seed, id),
    so the choice does not depend on the order of the list.
    """
    ids = [v for v, _ in videos]
    if len(set(ids)) != len(ids):
        raise ValueError("offscreen_partners: repeated video ids")
    if len(ids) < 2:
        raise ValueError("offscreen_partners: needs at least two videos")
    group = {v: category_group(c) for v, c in videos}
    category = dict(videos)
    ordered = sorted(ids)
    out = {}
    for v in ids:
        avoid = {group[v], least_suitable(group[v])}
        pools = (
            [u for u in ordered if group[u] not in avoid],
            [u for u in ordered if u != v and category[u] != category[v]],
            [u for u in ordered if u != v],
        )
        pool = next(p for p in pools if p)
        out[v] = pool[np.random.default_rng(_key(seed, "offscreen", v)).integers(len(pool))]
    return out


def noise_segment(n_samples: int, seed: int, video: str, frame: int) -> np.ndarray:
    """White noise, uniform in [-1, 1), float32, for one frame's segment; seeded by (seed, video, frame)."""
    rng = np.random.default_rng(_key(seed, "noise", video, frame))
    return rng.uniform(-1.0, 1.0, n_samples).astype(np.float32)


def silence_segment(n_samples: int) -> np.ndarray:
    """An all-zero segment."""
    return np.zeros(n_samples, np.float32)


def foreground_fraction(logits: np.ndarray) -> np.ndarray:
    """Per frame (..., H, W): the fraction of pixels with float32 sigmoid(logit) > 0.5 (the FPR of a negative frame)."""
    x = np.asarray(logits, dtype=np.float32)
    with np.errstate(over="ignore"):
        prob = (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)
    return (prob > np.float32(0.5)).mean(axis=(-2, -1))


def false_positive_rate(logits: np.ndarray) -> float:
    """AVSBench-Robust's FPR over negative frames (N, H, W): the mean of the per-frame foreground fractions."""
    fractions = foreground_fraction(logits).reshape(-1)
    if fractions.size == 0:
        raise ValueError("false_positive_rate: no frames")
    return float(fractions.mean())


def combined_score(m_j: float, fpr: float) -> float:
    """The harmonic mean of M_J (positives) and 1 - FPR (negatives): high only when both are."""
    a, b = m_j, 1.0 - fpr
    return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


COMBINED_FORMULA = (
    "harmonic mean of M_J (positive audio) and 1 - FPR (negative audio): 2 M_J (1 - FPR) / (M_J + 1 - FPR)"
)
