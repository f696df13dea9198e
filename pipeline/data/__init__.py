"""AVSBench v1 data: path rules, clip reader, audio loading, validation and the synthetic generator."""

from pipeline.data.clips import Clip, read_clips
from pipeline.data.layout import FRAMES_PER_VIDEO, SPLITS, SUBSETS, Subset

__all__ = ["Clip", "read_clips", "FRAMES_PER_VIDEO", "SPLITS", "SUBSETS", "Subset"]
