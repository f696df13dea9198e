"""The Ref-AVS release (ECCV'24, GeWu-Lab/Ref-AVS) registered: ten-second videos, referring expressions, five
splits (train, val and the Seen / Unseen / Null tests). Reading, checking and the synthetic generator live in
pipeline.data.ref_avs_read, ref_avs_check and ref_avs_synth."""

from __future__ import annotations

from pipeline.data.releases import Release, SubsetInfo, register_release

NAME = "ref-avs"
SUBSET = "ref-avs"  # the release has one subset; `--release ref-avs` and `--subset ref-avs` name the same
SPLITS: tuple[str, ...] = ("train", "val", "test_s", "test_u", "test_n")
TEST_SPLITS = {"test_s": "Seen", "test_u": "Unseen", "test_n": "Null"}
SUBSETS: dict[str, SubsetInfo] = {SUBSET: SubsetInfo(frames=10, synth_stream=5)}

RELEASE = register_release(
    Release(
        name=NAME,
        title="Ref-AVS (referring audio-visual segmentation)",
        subsets=SUBSETS,
        mask_kind="binary",
        reader="pipeline.data.ref_avs_read:read_clips",
        checker="pipeline.data.ref_avs_check:check_ref_avs_tree",
        metadata="pipeline.data.ref_avs_read:meta_csv",
        synthesiser="pipeline.data.ref_avs_synth:write_ref_avs_videos",
        splits=SPLITS,
        planner="pipeline.data.ref_avs_synth:plan_ref_avs_videos",
        expressions="pipeline.data.ref_avs_read:read_expressions",
        expression_masks="pipeline.data.ref_avs_read:expression_masks",
    )
)
