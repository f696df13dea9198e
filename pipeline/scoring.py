"""Score a folder of predicted masks against the AVSBench ground truth with the official M_J / M_F.

Layout: `<pred>/<name>/<name>_<k>.png` for every annotated frame k of every clip of the split (the GT
masks' file names, without the split/category folders). Each PNG is 8-bit and read as probabilities
v / 255, so hard 0/255 masks and soft maps both work. They are turned into logits with torch.logit
(0 -> -inf, 1 -> +inf) because the metrics take logits and apply sigmoid. The float32 sigmoid gives back
v / 255 to within a few ulps, not always bit for bit. That makes no difference: apart from 0 and 1 (which
come back exactly), no v / 255 lies within 1.5e-5 of 0.5 or of any M_F threshold k / 254. Every comparison
the metrics make, and so both scores, come out exactly as for the probabilities themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from pipeline.data.clips import Clip, DataError, read_clips
from pipeline.data.images import load_mask
from pipeline.data.layout import Subset
from pipeline.metrics import MetricAccumulator

# PIL modes holding 8-bit values that read as one grey level per pixel ("1" is 0/255 after "L").
EIGHT_BIT_MODES = ("L", "1", "P", "LA", "RGB", "RGBA")
MAX_LISTED = 50  # missing files listed by name in one error, before "... and N more"


def prediction_path(pred_dir: str | Path, video: str, k: int) -> Path:
    """Where frame k (1-based) of a video's prediction lies: <pred>/<name>/<name>_<k>.png."""
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


def load_probability(path: str | Path) -> np.ndarray:
    """An 8-bit prediction PNG as uint8 (H, W) grey levels (probability = value / 255)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        with Image.open(path) as img:
            img.load()  # decode everything now: a truncated file fails here, not later
            if img.mode not in EIGHT_BIT_MODES:
                raise DataError(f"{path}: mode {img.mode!r} is not an 8-bit image (write 8-bit 'L' PNGs)")
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable or truncated PNG: {e}") from e


def probability_logits(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 grey levels to float32 logits whose sigmoid is value / 255 (see the module docstring)."""
    v = torch.tensor(np.asarray(values, dtype=np.uint8))  # a copy: PIL's arrays are read-only
    return torch.logit(v.float() / 255)


def probability_png(prob: torch.Tensor | np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] to the uint8 grey levels a prediction PNG holds: round(p * 255).

    p = 0.5 exactly is background for M_J (sigmoid > 0.5 is strict), so it gets 127, not round(127.5) = 128:
    the thresholded masks, and so M_J, then survive the round trip exactly.
    """
    p = torch.as_tensor(prob, dtype=torch.float32).clamp(0, 1)
    v = (p * 255).round()
    v = torch.where(p == 0.5, torch.full_like(v, 127), v)
    return v.to(torch.uint8).cpu().numpy()


def write_probability(path: str | Path, prob: torch.Tensor | np.ndarray) -> None:
    """Write one (H, W) probability map as an 8-bit PNG, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(probability_png(prob), mode="L").save(path, format="PNG", compress_level=1)


def _frame_inputs(pred_dir: Path, clip: Clip, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, gt) of one annotated frame; a prediction of another size than its GT is an error."""
    gt = load_mask(clip.mask_paths[k - 1])
    path = prediction_path(pred_dir, clip.id, k)
    pred = load_probability(path)
    if pred.shape != gt.shape:
        raise DataError(
            f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]}, but its GT mask "
            f"{clip.mask_paths[k - 1]} is {gt.shape[1]}x{gt.shape[0]}"
        )
    return probability_logits(pred), torch.from_numpy(gt)


def accumulate_folder(
    pred_dir: str | Path,
    root: str | Path,
    subset: Subset,
    split: str,
    batching: Literal["video", "all"] = "video",
    progress: bool = False,
) -> MetricAccumulator:
    """Score every clip of the split (one video per M_F batch); frame, video and category tables follow."""
    pred_dir = Path(pred_dir)
    clips = read_clips(root, subset, split)
    if not clips:
        raise DataError(f"{root}: no {subset} clips in split {split!r}")
    check_complete(pred_dir, clips)
    from tqdm import tqdm

    acc = MetricAccumulator(batching=batching)
    bad: list[str] = []
    for clip in tqdm(clips, desc="score", unit="video", disable=not progress):
        frames = []
        for k in clip.annotated:
            try:
                frames.append(_frame_inputs(pred_dir, clip, k))
            except DataError as e:  # collect every bad file, then fail once
                bad.append(str(e))
        if len(frames) == len(clip.annotated) and not bad:
            logits, gt = (torch.stack(t) for t in zip(*frames, strict=True))
            acc.add(clip.id, logits, gt, frames=list(clip.annotated), category=clip.category)
    if bad:
        listed = "\n".join(f"  {b}" for b in bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise DataError(f"{pred_dir}: {len(bad)} file(s) cannot be scored:\n{listed}{more}")
    return acc


def score_folder(
    pred_dir: str | Path, root: str | Path, subset: Subset, split: str, progress: bool = False
) -> dict:
    """M_J, M_F (one video per M_F batch), batching, frames, videos of a prediction folder."""
    acc = accumulate_folder(pred_dir, root, subset, split, progress=progress)
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
    }
