"""The synthetic AVSBench generator: official layout, realistic files, edge cases, truth that the audio encodes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from pydantic import ValidationError

from pipeline.data.audio import load_segments
from pipeline.data.clips import Clip, read_clips
from pipeline.data.images import read_mask
from pipeline.data.names import name_problem
from pipeline.data.synth import ClassSpec, SynthSpec, write_synthetic

VIDEOS = 12
RATE = 16_000
SPLITS = ("train", "val", "test")
ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tree holding both subsets, as the CLI would write it."""
    out = tmp_path_factory.mktemp("avsbench")
    for subset in ("s4", "ms3"):
        counts = write_synthetic(out, subset, videos=VIDEOS, seed=0)
        assert sum(counts.values()) == VIDEOS
    return out


def clips(root: Path, subset: str) -> list[Clip]:
    """All clips of a subset, train then val then test."""
    return [c for s in SPLITS for c in read_clips(root, subset, s)]


def manifest(root: Path) -> dict:
    """The generator's truth record."""
    return json.loads((root / "synth_manifest.json").read_text())


def colours(man: dict, subset: str) -> dict[str, tuple[int, ...]]:
    """Class name -> RGB colour, from the spec stored in the manifest."""
    return {c["name"]: tuple(c["color"]) for c in man[subset]["spec"]["classes"]}


def pixels_of(frame: np.ndarray, rgb: list[tuple[int, ...]]) -> np.ndarray:
    """Boolean map of the pixels whose colour is exactly one of `rgb`."""
    out = np.zeros(frame.shape[:2], dtype=bool)
    for c in rgb:
        out |= np.all(frame == np.asarray(c, dtype=np.uint8), axis=-1)
    return out


def tree_hashes(root: Path, under: str) -> dict[str, str]:
    """Relative path -> sha256 of every file below root/under."""
    base = root / under
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in base.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("subset", ["s4", "ms3"])
def test_reader_finds_every_file(root: Path, subset: str) -> None:
    """read_clips sees the right number of clips per split and every path it names exists."""
    for split, count in zip(SPLITS, (8, 2, 2), strict=True):
        got = read_clips(root, subset, split)
        assert len(got) == count
        for c in got:
            assert all(p.is_file() for p in c.frame_paths)
            assert c.audio_path.is_file()
            assert all(
                p is not None and p.is_file()
                for k, p in zip(c.frames, c.mask_paths, strict=True)
                if k in c.annotated
            )


def test_s4_train_has_only_first_mask(root: Path) -> None:
    """S4 train annotates frame 1 only: masks 2..5 must not exist on disk."""
    for c in read_clips(root, "s4", "train"):
        assert c.annotated == (1,)
        mask_dir = os.path.join(root, "Single-source", "s4_data", "gt_masks", "train", c.category, c.id)
        assert sorted(os.listdir(mask_dir)) == [f"{c.id}_1.png"]


def expected_paths(root: Path, subset: str, row: list[str]) -> tuple[list[str], str, list[str]]:
    """Frames, audio and masks of one CSV row, restated from the official loaders' rules."""
    r = str(root)
    if subset == "s4":
        name, _, cat, split = row
        d = os.path.join(r, "Single-source", "s4_data")
        frames = [os.path.join(d, "visual_frames", split, cat, name, f"{name}_{k}.png") for k in range(1, 6)]
        audio = os.path.join(d, "audio_wav", split, cat, f"{name}.wav")
        ks = [1] if split == "train" else range(1, 6)
        masks = [os.path.join(d, "gt_masks", split, cat, name, f"{name}_{k}.png") for k in ks]
    else:
        name, split = row
        d = os.path.join(r, "Multi-sources", "ms3_data")
        frames = [os.path.join(d, "visual_frames", name, f"{name}.mp4_{k}.png") for k in range(1, 6)]
        audio = os.path.join(d, "audio_wav", split, f"{name}.wav")
        masks = [os.path.join(d, "gt_masks", split, name, f"{name}_{k}.png") for k in range(1, 6)]
    return frames, audio, masks


@pytest.mark.parametrize("subset", ["s4", "ms3"])
def test_paths_follow_official_rules(root: Path, subset: str) -> None:
    """An independent restatement of the layout gives exactly the reader's paths, and the tree holds nothing else."""
    top = "Single-source" if subset == "s4" else "Multi-sources"
    csv_path = root / top / f"{subset}_meta_data.csv"
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == (["name", "start", "category", "split"] if subset == "s4" else ["video_id", "split"])
    by_id = {c.id: c for c in clips(root, subset)}
    everything = set()
    for row in rows[1:]:
        frames, audio, masks = expected_paths(root, subset, row)
        c = by_id[row[0]]
        assert [str(p) for p in c.frame_paths] == frames
        assert str(c.audio_path) == audio
        assert [str(p) for p in c.mask_paths if p is not None] == masks
        everything |= {*frames, audio, *masks}
        if subset == "s4":
            assert row[1] == "0" and row[2] == manifest(root)["s4"]["videos"][row[0]]["objects"][0]
    on_disk = {str(p) for p in (root / top).rglob("*") if p.is_file()}
    assert on_disk == everything | {str(csv_path)}
    assert {p.name for p in root.iterdir() if p.is_file()} == {"synth_manifest.json"}


@pytest.mark.parametrize("subset", ["s4", "ms3"])
def test_image_formats(root: Path, subset: str) -> None:
    """Frames are 224x224 RGB; masks are 224x224 'L' holding only 0 and 255."""
    for c in clips(root, subset):
        for p in c.frame_paths:
            with Image.open(p) as im:
                assert (im.mode, im.size) == ("RGB", (224, 224))
        for p in filter(None, c.mask_paths):
            with Image.open(p) as im:
                assert (im.mode, im.size) == ("L", (224, 224))
                assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
            assert read_mask(p).convention == "0/255 grayscale (L)"
        assert all(name_problem(n) is None for n in (c.id, c.category or "x"))


@pytest.mark.parametrize("subset", ["s4", "ms3"])
def test_wavs_and_edge_cases(root: Path, subset: str) -> None:
    """16 kHz PCM16 WAVs; dash names, stereo and short WAVs all occur, and not only in train."""
    seen: dict[str, set[str]] = {"dash": set(), "stereo": set(), "short": set()}
    names = [c.id for c in clips(root, subset)]
    assert len(set(names)) == len(names)
    for c in clips(root, subset):
        assert len(c.id) == 11 and set(c.id) <= ID_CHARS
        info = sf.info(str(c.audio_path))
        assert (info.samplerate, info.subtype, info.format) == (RATE, "PCM_16", "WAV")
        assert info.channels in (1, 2)
        if c.id.startswith("-"):
            seen["dash"].add(c.split)
        if info.channels == 2:
            seen["stereo"].add(c.split)
            data, _ = sf.read(str(c.audio_path))
            # Same signal at two gains: perfectly correlated channels with different levels.
            assert np.corrcoef(data[:, 0], data[:, 1])[0, 1] > 0.999
            assert not np.isclose(np.std(data[:, 0]), np.std(data[:, 1]), rtol=0.05)
        if info.frames < 5 * RATE:
            seen["short"].add(c.split)
    for case, splits in seen.items():
        assert splits - {"train"}, f"{case} missing outside train: {splits}"


@pytest.mark.parametrize("subset", ["s4", "ms3"])
def test_masks_are_the_sounding_objects(root: Path, subset: str) -> None:
    """Each mask covers exactly the visible pixels of the objects that sound in that second."""
    man = manifest(root)
    rgb = colours(man, subset)
    for c in clips(root, subset):
        truth = man[subset]["videos"][c.id]
        n = sf.info(str(c.audio_path)).frames
        for k, p in zip(c.frames, c.mask_paths, strict=True):
            sounding = truth["sounding"][k - 1]
            if (k - 1) * RATE >= n:
                assert sounding == []  # the audio has ended: nothing sounds
            if p is None:
                continue
            frame = np.asarray(Image.open(c.frame_paths[k - 1]))
            want = pixels_of(frame, [rgb[truth["objects"][i]] for i in sounding])
            mask = np.asarray(Image.open(p)) == 255
            assert np.array_equal(mask, want), (c.id, k)
            assert bool(sounding) == mask.any()


def test_ms3_vision_alone_is_not_enough(root: Path) -> None:
    """In most MS3 frames a visible object is silent, so its pixels are shown but not in the mask."""
    man = manifest(root)
    rgb = colours(man, "ms3")
    partial = total = 0
    for c in clips(root, "ms3"):
        truth = man["ms3"]["videos"][c.id]
        assert 2 <= len(truth["objects"]) <= 3 and len(set(truth["objects"])) == len(truth["objects"])
        for k, sounding in enumerate(truth["sounding"], start=1):
            if (k - 1) * RATE >= sf.info(str(c.audio_path)).frames:
                continue
            total += 1
            assert sounding, "a frame with audio always has a sounding object"
            if len(sounding) == len(truth["objects"]):
                continue
            partial += 1
            frame = np.asarray(Image.open(c.frame_paths[k - 1]))
            all_objects = pixels_of(frame, [rgb[o] for o in truth["objects"]])
            mask = np.asarray(Image.open(c.mask_paths[k - 1])) == 255
            assert 0 < mask.sum() < all_objects.sum()
    assert partial > total / 2


def band_energy(x: np.ndarray, cls: dict) -> float:
    """Spectral energy of a one-second segment in the band where a class's sound lives."""
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    half = max(cls["bandwidth"] / 2, cls["mod_hz"]) + 5
    return float(spec[np.abs(freqs - cls["freq"]) <= half].sum())


def test_s4_audio_peak_is_the_class_frequency(root: Path) -> None:
    """The dominant frequency of every S4 video's first second is its own class's frequency."""
    classes = manifest(root)["s4"]["spec"]["classes"]
    for c in clips(root, "s4"):
        seg = load_segments(c.audio_path, RATE)[0]
        peak = float(np.fft.rfftfreq(RATE, 1 / RATE)[np.argmax(np.abs(np.fft.rfft(seg)))])
        nearest = min(classes, key=lambda k: abs(k["freq"] - peak))
        assert nearest["name"] == c.category, (c.id, peak)
        assert abs(peak - nearest["freq"]) <= nearest["bandwidth"] / 2 + 2


def test_ms3_audio_carries_only_the_sounding_objects(root: Path) -> None:
    """Per second, each sounding object's band is far louder than any silent object's band."""
    man = manifest(root)["ms3"]
    classes = {k["name"]: k for k in man["spec"]["classes"]}
    for c in clips(root, "ms3"):
        truth = man["videos"][c.id]
        segs = load_segments(c.audio_path, RATE)
        for seg, sounding in zip(segs, truth["sounding"], strict=True):
            energy = [band_energy(seg, classes[o]) for o in truth["objects"]]
            on = [energy[i] for i in sounding]
            off = [e for i, e in enumerate(energy) if i not in sounding]
            if on and off:
                assert min(on) > 20 * max(off), (c.id, energy, sounding)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    """A seed fixes every byte; another seed gives another tree."""
    trees = {}
    for tag, seed in (("a", 3), ("b", 3), ("c", 4)):
        for subset in ("s4", "ms3"):
            write_synthetic(tmp_path / tag, subset, videos=6, seed=seed)
        trees[tag] = tree_hashes(tmp_path / tag, ".")
    assert trees["a"] == trees["b"]
    assert trees["a"] != trees["c"]
    shared = {"synth_manifest.json", "Single-source/s4_meta_data.csv", "Multi-sources/ms3_meta_data.csv"}
    assert set(trees["a"]) & set(trees["c"]) == shared  # other names everywhere, so no path in common
    # Edge cases are guaranteed at the smallest size that promises them.
    for subset in ("s4", "ms3"):
        videos = manifest(tmp_path / "c")[subset]["videos"]
        assert any(n.startswith("-") for n in videos)
        assert any(v["channels"] == 2 for v in videos.values())
        assert any(v["seconds"] < 5 for v in videos.values())


def test_subsets_coexist_and_rewrite_replaces(tmp_path: Path) -> None:
    """Writing one subset leaves the other alone; rewriting a subset leaves no stale files."""
    write_synthetic(tmp_path, "s4", videos=4, seed=0)
    write_synthetic(tmp_path, "ms3", videos=3, seed=0)
    ms3_before = tree_hashes(tmp_path, "Multi-sources")
    old = {c.id for c in clips(tmp_path, "s4")}
    assert write_synthetic(tmp_path, "s4", videos=5, seed=1) == {"train": 3, "val": 1, "test": 1}
    assert tree_hashes(tmp_path, "Multi-sources") == ms3_before
    new = {c.id for c in clips(tmp_path, "s4")}
    assert len(new) == 5 and not old & new
    s4_files = [p for p in (tmp_path / "Single-source").rglob("*") if p.is_file()]
    assert not [p for p in s4_files if any(n in p.name for n in old)]
    man = manifest(tmp_path)
    assert set(man) == {"s4", "ms3"} and man["s4"]["seed"] == 1 and set(man["s4"]["videos"]) == new


def test_refuses_to_overwrite_a_tree_it_did_not_write(tmp_path: Path) -> None:
    """A subset present without a manifest entry may be real data: refuse and keep it."""
    real = tmp_path / "Single-source" / "s4_meta_data.csv"
    real.parent.mkdir(parents=True)
    real.write_text("name,start,category,split\n")
    with pytest.raises(FileExistsError):
        write_synthetic(tmp_path, "s4", videos=3)
    assert real.read_text() == "name,start,category,split\n"


def test_bad_arguments() -> None:
    """Too few videos and ambiguous specs are rejected up front."""
    with pytest.raises(ValueError, match="videos"):
        write_synthetic("/nonexistent/never-created", "s4", videos=2)
    grey = ClassSpec(name="grey", shape="disc", color=(100, 100, 100), sound="tone", freq=500)
    with pytest.raises(ValidationError, match="background"):
        SynthSpec(classes=[*SynthSpec().classes[:3], grey])
    with pytest.raises(ValidationError, match="unique"):
        SynthSpec(classes=[*SynthSpec().classes[:3], SynthSpec().classes[0]])
