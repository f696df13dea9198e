"""Synthetic AVSBench trees: coloured shapes on textured frames, whose sounds decide the masks.

The videos are planned here for any subset; each release's module writes them in its layout (its
`write_synthetic` in the release registry: `write_object_videos` and `write_semantic_videos` below), so
`read_clips` reads the tree back exactly like the official one. v1s / v1m hold the same content as s4 / ms3
for the same seed (frames as JPEG, masks in palette colours, one per class), so the two layouts can be
compared; v2 is ms3-like content over ten frames. The truth (classes, which objects sound in which frame)
goes to `<out>/synth_manifest.json`, the only file written outside the official layout.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.data import layout
from pipeline.data.layout import FRAMES_PER_VIDEO, SPLITS, WAV_RATE, Subset
from pipeline.data.releases import release_of, subset_info

MANIFEST = "synth_manifest.json"
Shape = Literal["disc", "square", "triangle", "ring", "diamond", "cross"]
Sound = Literal["tone", "harmonic", "am", "noise"]

# YouTube ids: 11 characters of the URL-safe base64 alphabet.
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
ID_LENGTH = 11


class ClassSpec(BaseModel):
    """One object class: how it looks (shape, colour) and how it sounds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    shape: Shape
    color: tuple[int, int, int]
    sound: Sound
    freq: float = Field(gt=0, description="Hz: tone/carrier/fundamental, or the centre of a noise band")
    bandwidth: float = Field(0.0, ge=0, description="Hz, width of a noise band")
    mod_hz: float = Field(0.0, ge=0, description="Hz, amplitude-modulation rate of an 'am' sound")
    harmonics: int = Field(
        3, ge=1, description="partials of a 'harmonic' sound (amplitudes 1, 1/2, 1/4, ...)"
    )
    object_name: str | None = Field(
        None,
        description="the class in MS3-style object lists (`a_obj` of semantic-release v1m / v2 rows, e.g. "
        "'man_guitar'); default: the name",
    )

    @property
    def top_hz(self) -> float:
        """Highest frequency the sound contains."""
        if self.sound == "harmonic":
            return self.freq * self.harmonics
        if self.sound == "noise":
            return self.freq + self.bandwidth / 2
        return self.freq + self.mod_hz


def default_classes() -> list[ClassSpec]:
    """Six classes named after AVSBench categories, with distinct looks and well-separated spectra."""
    return [
        ClassSpec(
            name="ambulance_siren",
            shape="triangle",
            color=(220, 30, 30),
            sound="am",
            freq=1600,
            mod_hz=3,
            object_name="emergency-car",
        ),
        ClassSpec(
            name="baby_laughter",
            shape="disc",
            color=(240, 210, 20),
            sound="harmonic",
            freq=300,
            object_name="baby",
        ),
        ClassSpec(
            name="cat_meowing",
            shape="diamond",
            color=(30, 200, 60),
            sound="tone",
            freq=700,
            object_name="cat",
        ),
        ClassSpec(
            name="dog_barking",
            shape="square",
            color=(30, 70, 230),
            sound="noise",
            freq=2800,
            bandwidth=600,
            object_name="dog",
        ),
        ClassSpec(
            name="playing_piano",
            shape="ring",
            color=(210, 40, 210),
            sound="harmonic",
            freq=440,
            object_name="piano",
        ),
        ClassSpec(
            name="lawn_mowing",
            shape="cross",
            color=(20, 210, 210),
            sound="am",
            freq=4200,
            mod_hz=25,
            object_name="mower",
        ),
    ]


class SynthSpec(BaseModel):
    """All generator knobs as data; frame size, frame count and sample rate are the official ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    classes: list[ClassSpec] = Field(default_factory=default_classes, min_length=3)
    object_size: tuple[int, int] = (40, 90)  # px, side of the shape's bounding box
    max_step: float = 4.0  # px per frame an object may drift along each axis
    background: tuple[int, int] = (70, 180)  # range of background channel values
    texture: float = 18.0  # amplitude of the blocky background texture
    grain: float = 4.0  # std of the per-frame pixel noise
    ms3_objects: tuple[int, int] = (2, 3)  # objects per MS3 video (min, max)
    ms3_all_sound: float = Field(0.15, ge=0, le=1)  # chance an MS3 frame has every object sounding
    level: float = 0.2  # RMS of one sounding object
    noise: float = 0.003  # std of the white noise added to every WAV
    peak: float = 0.9  # a mix louder than this is scaled down (no clipping in 16-bit PCM)
    fade_s: float = 0.01  # on/off ramps of a sound, so gating does not click
    short_seconds: float = Field(3.4, gt=0, lt=FRAMES_PER_VIDEO)  # length of the deliberately short WAVs
    stereo_gains: tuple[float, float] = (1.0, 0.8)  # channel gains of the stereo WAVs
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _check(self) -> SynthSpec:
        """Reject specs that would make masks or classes ambiguous."""
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique: {names}")
        colors = [c.color for c in self.classes]
        if len(set(colors)) != len(colors):
            raise ValueError("class colours must be unique")
        lo, hi = self.background
        for c in self.classes:
            # A channel outside the background range means no background pixel can ever take the
            # object's colour, so the objects' pixels are recoverable from the frame alone.
            if all(lo <= v <= hi for v in c.color):
                raise ValueError(
                    f"{c.name}: colour {c.color} lies inside the background range {self.background}"
                )
            if c.top_hz >= WAV_RATE / 2:
                raise ValueError(f"{c.name}: sound reaches {c.top_hz} Hz, above Nyquist at {WAV_RATE} Hz")
        if not 2 <= self.ms3_objects[0] <= self.ms3_objects[1] <= len(self.classes):
            raise ValueError(f"ms3_objects {self.ms3_objects} must be within 2..{len(self.classes)}")
        if not 1 <= self.object_size[0] <= self.object_size[1] <= min(layout.FRAME_SIZE) // 2:
            raise ValueError(f"object_size {self.object_size} must fit in half a frame")
        return self


@dataclass(frozen=True)
class VideoPlan:
    """Everything random about one video except pixels and samples."""

    index: int
    name: str
    split: str
    objects: tuple[int, ...]  # class indices, distinct
    sounding: tuple[tuple[int, ...], ...]  # per frame: positions in `objects` that sound
    seconds: float
    stereo: bool


# ---------------------------------------------------------------- planning


def split_counts(videos: int, spec: SynthSpec) -> dict[str, int]:
    """Videos per split, ~70/15/15, at least one in each."""
    if videos < len(SPLITS):
        raise ValueError(f"videos must be >= {len(SPLITS)} (one per split), got {videos}")
    val = max(1, round(videos * spec.val_fraction))
    test = max(1, round(videos * spec.test_fraction))
    while videos - val - test < 1:  # tiny totals with large fractions: train still gets one
        val, test = (val - 1, test) if val >= test else (val, test - 1)
    return {"train": videos - val - test, "val": val, "test": test}


# Edge cases by (split, position within split); a negative position counts from the end, so with one
# video in a split the cases stack on it. With videos >= 6 every case lands in two splits.
EDGE_CASES: dict[str, tuple[tuple[str, int], ...]] = {
    "dash": (("train", 0), ("test", 0)),
    "stereo": (("train", 1), ("val", 0)),
    "short": (("train", 2), ("test", -1)),
}


def _edge(case: str, split: str, pos: int, count: int) -> bool:
    """Whether the video at `pos` of a split of `count` videos gets an edge case."""
    return any(s == split and (p if p >= 0 else count + p) == pos for s, p in EDGE_CASES[case])


def _video_id(rng: np.random.Generator, dash: bool, taken: set[str]) -> str:
    """A fresh YouTube-like id; only the chosen ones start with '-'."""
    while True:
        first = "-" if dash else ID_ALPHABET[rng.integers(len(ID_ALPHABET) - 1)]  # '-' is last
        rest = "".join(ID_ALPHABET[i] for i in rng.integers(len(ID_ALPHABET), size=ID_LENGTH - 1))
        if (name := first + rest) not in taken:
            return name


def _ms3_sounding(rng: np.random.Generator, n_obj: int, spec: SynthSpec) -> tuple[int, ...]:
    """A non-empty subset of the objects; usually a proper one, so some visible object is silent."""
    if rng.random() < spec.ms3_all_sound:
        return tuple(range(n_obj))
    k = int(rng.integers(1, n_obj))
    return tuple(sorted(int(i) for i in rng.choice(n_obj, size=k, replace=False)))


def plan_videos(subset: Subset, videos: int, seed: int, spec: SynthSpec) -> list[VideoPlan]:
    """Names, splits, classes, sounding sets and edge cases of every video."""
    # The subsets' random streams stay apart for one seed; v1s / v1m share s4's / ms3's (equal content).
    rng = np.random.default_rng([seed, subset_info(subset).synth_stream])
    n_cls, n_frames = len(spec.classes), layout.frames_per_video(subset)
    # S4 categories round-robin, then shuffled: every class appears once videos >= len(classes).
    s4_cats = rng.permutation(np.arange(videos) % n_cls)
    plans, taken, index = [], set(), 0
    for split, count in split_counts(videos, spec).items():
        for pos in range(count):
            name = _video_id(rng, _edge("dash", split, pos, count), taken)
            taken.add(name)
            seconds = spec.short_seconds if _edge("short", split, pos, count) else float(n_frames)
            if subset_info(subset).single_source:
                objects: tuple[int, ...] = (int(s4_cats[index]),)
                sounding = [(0,)] * n_frames
            else:
                n_obj = int(rng.integers(spec.ms3_objects[0], spec.ms3_objects[1] + 1))
                objects = tuple(int(i) for i in rng.choice(n_cls, size=n_obj, replace=False))
                sounding = [_ms3_sounding(rng, n_obj, spec) for _ in range(n_frames)]
            # Frame k goes with second k-1..k: nothing sounds once the audio has ended.
            sounding = [s if k < seconds else () for k, s in enumerate(sounding)]
            stereo = _edge("stereo", split, pos, count)
            plans.append(VideoPlan(index, name, split, objects, tuple(sounding), seconds, stereo))
            index += 1
    return plans


# ---------------------------------------------------------------- pixels


def shape_mask(shape: Shape, cx: float, cy: float, size: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean pixels of a shape with bounding box `size` centred at (cx, cy)."""
    r = size / 2
    dx, dy = xx - cx, yy - cy
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "disc":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (ax <= r) & (ay <= r)
    if shape == "triangle":  # apex up, base at the bottom
        return (ay <= r) & (ax <= (dy + r) / 2)
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "diamond":
        return ax + ay <= r
    if shape == "cross":
        arm = r / 3
        return ((ax <= r) & (ay <= arm)) | ((ax <= arm) & (ay <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _place(rng: np.random.Generator, sizes: np.ndarray, spec: SynthSpec, n_frames: int) -> list[np.ndarray]:
    """Start centres, kept apart where possible so objects rarely hide one another."""
    w, h = layout.FRAME_SIZE
    drift = spec.max_step * (n_frames - 1) / 2
    centres: list[np.ndarray] = []
    for size in sizes:
        margin = size / 2 + drift + 1  # the whole path stays inside the frame
        for _ in range(50):
            c = rng.uniform([margin, margin], [w - margin, h - margin])
            if all(np.hypot(*(c - o)) >= 0.45 * (size + s) for o, s in zip(centres, sizes, strict=False)):
                break
        centres.append(c)
    return centres


def _background(rng: np.random.Generator, spec: SynthSpec) -> np.ndarray:
    """A mildly textured random background (float HxWx3), static over the video."""
    w, h = layout.FRAME_SIZE
    lo, hi = spec.background
    base = rng.uniform(lo + spec.texture, hi - spec.texture, size=3)
    blocks = rng.uniform(-spec.texture, spec.texture, size=(h // 16 + 1, w // 16 + 1, 3))
    texture = np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1)[:h, :w]
    return (base + texture).astype(np.float32)


def render_video(
    rng: np.random.Generator, plan: VideoPlan, spec: SynthSpec
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (HxWx3 uint8) and masks (HxW uint8, 0/255) of one video."""
    frames, labels = render_video_labels(rng, plan, spec)
    return frames, [np.where(lab >= 0, 255, 0).astype(np.uint8) for lab in labels]


def render_video_labels(
    rng: np.random.Generator, plan: VideoPlan, spec: SynthSpec
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (HxWx3 uint8) and per-pixel class of the sounding objects (HxW int16, -1 elsewhere)."""
    w, h = layout.FRAME_SIZE
    n_frames = len(plan.sounding)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lo, hi = spec.background
    sizes = rng.integers(spec.object_size[0], spec.object_size[1] + 1, size=len(plan.objects))
    centres = _place(rng, sizes, spec, n_frames)
    steps = rng.uniform(-spec.max_step, spec.max_step, size=(len(plan.objects), 2))
    order = np.argsort(-sizes, kind="stable")  # large objects behind small ones
    background = _background(rng, spec)
    frames, labels = [], []
    for k in range(n_frames):
        grain = rng.standard_normal(size=background.shape, dtype=np.float32) * np.float32(spec.grain)
        img = np.clip(background + grain, lo, hi).round().astype(np.uint8)
        owner = np.full((h, w), -1, dtype=np.int16)  # which object is visible at each pixel
        for j in order:
            cx, cy = centres[j] + steps[j] * (k - (n_frames - 1) / 2)
            cls = spec.classes[plan.objects[j]]
            px = shape_mask(cls.shape, cx, cy, float(sizes[j]), yy, xx)
            img[px] = cls.color
            owner[px] = j
        frames.append(img)
        classes = np.array([*plan.objects, -1], dtype=np.int16)  # owner -1 -> index -1 -> class -1
        labels.append(np.where(np.isin(owner, plan.sounding[k]), classes[owner], -1).astype(np.int16))
    return frames, labels


# ---------------------------------------------------------------- samples


def class_sound(rng: np.random.Generator, cls: ClassSpec, n: int, rate: int = WAV_RATE) -> np.ndarray:
    """n samples of a class's sound at unit RMS."""
    t = np.arange(n) / rate
    phase = rng.uniform(0, 2 * np.pi, size=max(cls.harmonics, 1))
    if cls.sound == "tone":
        x = np.sin(2 * np.pi * cls.freq * t + phase[0])
    elif cls.sound == "harmonic":  # amplitudes halve per partial, so the fundamental dominates
        x = sum(0.5**i * np.sin(2 * np.pi * (i + 1) * cls.freq * t + phase[i]) for i in range(cls.harmonics))
    elif cls.sound == "am":  # carrier stays the spectral peak; sidebands are 0.4 of it
        x = (1 + 0.8 * np.sin(2 * np.pi * cls.mod_hz * t)) * np.sin(2 * np.pi * cls.freq * t + phase[0])
    elif cls.sound == "noise":  # white noise with everything outside the band removed
        spec = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / rate)
        spec[np.abs(freqs - cls.freq) > cls.bandwidth / 2] = 0
        x = np.fft.irfft(spec, n)
    else:
        raise ValueError(f"unknown sound {cls.sound!r}")
    return x / np.sqrt(np.mean(x**2))


def _gate(on: list[bool], n: int, rate: int, fade: int) -> np.ndarray:
    """Per-sample on/off envelope of one object from its per-second flags, with short ramps."""
    g = np.repeat(np.asarray(on, dtype=np.float64), rate)
    g[n:] = 0  # silent after the audio ends, so a short file fades out instead of cutting off
    if fade > 1:  # centred moving average via a cumulative sum (a convolution is ~10x slower)
        c = np.concatenate([[0.0], np.cumsum(np.pad(g, (fade // 2, fade - 1 - fade // 2), mode="edge"))])
        g = (c[fade:] - c[:-fade]) / fade
    return g


def synth_audio(rng: np.random.Generator, plan: VideoPlan, spec: SynthSpec) -> np.ndarray:
    """The video's WAV samples, (samples,) or (samples, 2): the sum of the sounding objects plus noise."""
    rate = WAV_RATE
    full = len(plan.sounding) * rate
    n = int(round(plan.seconds * rate))
    fade = max(1, int(round(spec.fade_s * rate)))
    mix = np.zeros(full)
    for j, c in enumerate(plan.objects):
        amp = rng.uniform(0.7, 1.0)
        on = [j in s for s in plan.sounding]
        mix += spec.level * amp * class_sound(rng, spec.classes[c], full, rate) * _gate(on, n, rate, fade)
    mix = mix[:n] + rng.normal(0, spec.noise, size=n)
    if (peak := np.abs(mix).max()) > spec.peak:
        mix *= spec.peak / peak
    if plan.stereo:  # same signal, a slightly different gain per channel
        mix = np.stack([mix * g for g in spec.stereo_gains], axis=1)
    return mix.astype(np.float32)


# ---------------------------------------------------------------- writing


def write_png(path: Path, array: np.ndarray) -> None:
    """Write one PNG (uint8 HxW -> 'L', HxWx3 -> 'RGB'), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)  # zlib level 1: 5x faster, same pixels


def _category(subset: Subset, plan: VideoPlan, spec: SynthSpec) -> str | None:
    """The S4 category folder of a video; MS3 has none."""
    return spec.classes[plan.objects[0]].name if subset == "s4" else None


def _write_video(root: Path, subset: Subset, plan: VideoPlan, seed: int, spec: SynthSpec) -> None:
    """Frames, masks of the annotated frames, and the WAV of one video."""
    rng = np.random.default_rng([seed, subset_info(subset).synth_stream, plan.index])
    cat = _category(subset, plan, spec)
    frames, masks = render_video(rng, plan, spec)
    annotated = layout.annotated_frames(subset, plan.split)
    for k in range(1, FRAMES_PER_VIDEO + 1):
        write_png(layout.frame_path(root, subset, plan.split, plan.name, cat, k), frames[k - 1])
        if k in annotated:
            write_png(layout.mask_path(root, subset, plan.split, plan.name, cat, k), masks[k - 1])
    wav = layout.audio_path(root, subset, plan.split, plan.name, cat)
    wav.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(wav), synth_audio(rng, plan, spec), WAV_RATE, subtype="PCM_16", format="WAV")


def _write_csv(root: Path, subset: Subset, plans: list[VideoPlan], spec: SynthSpec) -> None:
    """The subset's metadata CSV in the official column order."""
    path = layout.object_meta_csv(root, subset)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(layout.CSV_HEADER["s4" if subset == "s4" else "ms3"])  # every other subset is MS3-like
        for p in plans:
            w.writerow(
                [p.name, 0, _category(subset, p, spec), p.split] if subset == "s4" else [p.name, p.split]
            )


def read_manifest(root: str | Path) -> dict:
    """The synthetic-truth manifest under root ({} when there is none)."""
    path = Path(root) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _manifest_entry(plans: list[VideoPlan], seed: int, spec: SynthSpec) -> dict:
    """The truth of one subset: seed, spec and per-video classes and sounding objects."""
    videos = {
        p.name: {
            "split": p.split,
            "objects": [spec.classes[c].name for c in p.objects],
            "sounding": [list(s) for s in p.sounding],  # per frame, positions in "objects"
            "seconds": p.seconds,
            "channels": 2 if p.stereo else 1,
        }
        for p in plans
    }
    return {"seed": seed, "spec": spec.model_dump(mode="json"), "videos": videos}


def _write_manifest(root: Path, subset: Subset, entry: dict) -> None:
    """Merge one subset's entry into the manifest, replacing the file atomically."""
    manifest = read_manifest(root)
    manifest[subset] = entry
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST)


def _clear_subset(root: Path, subset: Subset) -> None:
    """Remove a previous synthetic copy of this subset; refuse to touch a tree we did not write."""
    csv_path, data = layout.object_meta_csv(root, subset), layout.data_dir(root, subset)
    if not csv_path.exists() and not data.exists():
        return
    if subset not in read_manifest(root):
        # Without our manifest entry this may be the real data set: never delete it.
        raise FileExistsError(
            f"{csv_path.parent}: exists and is not a synthetic {subset} tree; refusing to overwrite"
        )
    csv_path.unlink(missing_ok=True)
    if data.exists():
        shutil.rmtree(data)  # stale videos of an earlier seed would otherwise linger


def write_object_videos(
    root: Path, subset: Subset, plans: list[VideoPlan], seed: int, spec: SynthSpec
) -> None:
    """The subset in the AVSBench v1 (object) release's layout, with its metadata CSV."""
    _clear_subset(root, subset)
    for plan in plans:
        _write_video(root, subset, plan, seed, spec)
    _write_csv(root, subset, plans, spec)


def write_synthetic(
    out: str | Path, subset: Subset, videos: int = 24, seed: int = 0, spec: SynthSpec | None = None
) -> dict[str, int]:
    """Write a synthetic AVSBench tree, in the layout of the subset's release; returns videos per split."""
    release = release_of(subset)  # an unknown subset is refused here, before anything is written
    if seed < 0:  # numpy's SeedSequence takes non-negative entropy only
        raise ValueError(f"seed must be >= 0, got {seed}")
    spec = spec or SynthSpec()
    root = Path(out)
    # validates `videos` before anything is touched; a release with its own splits plans its own videos
    plans = release.plan_synthetic(subset, videos, seed, spec)
    if plans is None:
        plans = plan_videos(subset, videos, seed, spec)
    root.mkdir(parents=True, exist_ok=True)
    release.write_synthetic(root, subset, plans, seed, spec)
    _write_manifest(root, subset, _manifest_entry(plans, seed, spec))
    counts = {s: sum(p.split == s for p in plans) for s in release.splits}
    return counts
