"""The Ref-AVS release read as its official loader reads it (GeWu-Lab/Ref-AVS, datasets/dataset_refavs.py).

Layout (0-based files; our Clip API numbers frames from 1, so frame k is `frames/{k-1}.jpg`):
    <root>/metadata.csv                                  vid,uid,split,fid,exp  (one row per expression)
    <root>/media/<vid>/frames/<i>.jpg                    i = 0..9
    <root>/media/<vid>/audio.wav                         ten seconds
    <root>/gt_mask/<vid>/fid_<fid>/0000<i>.png           i = 0..9, one mask set per referred object
The video folder is taken from the uid as the official loader does (`uid.rsplit('_', 2)[0]`); a `vid` column
that disagrees with it is a problem of the row. Several expressions share a video (its frames and audio) and
expressions that refer to the same object share a `fid` (its masks). Splits: train, val, test_s (Seen),
test_u (Unseen), test_n (Null: the expression refers to nothing on screen).

Ground truth at the protocol's size (256 x 256): the official loader reads the PNG with OpenCV as BGR, resizes
it to 256 x 256 bilinearly (cv2.resize's default), converts it to grey and keeps grey > 0. Without OpenCV we
interpolate bilinearly with half-pixel centres (cv2's INTER_LINEAR sampling) in float and keep what rounds to a
non-zero 8-bit value (>= 0.5 on the 0..255 scale); cv2's fixed-point weights may differ from this on a pixel
whose foreground share is within ~1/2048 of that edge. A mask already 256 x 256 is read exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.clips import FIX_ROW, Clip, read_meta_csv
from pipeline.data.errors import DataError
from pipeline.data.images import load_mask
from pipeline.data.names import name_problem
from pipeline.data.ref_avs import SPLITS, SUBSET, SUBSETS

META_COLUMNS = ("vid", "uid", "split", "fid", "exp")
FRAMES = SUBSETS[SUBSET].frames
PROTOCOL_SIZE = 256  # the official loader's masks, predictions and metrics


@dataclass(frozen=True)
class Expression:
    """One metadata row: a referring expression of one video, its split and its mask set (fid)."""

    line: int
    uid: str
    video: str  # the media folder: uid.rsplit('_', 2)[0]
    split: str
    fid: int
    text: str


def meta_csv(root: Path, subset: str | None = None) -> Path:
    """The release's one metadata CSV."""
    return Path(root) / "metadata.csv"


def video_folder(uid: str) -> str:
    """The media folder of an expression's uid, by the official loader's rule."""
    return uid.rsplit("_", 2)[0]


def video_dir(root: Path, video: str) -> Path:
    """media/<vid>."""
    return Path(root) / "media" / video


def frame_path(root: Path, video: str, k: int) -> Path:
    """Frame k (1-based) -> media/<vid>/frames/{k-1}.jpg."""
    return video_dir(root, video) / "frames" / f"{k - 1}.jpg"


def audio_path(root: Path, video: str) -> Path:
    """media/<vid>/audio.wav."""
    return video_dir(root, video) / "audio.wav"


def mask_dir(root: Path, video: str, fid: int) -> Path:
    """gt_mask/<vid>/fid_<fid>."""
    return Path(root) / "gt_mask" / video / f"fid_{fid}"


def mask_path(root: Path, video: str, fid: int, k: int) -> Path:
    """Mask of frame k (1-based) -> gt_mask/<vid>/fid_<fid>/0000{k-1}.png (the loader's f'0000{i}')."""
    return mask_dir(root, video, fid) / f"0000{k - 1}.png"


def read_rows(root: Path) -> tuple[list[Expression], list[str]]:
    """Every parseable row of metadata.csv, and a problem line for each row that cannot be parsed."""
    path = meta_csv(root)
    rows = read_meta_csv(path, "Ref-AVS")
    header = [h.strip() for h in rows[0]]
    if missing := [c for c in META_COLUMNS if c not in header]:
        raise DataError(f"{path}: header lacks the columns {missing} (expected {', '.join(META_COLUMNS)})")
    col = {c: header.index(c) for c in META_COLUMNS}
    need = max(col.values()) + 1
    out, problems = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < need:
            problems.append(f"line {line}: has {len(row)} columns, expected {need}: {FIX_ROW}")
            continue
        uid, fid = row[col["uid"]].strip(), row[col["fid"]].strip()
        if not fid.isdigit():
            problems.append(f"line {line}: fid {fid!r} is not a non-negative integer: {FIX_ROW}")
            continue
        video = video_folder(uid)
        if row[col["vid"]].strip() != video:
            problems.append(
                f"line {line}: vid {row[col['vid']].strip()!r} differs from the uid's video folder {video!r} "
                f"(uid.rsplit('_', 2)[0], which the official loader reads): {FIX_ROW}"
            )
        out.append(Expression(line, uid, video, row[col["split"]].strip(), int(fid), row[col["exp"]].strip()))
    return out, problems


def row_problems(rows: list[Expression]) -> list[tuple[Expression, str]]:
    """(row, problem): unknown splits, uids without the `_<category>_<n>` tail, names that are not names,
    empty expressions, repeated uids."""
    out, first = [], {}
    for row in rows:
        if row.split not in SPLITS:
            out.append(
                (row, f"line {row.line}: unknown split value {row.split!r} (expected one of {SPLITS})")
            )
        if row.uid.count("_") < 2 or not row.video:
            out.append((row, f"line {row.line}: uid {row.uid!r} is not '<vid>_<category>_<n>': {FIX_ROW}"))
        elif (why := name_problem(row.video)) is not None:
            out.append((row, f"line {row.line}: video folder {row.video!r} {why}: {FIX_ROW}"))
        if not row.text:
            out.append((row, f"line {row.line}: uid {row.uid!r} has an empty expression: {FIX_ROW}"))
        if row.uid in first:
            out.append(
                (row, f"line {row.line}: uid {row.uid!r} repeats line {first[row.uid].line}: {FIX_ROW}")
            )
        else:
            first[row.uid] = row
    return out


def read_expressions(root: str | Path, split: str | None = None) -> list[Expression]:
    """The expressions of one split (all when None), in metadata order; the file's rows must all be sound."""
    root = Path(root)
    rows, problems = read_rows(root)
    problems += [p for _, p in row_problems(rows)]
    if problems:
        head = f"{meta_csv(root)}: {len(problems)} problem{'s' if len(problems) > 1 else ''} in its rows:"
        raise DataError("\n".join([head, *(f"  {p}" for p in problems[:20])]))
    return [r for r in rows if split is None or r.split == split]


def clip_of(root: Path, video: str, split: str) -> Clip:
    """The Clip of one video: its frames and audio. Masks belong to expressions (expression_masks), so the
    clip itself has no annotated frame."""
    frames = range(1, FRAMES + 1)
    return Clip(
        id=video,
        subset=SUBSET,
        split=split,
        category=None,
        frame_paths=tuple(frame_path(root, video, k) for k in frames),
        audio_path=audio_path(root, video),
        mask_paths=(None,) * FRAMES,
        annotated=(),
    )


def read_clips(root: Path, subset: str, split: str) -> list[Clip]:
    """One Clip per video of a split, in the order its first expression appears."""
    if subset != SUBSET:
        raise DataError(f"{subset!r} is not the Ref-AVS subset {SUBSET!r}")
    videos = dict.fromkeys(e.video for e in read_expressions(root, split))
    return [clip_of(Path(root), v, split) for v in videos]


def cv2_like_resize_fg(mask: np.ndarray, size: int = PROTOCOL_SIZE) -> np.ndarray:
    """Bool (size, size): a 0/255 mask resized bilinearly (half-pixel centres, edge-clamped, as cv2.INTER_LINEAR)
    and kept where the 8-bit result would be non-zero (see the module's note on cv2's fixed-point rounding)."""
    if mask.shape == (size, size):
        return mask.astype(bool)
    h, w = mask.shape

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(size) + 0.5) * (n_in / size) - 0.5
        x0 = np.floor(x).astype(int)
        f = x - x0
        f = np.where(x0 < 0, 0.0, f)
        x0 = np.clip(x0, 0, n_in - 1)
        x1 = np.clip(x0 + 1, 0, n_in - 1)
        return x0, x1, f

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    m = mask.astype(np.float64) * 255.0
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1] * fx
    bottom = m[y1][:, x0] * (1 - fx) + m[y1][:, x1] * fx
    value = top * (1 - fy)[:, None] + bottom * fy[:, None]
    return value >= 0.5


def expression_masks(root: str | Path, expr: Expression, size: int = PROTOCOL_SIZE) -> np.ndarray:
    """Bool (frames, size, size): an expression's ground truth as the official loader reads it."""
    return np.stack(
        [
            cv2_like_resize_fg(load_mask(mask_path(Path(root), expr.video, expr.fid, k)), size)
            for k in range(1, FRAMES + 1)
        ]
    )
