"""The AVSBench v1 (object) release registered: Single-source (s4) and Multi-sources (ms3), 0/255 masks."""

from __future__ import annotations

from pipeline.data.releases import Release, SubsetInfo, register_release

RELEASE = register_release(
    Release(
        name="avsbench-object",
        title="AVSBench v1 (object)",
        # S4 trains on frame 1 only (the annotated one); the synthetic streams keep s4 and ms3 apart.
        subsets={
            "s4": SubsetInfo(frames=5, first_frame_train=True, single_source=True, synth_stream=4),
            "ms3": SubsetInfo(frames=5, synth_stream=3),
        },
        mask_kind="binary",
        reader="pipeline.data.clips:read_object_clips",
        checker="pipeline.data.check:check_object_tree",
        metadata="pipeline.data.layout:object_meta_csv",
        synthesiser="pipeline.data.synth:write_object_videos",
    )
)
