"""Validate a Ref-AVS tree (`av2t data check --release ref-avs`): every problem, each naming its file.

Counts per split: videos (distinct media folders), frames (decoded), annotated (mask frames read, one set per
expression, so masks shared by expressions are counted once per expression) and expressions (rows)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pipeline.data import ref_avs_read as rd
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
from pipeline.data.images import load_frame, read_mask
from pipeline.data.ref_avs import SPLITS

FIX_FRAMES = "re-extract the video's frames from the release archive"
FIX_MASKS = "re-extract gt_mask from the release archive"


@dataclass(frozen=True)
class _Video:
    """One media folder and the mask sets (fids) its expressions use."""

    clip: Clip
    fids: tuple[int, ...]


def _check_frames(clip: Clip, result: ClipResult) -> tuple[int, int] | None:
    """Frame folder, exactly ten frames 0..9, each decodes; the first decoded frame's (w, h)."""
    folder = clip.frame_paths[0].parent
    if not folder.is_dir():
        result.problems.append(make_problem(folder, f"frame folder not found: {FIX_FRAMES}"))
        return None
    found = len([p for p in folder.glob("*.jpg") if p.stem.isdigit()])
    if found != len(clip.frame_paths):
        result.problems.append(
            make_problem(folder, f"holds {found} frames, expected {len(clip.frame_paths)}")
        )
    size = None
    for path in clip.frame_paths:
        if not path.is_file():
            result.problems.append(make_problem(path, f"missing frame: {FIX_FRAMES}"))
            continue
        try:
            h, w = load_frame(path).shape[:2]
        except DataError as e:
            result.problems.append(make_problem(path, str(e)))
            continue
        result.frames += 1
        size = size or (w, h)
    return size


def _check_masks(
    root: Path, video: _Video, size: tuple[int, int] | None, result: ClipResult
) -> dict[int, int]:
    """Every mask of every fid the video's expressions use: present, decodable, the frames' size. Returns the
    masks read per fid."""
    read: dict[int, int] = {}
    for fid in video.fids:
        read[fid] = 0
        folder = rd.mask_dir(root, video.clip.id, fid)
        if not folder.is_dir():
            result.problems.append(make_problem(folder, f"mask folder not found: {FIX_MASKS}"))
            continue
        for k in video.clip.frames:
            path = rd.mask_path(root, video.clip.id, fid, k)
            if not path.is_file():
                result.problems.append(make_problem(path, f"missing mask: {FIX_MASKS}"))
                continue
            try:
                mask = read_mask(path).mask
            except DataError as e:
                result.problems.append(make_problem(path, str(e)))
                continue
            read[fid] += 1
            h, w = mask.shape
            if size is not None and (w, h) != size:
                want = f"{size[0]}x{size[1]}"
                result.problems.append(
                    make_problem(path, f"mask size {w}x{h} differs from frame size {want}")
                )
    return read


def check_ref_avs_tree(
    root: str | Path, subset: str, workers: int = 8, progress: bool = False
) -> CheckReport:
    """Validate a Ref-AVS tree: metadata rows, every video's frames and audio, every expression's masks."""
    root = Path(root).expanduser().absolute()
    splits = zero_splits(SPLITS)
    for counts in splits.values():
        counts.expressions = 0
    csv = rd.meta_csv(root)
    try:
        rows, parse_problems = rd.read_rows(root)
    except DataError as e:
        return CheckReport(subset, splits, [make_problem(csv, str(e))])
    problems = [make_problem(csv, p) for p in parse_problems]
    row_problems = rd.row_problems(rows)
    problems += [make_problem(csv, p) for _, p in row_problems]
    refused = {id(r) for r, p in row_problems if "repeats" not in p}
    usable = [r for r in rows if id(r) not in refused]
    if not rows and not parse_problems:
        problems.append(make_problem(csv, "no expression rows: is this the Ref-AVS release?"))
    fids: dict[tuple[str, str], dict[int, None]] = defaultdict(dict)
    for row in usable:
        splits[row.split].expressions += 1
        fids[(row.split, row.video)][row.fid] = None
    for split, _ in fids:
        splits[split].videos += 1
    videos = [_Video(rd.clip_of(root, v, s), tuple(f)) for (s, v), f in fids.items()]
    by_clip = {id(v.clip): v for v in videos}
    masks_read: dict[tuple[str, int], int] = {}

    def check(clip: Clip) -> ClipResult:
        video = by_clip[id(clip)]
        result = ClipResult(clip.split, 0, 0, [])
        size = _check_frames(clip, result)
        for fid, n in _check_masks(root, video, size, result).items():
            masks_read[(clip.id, fid)] = n
        check_audio(clip, result.problems)
        return result

    for result in run_checks([v.clip for v in videos], workers, progress, check):
        splits[result.split].frames += result.frames
        problems.extend(result.problems)
    for row in usable:
        splits[row.split].annotated_frames += masks_read.get((row.video, row.fid), 0)
    return CheckReport(subset, splits, sorted(set(problems)))


__all__ = ["Problem", "check_ref_avs_tree"]
