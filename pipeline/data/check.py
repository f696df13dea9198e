"""Validate an AVSBench tree (`av2t data check`): count what is there, collect every problem.

check_tree hands a subset to its release's checker (pipeline.data.releases); the AVSBench v1 (object) release's
checker is here, with the helpers every release's checker shares (Problem, ClipResult, make_problem, ...)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.data import layout
from pipeline.data.audio import read_wav
from pipeline.data.clips import FIX_ROW, Clip, MetaRow, clip_from_row, read_meta, row_name_problems
from pipeline.data.errors import DataError
from pipeline.data.images import load_frame, read_mask
from pipeline.data.layout import SPLITS, Subset
from pipeline.data.releases import release_of


@dataclass(frozen=True, order=True)
class Problem:
    """One problem with one file or folder (or the CSV)."""

    path: str
    problem: str


@dataclass
class SplitCounts:
    """What exists for one split."""

    videos: int = 0
    frames: int = 0
    annotated_frames: int = 0
    expressions: int | None = None  # referring expressions (Ref-AVS); None for releases without them


ALPHA_ONLY_NOTE = "foreground only in alpha (every colour value is 0): read as foreground where alpha > 0"


@dataclass
class CheckReport:
    """Counts per split and every problem found, sorted by path then problem.

    `masks`: per split, how many masks were read by each convention (pipeline.data.images). `notes`: files
    that read fine but not the usual way (a foreground only in alpha); they do not make the check fail.
    """

    subset: str
    splits: dict[str, SplitCounts]
    problems: list[Problem] = field(default_factory=list)
    masks: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_json(self) -> dict:
        """Plain-JSON form: subset, per-split counts, problems, mask conventions per split, notes."""
        return {
            "subset": self.subset,
            "splits": {
                name: {k: v for k, v in asdict(counts).items() if v is not None}
                for name, counts in self.splits.items()
            },
            "problems": [asdict(p) for p in self.problems],
            "masks": {name: dict(conventions) for name, conventions in self.masks.items()},
            "notes": [asdict(p) for p in self.notes],
        }

    def to_text(self) -> str:
        """Human-readable table of counts, one line per problem, then 'OK' or the problem count."""
        refer = any(c.expressions is not None for c in self.splits.values())
        head = f"{'split':<8}{'videos':>8}{'frames':>10}{'annotated':>11}"
        lines = [f"subset {self.subset}", head + (f"{'expressions':>13}" if refer else "")]
        for name, c in self.splits.items():
            row = f"{name:<8}{c.videos:>8}{c.frames:>10}{c.annotated_frames:>11}"
            lines.append(row + (f"{c.expressions or 0:>13}" if refer else ""))
        for name, conventions in self.masks.items():
            if conventions:
                lines.append(f"masks {name}: " + ", ".join(f"{k} {n}" for k, n in conventions.items()))
        lines += [f"{p.path}: note: {p.problem}" for p in self.notes]
        lines += [f"{p.path}: {p.problem}" for p in self.problems]
        n = len(self.problems)
        lines.append("OK" if n == 0 else f"{n} problem{'s' if n != 1 else ''}")
        return "\n".join(lines)


@dataclass
class ClipResult:
    """Outcome of checking one clip's files."""

    split: str
    frames: int
    annotated_frames: int
    problems: list[Problem]
    masks: Counter[str] = field(default_factory=Counter)  # convention -> masks read by it
    notes: list[Problem] = field(default_factory=list)


def make_problem(path: Path, message: str) -> Problem:
    """A Problem for `path`; drops the 'path: ' prefix our DataErrors carry so it is not printed twice."""
    prefix = f"{path}: "
    return Problem(str(path), message[len(prefix) :] if message.startswith(prefix) else message)


def zero_splits(splits: tuple[str, ...] = SPLITS) -> dict[str, SplitCounts]:
    """Every official split (AVSBench's unless a release names its own) with zero counts."""
    return {s: SplitCounts() for s in splits}


def _check_rows(csv: Path, rows: list[MetaRow]) -> tuple[list[MetaRow], list[Problem]]:
    """CSV-level checks: unknown splits, names that are not names (empty, '..', '/', control characters),
    a video id repeated in a split or across splits. Returns the usable rows (repeats included: their files
    are checked once)."""
    problems: list[Problem] = []
    usable: list[MetaRow] = []
    first: dict[str, MetaRow] = {}
    for row in rows:
        if row.split not in SPLITS:
            problems.append(make_problem(csv, f"line {row.line}: unknown split value {row.split!r}"))
            continue
        if bad := row_name_problems(row):
            problems += [make_problem(csv, b) for b in bad]
            continue  # never build a path from it
        seen = first.get(row.name)
        if seen is not None and seen.split == row.split:
            msg = f"line {row.line}: duplicate video name {row.name!r} in split {row.split!r}"
            problems.append(make_problem(csv, f"{msg} (first on line {seen.line})"))
        elif seen is not None:
            msg = f"line {row.line}: duplicate video name {row.name!r} (first on line {seen.line}, split "
            problems.append(make_problem(csv, f"{msg}{seen.split!r}): {FIX_ROW}"))
        else:
            first[row.name] = row
        usable.append(row)
    return usable, problems


def _check_frames(clip: Clip, problems: list[Problem]) -> tuple[int, dict[int, tuple[int, int]]]:
    """Check the frame folder and PNGs; returns how many exist and the (w, h) of each decoded frame."""
    folder = clip.frame_paths[0].parent
    if not folder.is_dir():
        # One problem for the folder instead of five for its frames.
        problems.append(make_problem(folder, "frame folder not found"))
        return 0, {}
    found, sizes = 0, {}
    for k, path in zip(clip.frames, clip.frame_paths, strict=True):
        if not path.is_file():
            problems.append(make_problem(path, "missing frame"))
            continue
        found += 1
        try:
            h, w = load_frame(path).shape[:2]
            sizes[k] = (w, h)
        except DataError as e:
            problems.append(make_problem(path, str(e)))
    return found, sizes


def _check_masks(clip: Clip, frame_sizes: dict[int, tuple[int, int]], result: ClipResult) -> int:
    """Check the annotated frames' masks (presence, decoding, size, convention); returns how many exist."""
    problems = result.problems
    paths = [(k, p) for k, p in zip(clip.frames, clip.mask_paths, strict=True) if p is not None]
    if not paths:
        return 0
    folder = paths[0][1].parent
    if not folder.is_dir():
        problems.append(make_problem(folder, "mask folder not found"))
        return 0
    found = 0
    for k, path in paths:
        if not path.is_file():
            problems.append(make_problem(path, "missing mask"))
            continue
        found += 1
        try:
            read = read_mask(path)
        except DataError as e:
            problems.append(make_problem(path, str(e)))
            continue
        h, w = read.mask.shape
        result.masks[read.convention] += 1
        if read.alpha_only:
            result.notes.append(make_problem(path, ALPHA_ONLY_NOTE))
        # Without a readable frame to compare with, the official size is the reference.
        want = frame_sizes.get(k, layout.FRAME_SIZE)
        if (w, h) != want:
            problems.append(
                make_problem(path, f"mask size {w}x{h} differs from frame size {want[0]}x{want[1]}")
            )
    return found


def check_audio(clip: Clip, problems: list[Problem]) -> None:
    """Check the WAV exists, decodes and has samples (stereo and short clips are legal)."""
    path = clip.audio_path
    if not path.is_file():
        problems.append(make_problem(path, "missing WAV"))
        return
    try:
        read_wav(path)
    except DataError as e:
        problems.append(make_problem(path, str(e)))


def _check_clip(clip: Clip) -> ClipResult:
    """All file checks of one clip; runs in a worker thread."""
    result = ClipResult(clip.split, 0, 0, [])
    result.frames, sizes = _check_frames(clip, result.problems)
    result.annotated_frames = _check_masks(clip, sizes, result)
    check_audio(clip, result.problems)
    return result


def _unique_clips(root: Path, subset: Subset, rows: Iterable[MetaRow]) -> list[Clip]:
    """Clips of the usable rows, each set of files once (a duplicated row would repeat every problem)."""
    seen: set[tuple[str, Path]] = set()
    clips = []
    for row in rows:
        clip = clip_from_row(root, subset, row)
        key = (clip.split, clip.frame_paths[0])
        if key not in seen:
            seen.add(key)
            clips.append(clip)
    return clips


def run_checks(
    clips: list[Clip], workers: int, progress: bool, check: Callable[[Clip], ClipResult] = _check_clip
) -> Iterator[ClipResult]:
    """Check clips in a thread pool (PIL and libsndfile release the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(check, clips)
        yield from tqdm(results, total=len(clips), disable=not progress, file=sys.stderr, unit="video")


def check_tree(root: str | Path, subset: Subset, workers: int = 8, progress: bool = False) -> CheckReport:
    """Validate one subset of a tree of any registered release; never stops at the first problem."""
    # absolute() (not resolve()) so reported paths are full but keep the user's symlinks.
    root = Path(root).expanduser().absolute()
    return release_of(subset).check_tree(root, subset, workers, progress)


def check_object_tree(root: Path, subset: Subset, workers: int = 8, progress: bool = False) -> CheckReport:
    """Validate one subset of an AVSBench v1 (object) tree."""
    csv = layout.object_meta_csv(root, subset)
    splits = zero_splits()
    try:
        rows = read_meta(root, subset)
    except DataError as e:
        return CheckReport(subset, splits, [make_problem(csv, str(e))])
    rows, problems = _check_rows(csv, rows)
    for row in rows:
        splits[row.split].videos += 1
    masks: dict[str, Counter[str]] = {s: Counter() for s in splits}
    notes: list[Problem] = []
    for result in run_checks(_unique_clips(root, subset, rows), workers, progress):
        splits[result.split].frames += result.frames
        splits[result.split].annotated_frames += result.annotated_frames
        problems.extend(result.problems)
        masks[result.split].update(result.masks)
        notes.extend(result.notes)
    conventions = {s: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for s, c in masks.items()}
    return CheckReport(subset, splits, sorted(set(problems)), conventions, sorted(set(notes)))
