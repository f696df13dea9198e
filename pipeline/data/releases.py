"""Data releases as a registry: each release (AVSBench v1 object, AVSBench-semantic, ...) registers itself once.

A `Release` names its subsets and how each is laid out, and provides the four things the rest of av2t needs:
reading a split's clips, checking a tree, the path of its metadata file and writing a synthetic tree in its
layout. `read_clips`, `data check`, `synth`, the CLI's subset choices and every per-subset fact go through
`release_of(subset)`, so adding a release is one module and one `register_release` call (detectron2's
`DatasetCatalog.register` is the model). Release modules register when `pipeline.data` is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data.errors import DataError


@dataclass(frozen=True)
class SubsetInfo:
    """What differs between a release's subsets."""

    frames: int  # frames (and one-second audio segments) per video
    first_frame_train: bool = False  # train videos annotate only their first frame (S4's rule)
    single_source: bool = False  # one sounding object per video (S4-like), else several (MS3-like)
    synth_stream: int = 0  # the synthetic generator's content stream: equal streams give equal content


@dataclass(frozen=True)
class Release:
    """One data release: its subsets, mask kind and the functions that read, check and synthesise it.

    The functions are named as "module:function" and imported on first use, as entry points are: a release
    registers without importing its readers, so `av2t --help` and the settings stay light.
    """

    name: str  # as reports name it ("avsbench-object")
    title: str  # as people name it ("AVSBench v1 (object)")
    subsets: Mapping[str, SubsetInfo]
    mask_kind: str  # "binary" (0/255 PNGs) or "colour" (one palette colour per class)
    reader: str  # (root, subset, split) -> [Clip]
    checker: str  # (root, subset, workers, progress) -> CheckReport
    metadata: str  # (root, subset) -> the metadata file's path
    synthesiser: str  # (root, subset, plans, seed, spec): write the planned videos and their metadata
    splits: tuple[str, ...] = ("train", "val", "test")  # the release's split names, in report order
    planner: str | None = None  # (subset, videos, seed, spec) -> [VideoPlan]; None: pipeline.data.synth's
    expressions: str | None = None  # (root, split) -> [expression]: a release of referring expressions
    expression_masks: str | None = None  # (root, expression) -> bool (frames, H, W) at the protocol's size

    def read_clips(self, root: Path, subset: str, split: str) -> list[Any]:
        """All clips of one split, in metadata order."""
        return _resolve(self.reader)(root, subset, split)

    def check_tree(self, root: Path, subset: str, workers: int, progress: bool) -> Any:
        """Every problem of one subset's tree (a CheckReport)."""
        return _resolve(self.checker)(root, subset, workers, progress)

    def meta_csv(self, root: Path, subset: str) -> Path:
        """The subset's metadata file."""
        return _resolve(self.metadata)(root, subset)

    def write_synthetic(self, root: Path, subset: str, plans: list[Any], seed: int, spec: Any) -> None:
        """Write planned synthetic videos in this release's layout."""
        _resolve(self.synthesiser)(root, subset, plans, seed, spec)

    def read_expressions(self, root: Path, split: str) -> list[Any] | None:
        """The split's referring expressions, or None for a release without them."""
        return None if self.expressions is None else _resolve(self.expressions)(root, split)

    def read_expression_masks(self, root: Path, expression: Any) -> Any:
        """One expression's GT masks at the protocol's size."""
        if self.expression_masks is None:
            raise ValueError(f"release {self.name!r} has no referring expressions")
        return _resolve(self.expression_masks)(root, expression)

    def plan_synthetic(self, subset: str, videos: int, seed: int, spec: Any) -> list[Any] | None:
        """The release's own plan of synthetic videos, or None when the shared planner serves."""
        return None if self.planner is None else _resolve(self.planner)(subset, videos, seed, spec)


def _resolve(ref: str) -> Callable[..., Any]:
    """The function a "module:function" reference names."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


_RELEASES: dict[str, Release] = {}


def register_release(release: Release) -> Release:
    """Add a release; its name and subsets must be new."""
    if release.name in _RELEASES:
        raise ValueError(f"release {release.name!r} is already registered")
    taken = {s: r.name for r in _RELEASES.values() for s in r.subsets}
    if clash := sorted(set(release.subsets) & set(taken)):
        raise ValueError(f"release {release.name!r}: subsets {clash} belong to {taken[clash[0]]!r}")
    _RELEASES[release.name] = release
    return release


def releases() -> list[Release]:
    """Every registered release, in registration order."""
    return list(_RELEASES.values())


def subsets() -> tuple[str, ...]:
    """Every subset of every release (the CLI's choices)."""
    return tuple(s for r in _RELEASES.values() for s in r.subsets)


def release_of(subset: str) -> Release:
    """The release a subset belongs to; an unknown subset is a DataError listing the known ones."""
    for release in _RELEASES.values():
        if subset in release.subsets:
            return release
    raise DataError(f"unknown subset {subset!r}; expected one of {subsets()}")


def subset_info(subset: str) -> SubsetInfo:
    """The per-subset facts of a subset's release."""
    return release_of(subset).subsets[subset]


def splits_of(subset: str) -> tuple[str, ...]:
    """The split names of a subset's release (AVSBench: train / val / test)."""
    return release_of(subset).splits


def all_splits() -> tuple[str, ...]:
    """Every split name of every registered release, first appearance first (the settings' choices)."""
    return tuple(dict.fromkeys(s for r in _RELEASES.values() for s in r.splits))


def known_split(split: str) -> str:
    """`split` when some release has it (a pydantic validator); ValueError listing the known ones if not."""
    if split not in all_splits():
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(all_splits())}")
    return split


def release_named(name: str) -> Release:
    """A release by its registered name; an unknown name is a DataError listing the known ones."""
    if name not in _RELEASES:
        raise DataError(f"unknown release {name!r}; expected one of {tuple(_RELEASES)}")
    return _RELEASES[name]


def known_subset(subset: str) -> str:
    """`subset` when a release has it (a pydantic validator); ValueError listing the known ones if not."""
    if subset not in subsets():
        raise ValueError(f"unknown subset {subset!r}; expected one of {', '.join(subsets())}")
    return subset


def unregister_release(name: str) -> Release:
    """Remove a registered release (a plugin unloading, or a test's own release); KeyError if unknown."""
    return _RELEASES.pop(name)
