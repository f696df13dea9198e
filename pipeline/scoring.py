"""Score a folder of predicted masks against the AVSBench ground truth with the official M_J / M_F.

Layout: `<pred>/<name>/<name>_<k>.png` for every annotated frame k of every clip of the split (the GT
masks' file names, without the split/category folders). Scores are at the protocol's size, 224 x 224, as
`evaluate` scores: the ground truth as the release's official loader reads it (AVSBench-semantic: colour
mask resized with PIL NEAREST; v1: its 224 x 224 masks), predictions at 224 x 224 as they are, and
predictions at the GT mask's own size resized to 224 x 224 with PIL NEAREST (the result says how many). Each PNG is 8-bit with one grey level per pixel
('L'; also '1', and 'P' / 'LA' / 'RGB' / 'RGBA' when every pixel is grey and opaque: a colour or a used alpha
channel is refused, as there is no telling which channel is the prediction), read as probabilities v / 255,
so hard 0/255 masks and soft maps both work. A folder in which no file holds a value above 1 and some hold 1
is a folder of 0/1 hard masks: 1 is read as foreground (probability 1). 0/1 files beside 0/255 files (and
no soft maps) are refused as ambiguous. `values=` ("probability", "binary01"), or a marker file written by
`mark_folder` (as `evaluate --save-masks` writes), states the convention instead of detecting it; the
result names the convention applied. They are turned into logits with torch.logit
(0 -> -inf, 1 -> +inf) because the metrics take logits and apply sigmoid. The float32 sigmoid gives back
v / 255 to within a few ulps, not always bit for bit. That makes no difference: apart from 0 and 1 (which
come back exactly), no v / 255 lies within 1.5e-5 of 0.5 or of any M_F threshold k / 254. Every comparison
the metrics make, and so both scores, come out exactly as for the probabilities themselves.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from pipeline.data.clips import Clip, DataError, read_clips
from pipeline.data.images import PROTOCOL_SIZE, protocol_mask
from pipeline.data.layout import Subset
from pipeline.data.names import check_name
from pipeline.files import inside, write_text
from pipeline.metrics import MetricAccumulator, threshold_buckets

# PIL modes holding 8-bit values ("1" is 0/255 after "L"; the colour ones must be grey and opaque).
EIGHT_BIT_MODES = ("L", "1", "P", "LA", "RGB", "RGBA")
MAX_LISTED = 50  # missing files listed by name in one error, before "... and N more"
SAVE_AS = (
    "save predictions as single-channel 8-bit 'L' PNGs holding round(255 * probability) (or probability_png)"
)

Values = Literal["auto", "probability", "binary01"]
CONVENTIONS = {
    "probability": "8-bit grey levels read as probabilities v/255",
    "binary01": "0/1 hard masks: 1 is foreground (probability 1), 0 background",
}
MARKER = "av2t_predictions.json"  # {"values": "probability" | "binary01"}, written by mark_folder
KINDS = ("empty", "0/1", "0/255", "soft")
SCORED_AT = (
    f"{PROTOCOL_SIZE}x{PROTOCOL_SIZE}, the protocol's size: ground truth as the release's official loader "
    "reads it; predictions at the GT mask's own size resized to it with PIL NEAREST"
)


def prediction_path(pred_dir: str | Path, video: str, k: int) -> Path:
    """Where frame k (1-based) of a video's prediction lies: <pred>/<name>/<name>_<k>.png.

    A video id that is not a plain name ('..', '/', empty, ...) raises DataError: no prediction is read or
    written outside pred_dir. (A name check, not a resolved path: a symlinked video folder is allowed.)
    """
    check_name(video, "video id", pred_dir)
    return Path(pred_dir) / video / f"{video}_{k}.png"


def expected_files(pred_dir: str | Path, clips: list[Clip]) -> list[Path]:
    """Every prediction file the split needs: one per annotated frame, in clip and frame order."""
    return [prediction_path(pred_dir, c.id, k) for c in clips for k in c.annotated]


def _listing(paths: list[Path]) -> str:
    """Paths one per line, at most MAX_LISTED of them."""
    lines = [f"  {p}" for p in paths[:MAX_LISTED]]
    if len(paths) > MAX_LISTED:
        lines.append(f"  ... and {len(paths) - MAX_LISTED} more")
    return "\n".join(lines)


def check_complete(pred_dir: str | Path, clips: list[Clip]) -> None:
    """Fail naming every missing prediction file (all of them, not only the first)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found")
    missing = [p for p in expected_files(pred_dir, clips) if not p.is_file()]
    if missing:
        raise DataError(
            f"{pred_dir}: {len(missing)} of {len(expected_files(pred_dir, clips))} prediction files "
            f"are missing:\n{_listing(missing)}"
        )


def _grey_levels(path: Path, img: Image.Image) -> tuple[np.ndarray, str]:
    """One grey level per pixel, and how it was read; colour, used alpha and non-8-bit modes are refused."""
    if img.mode not in EIGHT_BIT_MODES:
        raise DataError(f"{path}: mode {img.mode!r} is not an 8-bit image; {SAVE_AS}")
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8), "L"
    if img.mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8), "1 (0/255)"
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)  # P, LA, RGB, RGBA
    if (rgba[..., 3] != 255).any():
        raise DataError(
            f"{path}: {img.mode} prediction with transparent pixels: is the prediction in the colour or in "
            f"alpha? Ambiguous, so refused; {SAVE_AS}"
        )
    grey = rgba[..., 0]
    if not ((rgba[..., 1] == grey) & (rgba[..., 2] == grey)).all():
        raise DataError(
            f"{path}: {img.mode} prediction in colour (its channels differ, e.g. red on black): which channel "
            f"holds the probability? Ambiguous, so refused; {SAVE_AS}"
        )
    return grey, f"{img.mode} (grey)"


def read_probability(path: str | Path) -> tuple[np.ndarray, str]:
    """An 8-bit prediction PNG as uint8 (H, W) grey levels and the mode it was read from (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        with Image.open(path) as img:
            img.load()  # decode everything now: a truncated file fails here, not later
            return _grey_levels(path, img)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable or truncated PNG: {e}") from e


def load_probability(path: str | Path) -> np.ndarray:
    """An 8-bit prediction PNG as uint8 (H, W) grey levels (probability = value / 255 by default)."""
    return read_probability(path)[0]


def value_kind(values: np.ndarray) -> str:
    """Which values a prediction holds: 'empty' (all 0), '0/1', '0/255' or 'soft' (anything else)."""
    top = int(values.max()) if values.size else 0
    if top <= 1:
        return "empty" if top == 0 else "0/1"
    return "0/255" if ((values == 0) | (values == 255)).all() else "soft"


def mark_folder(pred_dir: str | Path, values: Values = "probability") -> Path:
    """Record in a prediction folder how its PNGs are meant ({"values": ...} in MARKER), so `score` never guesses."""
    if values not in CONVENTIONS:
        raise ValueError(f"unknown values {values!r}; expected one of {tuple(CONVENTIONS)}")
    return write_text(inside(pred_dir, MARKER), json.dumps({"values": values}) + "\n")


def _marked_values(pred_dir: Path) -> str | None:
    """The values recorded by mark_folder, or None when the folder has no marker."""
    path = pred_dir / MARKER
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))["values"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f'{path}: unreadable ({e}); expected {{"values": "probability"}}') from e
    if values not in CONVENTIONS:
        raise DataError(f"{path}: unknown values {values!r}; expected one of {tuple(CONVENTIONS)}")
    return values


def _choose_values(pred_dir: Path, kinds: dict[Path, str], values: str) -> str:
    """The folder's convention: as asked, as marked, or detected over the whole folder (see the module doc)."""
    if values == "auto":
        values = _marked_values(pred_dir) or "auto"
    if values != "auto":
        return values
    by_kind: dict[str, list[Path]] = {}
    for path, kind in kinds.items():
        by_kind.setdefault(kind, []).append(path)
    if not by_kind.get("0/1") or by_kind.get("soft"):
        return "probability"
    if not by_kind.get("0/255"):
        return "binary01"
    ones, full = by_kind["0/1"], by_kind["0/255"]
    raise DataError(
        f"{pred_dir}: ambiguous hard masks: {len(ones)} files hold only 0 and 1 (e.g. {ones[0]}) and {len(full)} "
        f"only 0 and 255 (e.g. {full[0]}); is 1 foreground or a probability of 1/255? Write every mask the same "
        "way (0 and 255), or score with values='binary01' or 'probability'"
    )


def probability_logits(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 grey levels to float32 logits whose sigmoid is value / 255 (see the module docstring)."""
    v = torch.tensor(np.asarray(values, dtype=np.uint8))  # a copy: PIL's arrays are read-only
    return torch.logit(v.float() / 255)


def probability_png(prob: torch.Tensor | np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] to the uint8 grey levels a prediction PNG holds: the level v whose v / 255
    makes every decision the official metrics make on p, so M_J and M_F survive the PNG.

    The 255 M_F thresholds t_k = k/254 cut [0, 1] into 255 intervals; p in [t_k, t_(k+1)) (k >= 1) gets
    v = k + 1, which lies in the same interval (and 0 below t_1; 255 at p = 1): every `p >= t_k` holds
    for v / 255 exactly when it holds for p. M_J's strict `p > 0.5` is kept too: v >= 128 exactly when
    p > 0.5, so p = 0.5 itself gets 127 (its one M_F decision at t_127 = 0.5 is the only one lost). v
    differs from round(255 p) by at most one level.
    """
    p = torch.as_tensor(prob, dtype=torch.float32).clamp(0, 1)
    count = threshold_buckets(p)  # thresholds at or below p: 1..255
    v = torch.where(count >= 2, count, torch.zeros_like(count))
    v = torch.where(p > 0.5, v.clamp(min=128), v.clamp(max=127))
    return v.to(torch.uint8).cpu().numpy()


def write_probability(path: str | Path, prob: torch.Tensor | np.ndarray) -> None:
    """Write one (H, W) probability map as an 8-bit PNG, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(probability_png(prob), mode="L").save(path, format="PNG", compress_level=1)


def _native_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable image: {e}") from e


def _frame_inputs(
    pred_dir: Path, clip: Clip, k: int, values: str, resized: Counter
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, gt) of one annotated frame at the protocol's size (PROTOCOL_SIZE square).

    A prediction at the GT mask's own size (not the protocol's) is brought to the protocol's size with PIL
    NEAREST, as the official loaders resize masks, and counted in `resized`; any other size is an error.
    """
    gt = protocol_mask(clip, k, PROTOCOL_SIZE)
    path = prediction_path(pred_dir, clip.id, k)
    pred = load_probability(path)
    if pred.shape != gt.shape:
        native = _native_size(clip.mask_paths[k - 1])
        if pred.shape != native:
            raise DataError(
                f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]}, but its GT mask "
                f"{clip.mask_paths[k - 1]} is {native[1]}x{native[0]}: save predictions at "
                f"{PROTOCOL_SIZE}x{PROTOCOL_SIZE} (the protocol's size) or at the GT mask's own size"
            )
        pred = np.asarray(Image.fromarray(pred, mode="L").resize((PROTOCOL_SIZE,) * 2, Image.NEAREST))
        resized["from native size"] += 1
    if values == "binary01":
        pred = pred * np.uint8(255)  # 0/1 -> 0/255 (checked to hold nothing else)
    return probability_logits(pred), torch.from_numpy(gt)


def _read_all(
    pred_dir: Path, clips: list[Clip], values: str, progress: bool
) -> tuple[dict, list[str], set[Path]]:
    """First pass over every prediction: the folder's convention and what was found; the errors and the
    files they name."""
    from tqdm import tqdm

    kinds: dict[Path, str] = {}
    modes: Counter[str] = Counter()
    bad: list[str] = []
    failed: set[Path] = set()
    for clip in tqdm(clips, desc="read", unit="video", disable=not progress):
        for k in clip.annotated:
            path = prediction_path(pred_dir, clip.id, k)
            try:
                grey, mode = read_probability(path)
            except DataError as e:
                bad.append(str(e))
                failed.add(path)
                continue
            kinds[path] = value_kind(grey)
            modes[mode] += 1
    try:
        chosen = _choose_values(pred_dir, kinds, values)
    except DataError as e:
        bad.append(str(e))
        chosen = "probability"
    if chosen == "binary01":
        above = [p for p, kind in kinds.items() if kind in ("0/255", "soft")]
        bad += [f"{p}: holds values above 1, not a 0/1 mask" for p in above]
        failed.update(above)
    counts = Counter(kinds.values())
    info = {
        "values": chosen,
        "convention": CONVENTIONS[chosen] + (" (detected over the folder)" if values == "auto" else ""),
        "value_kinds": {kind: counts[kind] for kind in KINDS if counts[kind]},
        "modes": dict(sorted(modes.items())),
    }
    if values == "auto" and (pred_dir / MARKER).is_file():
        info["convention"] = CONVENTIONS[chosen] + f" (as {MARKER} says)"
    return info, bad, failed


def _score(
    pred_dir: str | Path,
    root: str | Path,
    subset: Subset,
    split: str,
    batching: Literal["video", "all"],
    values: Values,
    progress: bool,
) -> tuple[MetricAccumulator, dict]:
    """Score every clip of the split; returns the accumulator and how the predictions were read."""
    if values not in ("auto", *CONVENTIONS):
        raise ValueError(f"unknown values {values!r}; expected 'auto' or one of {tuple(CONVENTIONS)}")
    pred_dir = Path(pred_dir)
    clips = read_clips(root, subset, split)
    if not clips:
        raise DataError(f"{root}: no {subset} clips in split {split!r}")
    check_complete(pred_dir, clips)
    from tqdm import tqdm

    info, bad, failed = _read_all(pred_dir, clips, values, progress)
    acc = MetricAccumulator(batching=batching)
    resized: Counter[str] = Counter()
    for clip in tqdm(clips, desc="score", unit="video", disable=not progress):
        frames = []
        for k in clip.annotated:
            if prediction_path(pred_dir, clip.id, k) in failed:
                continue  # already reported
            try:
                frames.append(_frame_inputs(pred_dir, clip, k, info["values"], resized))
            except DataError as e:  # collect every bad file, then fail once
                bad.append(str(e))
        if len(frames) == len(clip.annotated) and not bad:
            logits, gt = (torch.stack(t) for t in zip(*frames, strict=True))
            acc.add(clip.id, logits, gt, frames=list(clip.annotated), category=clip.category)
    if bad:
        listed = "\n".join(f"  {b}" for b in bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise DataError(f"{pred_dir}: {len(bad)} file(s) cannot be scored:\n{listed}{more}")
    info["scored_at"] = SCORED_AT
    info["resized_to_protocol"] = resized["from native size"]
    return acc, info


def accumulate_folder(
    pred_dir: str | Path,
    root: str | Path,
    subset: Subset,
    split: str,
    batching: Literal["video", "all"] = "video",
    progress: bool = False,
    values: Values = "auto",
) -> MetricAccumulator:
    """Score every clip of the split (one video per M_F batch); frame, video and category tables follow."""
    return _score(pred_dir, root, subset, split, batching, values, progress)[0]


def score_folder(
    pred_dir: str | Path,
    root: str | Path,
    subset: Subset,
    split: str,
    progress: bool = False,
    values: Values = "auto",
) -> dict:
    """M_J, M_F (one video per M_F batch), batching, frames, videos of a prediction folder, and how it was read:
    `values` / `convention` (the rule applied), `value_kinds` (files per kind of values), `modes` (files per
    PIL mode read)."""
    acc, info = _score(pred_dir, root, subset, split, "video", values, progress)
    s = acc.summary()
    return {
        "M_J": s["M_J"],
        "M_F": s["M_F"],
        "batching": "one video per M_F batch (AV2T test)",
        "frames": s["frames"],
        "videos": s["videos"],
        "subset": subset,
        "split": split,
        "pred": str(pred_dir),
        **info,
    }
