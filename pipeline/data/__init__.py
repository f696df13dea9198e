"""AVSBench data: the release registry, path rules, clip readers, audio loading, validation and the synthetic
generator. Importing the package registers the shipped releases (one module each)."""

from pipeline.data import avsbench_object, avsbench_semantic, ref_avs  # noqa: F401  (registration)
from pipeline.data.releases import Release, register_release, release_of, subsets

__all__ = [
    "Release",
    "register_release",
    "release_of",
    "subsets",
]
