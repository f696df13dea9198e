"""The AVSBench-semantic release registered, read as binary AVS: v1s, v1m and v2, colour masks."""

from __future__ import annotations

from pipeline.data.releases import Release, SubsetInfo, register_release

NAME = "avsbench-semantic"
# v1s = the S4 videos (train annotates frame 0 only), v1m = the MS3 videos, v2 = new ten-second videos.
# The synthetic streams give v1s the content of s4 and v1m that of ms3 for a seed.
SUBSETS: dict[str, SubsetInfo] = {
    "v1s": SubsetInfo(frames=5, first_frame_train=True, single_source=True, synth_stream=4),
    "v1m": SubsetInfo(frames=5, synth_stream=3),
    "v2": SubsetInfo(frames=10, synth_stream=2),
}

RELEASE = register_release(
    Release(
        name=NAME,
        title="AVSBench-semantic (as binary AVS)",
        subsets=SUBSETS,
        mask_kind="colour",
        reader="pipeline.data.semantic:read_clips",
        checker="pipeline.data.semantic_check:check_semantic_tree",
        metadata="pipeline.data.semantic:meta_csv",
        synthesiser="pipeline.data.semantic_synth:write_semantic_videos",
    )
)
