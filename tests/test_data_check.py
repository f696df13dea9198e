"""Tests of pipeline.data.images and pipeline.data.check on small AVSBench-layout trees built here."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageFile

from pipeline.data import layout
from pipeline.data.check import CheckReport, Problem, SplitCounts, check_tree
from pipeline.data.clips import DataError
from pipeline.data.images import load_frame, load_mask


@dataclass
class Video:
    """One video to write: its CSV row and how its WAV looks."""

    name: str
    split: str
    category: str | None = None
    seconds: float = 5.0
    channels: int = 1


def write_png(path: Path, img: Image.Image) -> None:
    """Save a PNG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_wav(path: Path, seconds: float, channels: int = 1) -> None:
    """Write a 16 kHz WAV of low noise (0 seconds gives a valid, empty WAV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * layout.WAV_RATE)
    data = np.random.default_rng(0).uniform(-0.1, 0.1, (n, channels)).astype(np.float32)
    sf.write(path, data, layout.WAV_RATE)


def frame_image(k: int) -> Image.Image:
    """A 224x224 RGB frame whose colour depends on k."""
    return Image.new("RGB", layout.FRAME_SIZE, (40 * k, 100, 200))


def mask_image(size: tuple[int, int] = layout.FRAME_SIZE) -> Image.Image:
    """A 0/255 'L' mask with a foreground square."""
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    arr[10:50, 20:80] = 255
    return Image.fromarray(arr, mode="L")


def write_csv(root: Path, subset: layout.Subset, rows: list[list[str]]) -> Path:
    """Write the subset's metadata CSV with our header."""
    path = layout.meta_csv(root, subset)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(layout.CSV_HEADER[subset])
        writer.writerows(rows)
    return path


def csv_row(subset: layout.Subset, v: Video) -> list[str]:
    """The CSV row of a video in the subset's column order."""
    return [v.name, "0", str(v.category), v.split] if subset == "s4" else [v.name, v.split]


def write_video(root: Path, subset: layout.Subset, v: Video) -> None:
    """Write a video's five frames, its annotated masks and its WAV at the official paths."""
    for k in range(1, layout.FRAMES_PER_VIDEO + 1):
        write_png(layout.frame_path(root, subset, v.split, v.name, v.category, k), frame_image(k))
    for k in layout.annotated_frames(subset, v.split):
        write_png(layout.mask_path(root, subset, v.split, v.name, v.category, k), mask_image())
    write_wav(layout.audio_path(root, subset, v.split, v.name, v.category), v.seconds, v.channels)


def make_tree(
    root: Path, subset: layout.Subset, videos: list[Video], extra_rows: list[list[str]] | None = None
) -> Path:
    """A clean tree of `videos` plus CSV-only `extra_rows`; returns the CSV path."""
    for v in videos:
        write_video(root, subset, v)
    return write_csv(root, subset, [csv_row(subset, v) for v in videos] + (extra_rows or []))


def paths(report: CheckReport) -> set[str]:
    """The set of reported paths."""
    return {p.path for p in report.problems}


S4_CLEAN = [
    Video("-dogbark_01", "train", "dog", channels=2),  # stereo and a leading '-' are legal
    Video("speech_02", "train", "male_speech", seconds=2.3),  # shorter than 5 s is legal
    Video("guitar_03", "val", "guitar"),
    Video("-car_04", "test", "car"),
]


def test_clean_s4_counts(tmp_path: Path) -> None:
    make_tree(tmp_path, "s4", S4_CLEAN)
    report = check_tree(tmp_path, "s4", workers=2)
    assert report.problems == []
    assert report.ok
    assert report.splits == {
        "train": SplitCounts(2, 10, 2),  # S4 train: only frame 1 has a mask
        "val": SplitCounts(1, 5, 5),
        "test": SplitCounts(1, 5, 5),
    }
    assert report.to_text().splitlines()[-1] == "OK"


def test_clean_ms3_counts(tmp_path: Path) -> None:
    videos = [Video("-Abc123_000", "train"), Video("xyz_045", "train", seconds=3.0), Video("q_1", "val")]
    make_tree(tmp_path, "ms3", videos)
    frame = layout.frame_path(tmp_path, "ms3", "train", "-Abc123_000", None, 1)
    assert frame.name == "-Abc123_000.mp4_1.png" and frame.parent.parent.name == "visual_frames"
    report = check_tree(tmp_path, "ms3", progress=True)
    assert report.problems == []
    assert report.splits == {
        "train": SplitCounts(2, 10, 10),  # MS3 annotates all five frames in every split
        "val": SplitCounts(1, 5, 5),
        "test": SplitCounts(0, 0, 0),  # absent split still listed
    }


def truncate(path: Path) -> None:
    """Cut a file's bytes in half."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_all_faults_reported(tmp_path: Path) -> None:
    root = tmp_path
    good = [Video("good_train", "train", "dog"), Video("good_val", "val", "dog")]
    faulty = [
        Video("trunc", "val", "cat"),
        Video("garbage", "val", "cat"),
        Video("emptywav", "val", "cat"),
        Video("badwav", "test", "cat"),
        Video("wrongsize", "test", "cat"),
        Video("missing", "test", "cat"),
    ]
    # "nofolder" is only in the CSV; "typo" has a split value that does not exist.
    extra = [["nofolder", "0", "cat", "test"], ["typo", "0", "cat", "training"]]
    csv_path = make_tree(root, "s4", good + faulty, extra)

    def fp(name: str, split: str, k: int) -> Path:
        return layout.frame_path(root, "s4", split, name, "cat", k)

    def mp(name: str, split: str, k: int) -> Path:
        return layout.mask_path(root, "s4", split, name, "cat", k)

    def wav(name: str, split: str) -> Path:
        return layout.audio_path(root, "s4", split, name, "cat")

    truncate(fp("trunc", "val", 2))
    write_png(mp("trunc", "val", 2), mask_image((100, 100)))  # frame unreadable: compared with 224x224
    mp("garbage", "val", 3).write_bytes(b"this is not a png at all" * 10)
    write_wav(wav("emptywav", "val"), 0.0)
    wav("badwav", "test").write_bytes(b"RIFF garbage that is not a wave file")
    write_png(mp("wrongsize", "test", 1), mask_image((112, 224)))
    fp("missing", "test", 4).unlink()
    mp("missing", "test", 5).unlink()

    report = check_tree(root, "s4", workers=3)
    by_path: dict[str, list[str]] = {}
    for p in report.problems:
        by_path.setdefault(p.path, []).append(p.problem)

    expected = {
        fp("trunc", "val", 2),
        mp("trunc", "val", 2),
        mp("garbage", "val", 3),
        wav("emptywav", "val"),
        wav("badwav", "test"),
        mp("wrongsize", "test", 1),
        fp("missing", "test", 4),
        mp("missing", "test", 5),
        layout.frame_dir(root, "s4", "test", "nofolder", "cat"),
        layout.mask_dir(root, "s4", "test", "nofolder", "cat"),
        wav("nofolder", "test"),
        csv_path,
    }
    # Equality also proves no clean file (nor nofolder's individual frames) is reported.
    assert paths(report) == {str(p) for p in expected}
    assert "truncated" in by_path[str(fp("trunc", "val", 2))][0]
    assert by_path[str(mp("trunc", "val", 2))] == ["mask size 100x100 differs from frame size 224x224"]
    assert by_path[str(mp("wrongsize", "test", 1))] == ["mask size 112x224 differs from frame size 224x224"]
    assert "empty" in by_path[str(wav("emptywav", "val"))][0]
    assert "unreadable" in by_path[str(wav("badwav", "test"))][0]
    assert by_path[str(csv_path)] == ["line 11: unknown split value 'training'"]
    assert len(report.problems) == len(expected)
    assert report.problems == sorted(report.problems, key=lambda p: (p.path, p.problem))
    assert not report.ok
    # Existing files are counted even when broken; the unknown-split row is not counted anywhere.
    assert report.splits == {
        "train": SplitCounts(1, 5, 1),
        "val": SplitCounts(4, 20, 20),
        "test": SplitCounts(4, 14, 14),
    }
    text = report.to_text()
    assert f"{fp('missing', 'test', 4)}: missing frame" in text
    assert text.splitlines()[-1] == f"{len(expected)} problems"


def test_duplicates_and_deterministic(tmp_path: Path) -> None:
    v = Video("dup", "val", "dog")
    csv_path = make_tree(tmp_path, "s4", [v], [csv_row("s4", v)])
    report = check_tree(tmp_path, "s4", workers=1)
    assert report.problems == [
        Problem(str(csv_path), "line 3: duplicate video name 'dup' in split 'val' (first on line 2)")
    ]
    assert report.splits["val"] == SplitCounts(2, 5, 5)  # two CSV rows, one set of files
    assert check_tree(tmp_path, "s4", workers=4).to_json() == report.to_json()


def test_missing_csv(tmp_path: Path) -> None:
    report = check_tree(tmp_path, "ms3")
    csv_path = str(layout.meta_csv(tmp_path, "ms3"))
    assert [p.path for p in report.problems] == [csv_path]
    assert "not found" in report.problems[0].problem
    assert all(c == SplitCounts(0, 0, 0) for c in report.splits.values())


def test_to_json_schema(tmp_path: Path) -> None:
    make_tree(tmp_path, "s4", S4_CLEAN[:1])
    layout.audio_path(tmp_path, "s4", "train", S4_CLEAN[0].name, "dog").unlink()
    out = check_tree(tmp_path, "s4").to_json()
    assert json.loads(json.dumps(out)) == out
    assert set(out) == {"subset", "splits", "problems", "masks", "notes"}
    assert out["subset"] == "s4"
    assert list(out["splits"]) == list(layout.SPLITS)
    assert out["splits"]["train"] == {"videos": 1, "frames": 5, "annotated_frames": 1}
    assert out["masks"] == {"train": {"0/255 grayscale (L)": 1}, "val": {}, "test": {}}
    assert out["notes"] == []
    assert out["problems"] == [
        {
            "path": str(layout.audio_path(tmp_path, "s4", "train", S4_CLEAN[0].name, "dog")),
            "problem": "missing WAV",
        }
    ]


def test_load_frame_and_mask_modes(tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    write_png(gray, Image.new("L", (8, 6), 7))
    frame = load_frame(gray)
    assert frame.dtype == np.uint8 and frame.shape == (6, 8, 3)
    base = np.zeros((6, 8), dtype=np.uint8)
    base[1:3, 2:5] = 255
    want = base > 0
    variants = {
        "L": Image.fromarray(base, mode="L"),
        "1": Image.fromarray(base, mode="L").convert("1"),
        "RGB": Image.fromarray(base, mode="L").convert("RGB"),
        "P": Image.fromarray(base, mode="L").convert("P"),
    }
    for mode, img in variants.items():
        path = tmp_path / f"mask_{mode}.png"
        write_png(path, img)
        got = load_mask(path)
        assert got.dtype == bool and np.array_equal(got, want), mode


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError, match="not found") as e:
        load_frame(missing)
    assert str(e.value).startswith(f"{missing}: ")
    bad = tmp_path / "trunc.png"
    write_png(bad, frame_image(1))
    truncate(bad)
    with pytest.raises(DataError) as e:
        load_mask(bad)
    assert str(e.value).startswith(f"{bad}: unreadable or truncated PNG: ")


def test_truncated_flag_is_reset(tmp_path: Path) -> None:
    bad = tmp_path / "trunc.png"
    write_png(bad, frame_image(1))
    truncate(bad)
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.warns(RuntimeWarning, match="LOAD_TRUNCATED_IMAGES"), pytest.raises(DataError):
            load_frame(bad)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
