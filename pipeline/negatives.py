"""Negative audio (AVSBench-Robust, arXiv 2502.00358): audio whose correct mask is empty, and the false-positive rate.

Three conditions, each paired with every frame of a video:
- silence: an all-zero segment;
- noise: white noise, uniform in [-1, 1) at full scale (as AVSBench-Robust's `generate_noise_audio`), seeded per
  (seed, video, frame), so the same seed gives the same noise everywhere;
- offscreen: the audio of another video, from another semantic group of categories (`category_groups.json`: music,
  human, animal, device, as AVSBench-Robust groups the S4 / MS3 classes), never from a group it calls the least
  suitable contrast (music <-> human, animal -> human; MS3 device -> music); an MS3 video's category is its object
  list (the semantic release's `a_obj`, `man_guitar`), none of whose groups the partner may share. Without such a
  partner: one with no class in common; without one either (no categories: MS3 of the object release): any other
  video. Chosen deterministically for a seed, and recorded.

FPR (AVSBench-Robust's `calculate_FPR`): per frame, the fraction of pixels with sigmoid(logit) > 0.5 (strictly, the
sigmoid computed in float32: a pixel at exactly 0.5 is background), averaged over the negative frames.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

CONDITIONS = ("silence", "noise", "offscreen")
GROUPS_FILE = Path(__file__).with_name("category_groups.json")
OTHER = "other"  # the group of a category the file does not know (each such category is its own group)


@lru_cache(maxsize=1)
def _groups_file() -> dict:
    """category_groups.json: {"groups": {class: group}, "least_suitable": {group: group} (S4 categories),
    "least_suitable_multi": {group: group} (MS3 object lists)}."""
    return json.loads(GROUPS_FILE.read_text())


@dataclass(frozen=True)
class Sounds:
    """What a video's category says sounds in it: its classes, their groups, and the groups never to draw
    off-screen audio from for it (its own groups and their least suitable contrasts)."""

    classes: frozenset[str]
    groups: frozenset[str]
    avoid: frozenset[str]

    @property
    def known(self) -> bool:
        """Whether the category names anything (MS3 of the object release has none)."""
        return bool(self.classes)


@lru_cache(maxsize=4096)
def sounds(category: str | None) -> Sounds:
    """Parse a category: an S4 class folder (`playing_piano`), or an object list as the semantic release's
    `a_obj` writes MS3 videos (`man_guitar`: '_'-joined object names, AVSBench-Robust's reading); a class the
    groups file does not know is its own group."""
    if not category:
        return Sounds(frozenset(), frozenset(), frozenset())
    table = _groups_file()
    known = table["groups"]
    if category in known:
        parts, contrast = [category], table["least_suitable"]
    else:
        parts = [p for p in category.split("_") if p]
        if not any(p in known for p in parts):
            parts = [category]  # not an object list: one unknown class
        contrast = table["least_suitable_multi"]
    groups = frozenset(known.get(p, f"{OTHER}:{p}") for p in parts)
    avoid = groups | {contrast[g] for g in groups if g in contrast}
    return Sounds(frozenset(parts), groups, frozenset(avoid))


def category_group(category: str | None) -> str:
    """The semantic group(s) of a category: music, human, animal, device ('+'-joined for an object list);
    unknown classes are their own group, no category is `other`."""
    s = sounds(category)
    return "+".join(sorted(s.groups)) if s.known else OTHER


def least_suitable(group: str) -> str | None:
    """The group AVSBench-Robust never draws off-screen audio from for an S4 category of this group."""
    return _groups_file()["least_suitable"].get(group)


def offscreen_rank(own: str | None, other: str | None) -> int:
    """How fitting audio of a video of category `other` is as off-screen audio for a frame of category `own`:
    0 no group in common and none of own's least suitable contrasts (AVSBench-Robust's rule); 1 no class in
    common; 2 anything else (the fallback: unknown categories, MS3 of the object release)."""
    a, b = sounds(own), sounds(other)
    if not (a.known and b.known):
        return 2
    if not (b.groups & a.avoid):
        return 0
    return 1 if not (b.classes & a.classes) else 2


def _key(seed: int, *parts: object) -> int:
    """A 32-bit seed from the seed and some names (crc32: the same in every process)."""
    return zlib.crc32("\x1f".join(map(str, (seed, *parts))).encode())


def offscreen_partners(videos: Sequence[tuple[str, str | None]], seed: int = 0) -> dict[str, str]:
    """video id -> the video whose audio plays off-screen for it, for (id, category) pairs.

    Candidates: the other videos of the best `offscreen_rank` there is for this video (another group that is
    not too close; else no class in common; else any other video). One candidate per video, drawn with a
    generator seeded by (seed, id), so the choice does not depend on the order of the list.
    """
    ids = [v for v, _ in videos]
    if len(set(ids)) != len(ids):
        raise ValueError("offscreen_partners: repeated video ids")
    if len(ids) < 2:
        raise ValueError("offscreen_partners: needs at least two videos")
    category = dict(videos)
    ordered = sorted(ids)
    out = {}
    for v in ids:
        ranked = [(offscreen_rank(category[v], category[u]), u) for u in ordered if u != v]
        best = min(r for r, _ in ranked)
        pool = [u for r, u in ranked if r == best]
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
