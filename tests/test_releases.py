"""The data-release registry: the shipped releases, and a new release added with one registration that reading,
checking, synthesising, the settings and the CLI's choices all pick up with no other change."""

from __future__ import annotations

import pytest

from flows.cli import build_parser
from pipeline.data import layout
from pipeline.data.check import check_tree
from pipeline.data.clips import read_clips
from pipeline.data.errors import DataError
from pipeline.data.releases import (
    Release,
    SubsetInfo,
    register_release,
    release_of,
    releases,
    subsets,
    unregister_release,
)
from pipeline.data.synth import SynthSpec, write_synthetic
from pipeline.settings import ExtractConfig


def test_the_shipped_releases_and_their_subsets():
    assert [r.name for r in releases()][:2] == ["avsbench-object", "avsbench-semantic"]
    assert subsets()[:5] == ("s4", "ms3", "v1s", "v1m", "v2")
    assert release_of("v2").mask_kind == "colour" and release_of("s4").mask_kind == "binary"
    assert layout.frames_per_video("v2") == 10 and layout.annotated_frames("v1s", "train") == (1,)
    with pytest.raises(DataError, match="unknown subset 'zz'; expected one of"):
        release_of("zz")


@pytest.fixture
def toy_release():
    """A release of one MS3-like subset 'toy3' (read and written by the object release's own functions)."""
    release = register_release(
        Release(
            name="toy-release",
            title="a test's own release",
            subsets={"toy3": SubsetInfo(frames=5, synth_stream=7)},
            mask_kind="binary",
            reader="pipeline.data.clips:read_object_clips",
            checker="pipeline.data.check:check_object_tree",
            metadata="pipeline.data.layout:object_meta_csv",
            synthesiser="pipeline.data.synth:write_object_videos",
        )
    )
    yield release
    unregister_release(release.name)


def test_a_new_release_needs_only_its_registration(toy_release, tmp_path):
    counts = write_synthetic(tmp_path, "toy3", videos=6, seed=0, spec=SynthSpec(test_fraction=0.3))
    clips = read_clips(tmp_path, "toy3", "test")
    assert len(clips) == counts["test"] > 0 and all(c.subset == "toy3" for c in clips)
    report = check_tree(tmp_path, "toy3", workers=1)
    assert report.ok and report.splits["test"].videos == counts["test"]
    assert layout.data_layout("toy3") == "toy-release"
    assert ExtractConfig(root=tmp_path, subset="toy3").subset == "toy3"
    ns = build_parser().parse_args(["data", "check", "--root", str(tmp_path), "--subset", "toy3"])
    assert ns.subset == "toy3"


def test_a_release_cannot_take_anothers_subset():
    clash = Release("dup", "dup", {"s4": SubsetInfo(frames=5)}, "binary", "m:f", "m:f", "m:f", "m:f")
    with pytest.raises(ValueError, match=r"subsets \['s4'\] belong to 'avsbench-object'"):
        register_release(clash)
