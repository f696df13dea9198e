"""The Ref-AVS release: synthetic tree in the official layout, data check (exact counts, named faults), reading."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import ref_avs_read as rd
from pipeline.data.check import check_tree
from pipeline.data.clips import read_clips
from pipeline.data.errors import DataError
from pipeline.data.releases import release_named, splits_of
from pipeline.data.synth import write_synthetic


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refavs")
    counts = write_synthetic(root, "ref-avs", videos=6, seed=3)
    assert counts == {"train": 2, "val": 1, "test_s": 1, "test_u": 1, "test_n": 1}
    return root


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "metadata.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_registered_with_its_splits():
    assert release_named("ref-avs").subsets.keys() == {"ref-avs"}
    assert splits_of("ref-avs") == ("train", "val", "test_s", "test_u", "test_n")
    assert splits_of("s4") == ("train", "val", "test")


def test_layout_and_expressions(tree):
    rows = _rows(tree)
    assert list(rows[0]) == ["vid", "uid", "split", "fid", "exp"]
    for r in rows:
        assert r["uid"].rsplit("_", 2)[0] == r["vid"]
        assert (tree / "media" / r["vid"] / "frames" / "9.jpg").is_file()
        assert (tree / "media" / r["vid"] / "audio.wav").is_file()
        assert (tree / "gt_mask" / r["vid"] / f"fid_{r['fid']}" / "00009.png").is_file()
    null = [r for r in rows if r["split"] == "test_n"]
    assert null and all(not rd.expression_masks(tree, e).any() for e in rd.read_expressions(tree, "test_n"))
    texts = {r["exp"] for r in rows}
    assert {"the object that sounds", "the object that is silent"} & texts
    # several expressions per video, and the video's clip once per split
    exprs = rd.read_expressions(tree, "train")
    clips = read_clips(tree, "ref-avs", "train")
    assert len(exprs) > len(clips) == 2 and len(clips[0].frame_paths) == 10
    masks = rd.expression_masks(tree, exprs[0])
    assert masks.shape == (10, 256, 256) and masks.any()


def test_check_counts_exactly(tree):
    report = check_tree(tree, "ref-avs", workers=2)
    assert report.ok, report.to_text()
    rows = _rows(tree)
    want = Counter(r["split"] for r in rows)
    for split, c in report.splits.items():
        videos = {r["vid"] for r in rows if r["split"] == split}
        assert (c.videos, c.frames, c.expressions, c.annotated_frames) == (
            len(videos),
            10 * len(videos),
            want[split],
            10 * want[split],
        )
    assert "expressions" in report.to_text()


def test_check_names_every_fault(tree, tmp_path):
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(tree, root)
    rows = _rows(root)
    first, second = rows[0], rows[-1]
    (root / "media" / first["vid"] / "frames" / "3.jpg").unlink()
    (root / "gt_mask" / first["vid"] / f"fid_{first['fid']}" / "00002.png").write_bytes(b"not a png")
    (root / "media" / second["vid"] / "audio.wav").unlink()
    rows.append({**rows[1], "uid": rows[1]["uid"] + "x", "split": "test"})  # AVSBench's split name
    rows.append({**rows[1], "uid": "zz_cat_1", "vid": "other"})  # vid disagrees with the uid's folder
    with (root / "metadata.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["vid", "uid", "split", "fid", "exp"])
        w.writeheader()
        w.writerows(rows)
    report = check_tree(root, "ref-avs", workers=2)
    text = report.to_text()
    assert not report.ok
    assert "3.jpg: missing frame" in text
    assert "00002.png" in text
    assert "audio.wav: missing WAV" in text
    assert "unknown split value 'test'" in text
    assert "differs from the uid's video folder" in text
    with pytest.raises(DataError, match="unknown split value"):
        read_clips(root, "ref-avs", "train")


def test_unknown_split_refused(tree):
    with pytest.raises(DataError, match="unknown split 'test'"):
        read_clips(tree, "ref-avs", "test")


def test_cv2_like_resize():
    """Bilinear with half-pixel centres, kept where the 8-bit value is non-zero: a 2x2 mask with one foreground
    pixel becomes, at 4x4, the 3x3 block around it (the far corner gets weight 1/16 -> 15.9 > 0.5)."""
    m = np.zeros((2, 2), bool)
    m[0, 0] = True
    out = rd.cv2_like_resize_fg(m, 4)
    want = np.zeros((4, 4), bool)
    want[:3, :3] = True
    assert (out == want).all()
    assert (rd.cv2_like_resize_fg(np.eye(256, dtype=bool)) == np.eye(256, dtype=bool)).all()
