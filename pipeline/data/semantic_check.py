"""Validate an AVSBench-semantic tree (`av2t data check --subset v1s|v1m|v2`): every problem, each naming its file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.data import semantic
from pipeline.data.check import (
    CheckReport,
    ClipResult,
    Problem,
    check_audio,
    make_problem,
    run_checks,
    zero_splits,
)
from pipeline.data.clips import Clip
from pipeline.data.errors import DataError
from pipeline.data.images import load_frame, load_mask_colours
from pipeline.data.layout import Subset

CONVENTION = "colour (labels_rgb)"
FRAME_COUNTS = tuple(sorted({i.frames for i in semantic.SUBSETS.values()}))  # what any release video may hold
FIX_FRAMES = "re-extract the video's frames from the release archive"


def _frame_files(folder: Path) -> list[Path]:
    """The frames/<i>.jpg files of a video (i a number)."""
    return [p for p in folder.glob("*.jpg") if p.stem.isdigit()]


def _check_frames(clip: Clip, result: ClipResult) -> dict[int, tuple[int, int]]:
    """Frame folder, frame count (5 or 10, the subset's), each frame decodes; (w, h) per decoded frame."""
    folder = clip.frame_paths[0].parent
    if not folder.is_dir():
        result.problems.append(make_problem(folder, f"frame folder not found: {FIX_FRAMES}"))
        return {}
    found = len(_frame_files(folder))
    want = len(clip.frame_paths)
    if found != want:
        allowed = " or ".join(map(str, FRAME_COUNTS))
        result.problems.append(
            make_problem(
                folder, f"holds {found} frames, expected {want} for {clip.subset} ({allowed} per video)"
            )
        )
    sizes = {}
    for k, path in zip(clip.frames, clip.frame_paths, strict=True):
        if not path.is_file():
            result.problems.append(make_problem(path, f"missing frame: {FIX_FRAMES}"))
            continue
        result.frames += 1
        try:
            h, w = load_frame(path).shape[:2]
            sizes[k] = (w, h)
        except DataError as e:
            result.problems.append(make_problem(path, str(e)))
    return sizes


def _colour_problems(path: Path, rgb: np.ndarray, known: set[tuple[int, int, int]]) -> list[Problem]:
    """One problem per colour of the mask that is no palette colour (at most five named)."""
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    bad = [
        (tuple(c), int(n))
        for c, n in zip(colours.tolist(), counts.tolist(), strict=True)
        if tuple(c) not in known
    ]
    if not bad:
        return []
    named = ", ".join(f"RGB {c} ({n} px)" for c, n in bad[:5]) + (
        f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    )
    return [
        make_problem(
            path,
            f"colours not in the {semantic.PALETTE_SIZE}-colour palette: {named}; save the mask losslessly "
            "with exact palette colours (no anti-aliasing or JPEG)",
        )
    ]


def _check_masks(clip: Clip, sizes: dict[int, tuple[int, int]], result: ClipResult, known: set) -> None:
    """Annotated frames' colour masks: present, decodable, palette colours only, the frame's size."""
    for k, path in zip(clip.frames, clip.mask_paths, strict=True):
        if path is None:
            continue
        if not path.is_file():
            result.problems.append(
                make_problem(path, "missing mask: re-extract labels_rgb from the release archive")
            )
            continue
        result.annotated_frames += 1
        try:
            rgb = load_mask_colours(path)
        except DataError as e:
            result.problems.append(make_problem(path, str(e)))
            continue
        result.masks[CONVENTION] += 1
        result.problems += _colour_problems(path, rgb, known)
        h, w = rgb.shape[:2]
        if k in sizes and (w, h) != sizes[k]:
            want = sizes[k]
            result.problems.append(
                make_problem(path, f"mask size {w}x{h} differs from frame size {want[0]}x{want[1]}")
            )


def _checker(known: set):
    def check(clip: Clip) -> ClipResult:
        result = ClipResult(clip.split, 0, 0, [])
        sizes = _check_frames(clip, result)
        _check_masks(clip, sizes, result, known)
        check_audio(clip, result.problems)
        return result

    return check


def check_semantic_tree(
    root: str | Path, subset: Subset, workers: int = 8, progress: bool = False
) -> CheckReport:
    """Validate one subset (the metadata rows labelled with it) of an AVSBench-semantic tree."""
    root = Path(root).expanduser().absolute()
    splits = zero_splits()
    problems: list[Problem] = []
    try:
        background = semantic.background_colour(root)
    except DataError as e:
        problems.append(make_problem(semantic.label2idx_path(root), str(e)))
        background = (0, 0, 0)  # only to build paths; the masks' colours are still checked
    try:
        rows = semantic.read_meta(root, subset)
    except DataError as e:
        return CheckReport(
            subset, splits, sorted(set(problems + [make_problem(semantic.meta_csv(root), str(e))]))
        )
    csv = semantic.meta_csv(root)
    refused = {id(row) for row, p in semantic.row_problems(rows) if "repeats" not in p}
    problems += [make_problem(csv, p) for _, p in semantic.row_problems(rows)]
    usable = [r for r in rows if id(r) not in refused]
    if not rows:
        problems.append(
            make_problem(csv, f"no rows with label {subset!r}: is this the AVSBench-semantic release?")
        )
    for row in usable:
        splits[row.split].videos += 1
    seen, clips = set(), []
    for row in usable:
        if row.name not in seen:
            seen.add(row.name)
            clips.append(semantic.clip_from_row(root, subset, row, background))
    known = {tuple(c) for c in semantic.palette().tolist()}
    masks: dict[str, Counter[str]] = {s: Counter() for s in splits}
    for result in run_checks(clips, workers, progress, _checker(known)):
        splits[result.split].frames += result.frames
        splits[result.split].annotated_frames += result.annotated_frames
        problems.extend(result.problems)
        masks[result.split].update(result.masks)
    conventions = {s: dict(c) for s, c in masks.items()}
    return CheckReport(subset, splits, sorted(set(problems)), conventions, [])
