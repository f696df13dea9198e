"""Synthetic trees in the Ref-AVS layout (`av2t synth --release ref-avs`): the shapes of pipeline.data.synth, two
per video, one of which sounds for the whole ten seconds, and referring expressions built from the scene.

Expressions name the target by colour ("the red object"), shape ("the disc"), both ("the blue square"), position
("the object on the left"), or by sound ("the object that sounds", "the object that is silent"): the sound
expressions need the audio, the others the sentence, so a head must read both to get them all. Null expressions
(split test_n, and one in four train videos) name a colour / shape that is not on screen; their mask set (the fid
after the video's objects) is empty. Unseen (test_u): the spec's last class never appears in train, val, test_s
or test_n; every test_u video holds it and its expressions refer to it.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from pipeline.data.layout import FRAME_SIZE, WAV_RATE
from pipeline.data.ref_avs import SPLITS, SUBSET
from pipeline.data.ref_avs_read import META_COLUMNS, audio_path, frame_path, mask_path, meta_csv
from pipeline.data.releases import subset_info
from pipeline.data.synth import (
    ID_ALPHABET,
    ID_LENGTH,
    ClassSpec,
    SynthSpec,
    VideoPlan,
    read_manifest,
    render_video_labels,
    synth_audio,
    write_png,
)

JPEG_QUALITY = 95
TEST_FRACTION = 0.1  # of the videos, for each of val, test_s, test_u and test_n
TRAIN_NULL_SHARE = 0.25  # train videos that also get one Null expression
MIN_SEPARATION = 24.0  # px between the objects' mean x for "left" / "right" to be used
NAMED_COLOURS = {
    "red": (220, 30, 30),
    "yellow": (240, 210, 20),
    "green": (30, 200, 60),
    "blue": (30, 70, 230),
    "purple": (210, 40, 210),
    "cyan": (20, 210, 210),
    "orange": (240, 140, 20),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
}


def colour_word(rgb: tuple[int, int, int]) -> str:
    """The nearest named colour."""
    return min(
        NAMED_COLOURS, key=lambda n: sum((a - b) ** 2 for a, b in zip(NAMED_COLOURS[n], rgb, strict=True))
    )


def category(cls: ClassSpec) -> str:
    """The class as a uid's category: no '_' (the loader splits the uid's last two '_')."""
    return (cls.object_name or cls.name).replace("_", "-")


def split_counts(videos: int) -> dict[str, int]:
    """Videos per split: ~10% each for val and the three tests (at least one), train the rest."""
    if videos < len(SPLITS):
        raise ValueError(f"videos must be >= {len(SPLITS)} (one per split), got {videos}")
    small = max(1, round(videos * TEST_FRACTION))
    while videos - 4 * small < 1:
        small -= 1
    return {"train": videos - 4 * small, **dict.fromkeys(SPLITS[1:], small)}


def _video_id(rng: np.random.Generator, dash: bool, taken: set[str]) -> str:
    """'<YouTube-like id>_0_10000', unique; only the chosen ones start with '-'."""
    while True:
        first = "-" if dash else ID_ALPHABET[rng.integers(len(ID_ALPHABET) - 1)]
        rest = "".join(ID_ALPHABET[i] for i in rng.integers(len(ID_ALPHABET), size=ID_LENGTH - 1))
        if (name := f"{first}{rest}_0_10000") not in taken:
            return name


def plan_ref_avs_videos(subset: str, videos: int, seed: int, spec: SynthSpec) -> list[VideoPlan]:
    """Two objects per video, one sounding throughout; the last class only in test_u (where it always is)."""
    rng = np.random.default_rng([seed, subset_info(subset).synth_stream])
    frames = subset_info(subset).frames
    seen, unseen = len(spec.classes) - 1, len(spec.classes) - 1
    plans, taken, index = [], set(), 0
    for split, count in split_counts(videos).items():
        for pos in range(count):
            name = _video_id(rng, dash=pos == 0, taken=taken)
            taken.add(name)
            if split == "test_u":
                objects = (unseen, int(rng.integers(seen)))
                objects = objects if rng.random() < 0.5 else objects[::-1]
            else:
                objects = tuple(int(i) for i in rng.choice(seen, size=2, replace=False))
            loud = (int(rng.integers(2)),)
            stereo = split == "train" and pos == 1
            plans.append(VideoPlan(index, name, split, objects, (loud,) * frames, float(frames), stereo))
            index += 1
    return plans


@dataclass(frozen=True)
class SynthExpression:
    """One expression of a synthetic video: its text and the object it refers to (None: nothing)."""

    text: str
    target: int | None  # position in the plan's objects


def _mean_x(labels: list[np.ndarray], cls: int) -> float:
    """Mean column of a class's pixels over the video."""
    xs = [np.nonzero(lab == cls)[1] for lab in labels]
    xs = np.concatenate(xs) if xs else np.zeros(0)
    return float(xs.mean()) if xs.size else float("nan")


def expressions_for(
    rng: np.random.Generator, plan: VideoPlan, spec: SynthSpec, labels: list[np.ndarray]
) -> list[SynthExpression]:
    """Three expressions of a video (Null ones in test_n; one more, Null, in a quarter of train videos)."""
    classes = [spec.classes[c] for c in plan.objects]
    loud = plan.sounding[0][0]
    shown_colours = {colour_word(c.color) for c in classes}
    shown_shapes = {c.shape for c in classes}

    def null() -> SynthExpression:
        absent = [
            c
            for c in spec.classes[:-1]
            if colour_word(c.color) not in shown_colours and c.shape not in shown_shapes
        ]
        c = absent[int(rng.integers(len(absent)))]
        kind = int(rng.integers(3))
        text = (
            f"the {colour_word(c.color)} object",
            f"the {c.shape}",
            f"the {colour_word(c.color)} {c.shape}",
        )[kind]
        return SynthExpression(text, None)

    if plan.split == "test_n":
        return [null() for _ in range(3)]
    targets = [loud, 1 - loud] if plan.split != "test_u" else [plan.objects.index(len(spec.classes) - 1)] * 2
    out = []
    # by sound: the sounding object, or the silent one
    j = targets[int(rng.integers(len(targets)))]
    out.append(SynthExpression("the object that sounds" if j == loud else "the object that is silent", j))
    # by look: colour, shape or both
    j = targets[int(rng.integers(len(targets)))]
    c = classes[j]
    looks = (f"the {colour_word(c.color)} object", f"the {c.shape}", f"the {colour_word(c.color)} {c.shape}")
    out.append(SynthExpression(looks[int(rng.integers(3))], j))
    # by place when the objects stand apart, else by look again
    j = targets[int(rng.integers(len(targets)))]
    x = [_mean_x(labels, plan.objects[i]) for i in range(2)]
    if abs(x[0] - x[1]) >= MIN_SEPARATION:
        side = "left" if x[j] < x[1 - j] else "right"
        out.append(SynthExpression(f"the object on the {side}", j))
    else:
        c = classes[j]
        out.append(SynthExpression(f"the {colour_word(c.color)} {c.shape}", j))
    if plan.split == "train" and rng.random() < TRAIN_NULL_SHARE:
        out.append(null())
    return out


def _write_video(root: Path, plan: VideoPlan, seed: int, spec: SynthSpec) -> list[tuple[str, int, str]]:
    """Frames, audio and one mask set per referred object (plus an empty one for Null); (uid, fid, text) rows."""
    stream = subset_info(SUBSET).synth_stream
    rng = np.random.default_rng([seed, stream, plan.index])
    every = tuple(tuple(range(len(plan.objects))) for _ in plan.sounding)  # every object labelled
    frames, labels = render_video_labels(rng, replace(plan, sounding=every), spec)
    wav = synth_audio(rng, plan, spec)
    exprs = expressions_for(np.random.default_rng([seed, stream, plan.index, 1]), plan, spec, labels)
    vid = plan.name
    for k, img in enumerate(frames, start=1):
        path = frame_path(root, vid, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, format="JPEG", quality=JPEG_QUALITY)
    sf.write(str(audio_path(root, vid)), wav, WAV_RATE, subtype="PCM_16", format="WAV")
    null_fid = len(plan.objects)
    for fid in sorted({e.target if e.target is not None else null_fid for e in exprs}):
        for k, lab in enumerate(labels, start=1):
            fg = lab == plan.objects[fid] if fid < null_fid else np.zeros(lab.shape, bool)
            write_png(mask_path(root, vid, fid, k), np.where(fg, 255, 0).astype(np.uint8))
    rows, per_category = [], {}
    for e in exprs:
        name = category(spec.classes[plan.objects[e.target]]) if e.target is not None else "null"
        per_category[name] = per_category.get(name, 0) + 1
        rows.append(
            (f"{vid}_{name}_{per_category[name]}", e.target if e.target is not None else null_fid, e.text)
        )
    return rows


def _clear(root: Path) -> None:
    """Remove a previous synthetic Ref-AVS tree; refuse to touch one we did not write."""
    parts = [meta_csv(root), root / "media", root / "gt_mask"]
    if any(p.exists() for p in parts) and SUBSET not in read_manifest(root):
        raise FileExistsError(
            f"{root}: holds a Ref-AVS tree that av2t synth did not write; refusing to overwrite"
        )
    for p in parts[1:]:
        if p.exists():
            shutil.rmtree(p)


def write_ref_avs_videos(root: Path, subset: str, plans: list[VideoPlan], seed: int, spec: SynthSpec) -> None:
    """The planned videos in the Ref-AVS layout, with metadata.csv (one row per expression)."""
    if FRAME_SIZE != (224, 224):
        raise ValueError("synthetic frames are 224 x 224")
    _clear(root)
    rows = []
    for plan in plans:
        rows += [
            [plan.name, uid, plan.split, str(fid), text]
            for uid, fid, text in _write_video(root, plan, seed, spec)
        ]
    with meta_csv(root).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(META_COLUMNS)
        w.writerows(rows)
