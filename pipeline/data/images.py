"""Frame and mask reading: fully decoded images, with errors that name the file."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFile

from pipeline.data.clips import Clip, DataError

T = TypeVar("T")


def _guard_truncated_flag() -> None:
    """Undo a global LOAD_TRUNCATED_IMAGES set by someone else: it would hide truncated PNGs."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set; reset to False so truncated PNGs are detected",
            RuntimeWarning,
            stacklevel=3,
        )


def _open(path: str | Path, read: Callable[[Image.Image], T]) -> T:
    """Fully decode an image and return read(image); a missing, garbage or truncated file raises DataError."""
    _guard_truncated_flag()
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: not found")
    try:
        with Image.open(p) as img:
            # Image.open only reads the header; load() decodes all pixel data, which is where a
            # truncated file fails.
            img.load()
            # Read inside the `with`: closing the file invalidates the decoded image.
            return read(img)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL reports bad data as OSError (incl. UnidentifiedImageError), SyntaxError (broken PNG
        # chunks) or ValueError (bad header fields).
        kind = "PNG" if p.suffix.lower() == ".png" else "image"
        raise DataError(f"{path}: unreadable or truncated {kind}: {e}") from e


def _decode(path: str | Path, mode: str) -> np.ndarray:
    """Fully decode an image and convert it to `mode`."""
    return _open(path, lambda img: np.asarray(img.convert(mode)))


def load_frame(path: str | Path) -> np.ndarray:
    """A video frame as uint8 (H, W, 3) RGB."""
    return _decode(path, "RGB").astype(np.uint8, copy=False)


# ---------------------------------------------------------------- masks
#
# Foreground is what a person sees drawn on black: a non-zero value in any colour channel, where the pixel is
# not fully transparent.
#   '1'                      the bit.
#   'L', 'I;16', 'I'         value > 0 (0/255 and 0/1 masks alike; any other value > 0 too).
#   'P'                      palette index > 0, as the official AVSBench MS3 loader reads it (convert('P'),
#                            then the index); the palette must agree: index 0 drawn black or transparent, every
#                            other index used drawn in a colour. A palette that disagrees is refused.
#   'RGB'                    any channel > 0 (red on black is foreground).
#   'LA', 'RGBA'             the colour rule, and fully transparent pixels (alpha 0) are background. When every
#                            colour value is 0, the foreground lies in alpha only: alpha > 0 is foreground (and
#                            `data check` notes the file).
# Every other mode ('F' float, 'CMYK', 'YCbCr', ...) is refused. The official 0/255 'L' or 'P' masks read as
# value > 0, exactly as before (and as the official loaders' convert('1') / convert('P') read them).

MASK_MODES = ("1", "L", "P", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I")


@dataclass(frozen=True)
class MaskRead:
    """A decoded mask, the convention it was read by, and whether its foreground was in alpha only."""

    mask: np.ndarray  # bool (H, W)
    convention: str  # e.g. "0/255 grayscale (L)", "RGBA (alpha)"
    alpha_only: bool = False


def _grey_convention(values: np.ndarray, mode: str) -> str:
    """The label of a single-channel mask from the values it holds."""
    if mode != "L":
        return f"16/32-bit grayscale ({mode})"
    present = set(np.unique(values).tolist())
    if present <= {0, 255}:
        return "0/255 grayscale (L)"
    if present <= {0, 1}:
        return "0/1 grayscale (L)"
    return "grayscale with other values (L, > 0 is foreground)"


def _palette_mask(path: str | Path, img: Image.Image) -> MaskRead:
    """P mode: index > 0 is foreground; refused when the palette draws it otherwise."""
    index = np.asarray(img)
    rgba = np.asarray(img.convert("RGBA"))
    drawn = (rgba[..., :3] != 0).any(axis=-1) & (rgba[..., 3] > 0)
    fg = index != 0
    if not np.array_equal(drawn, fg):
        bad = np.unique(index[drawn != fg]).tolist()
        raise DataError(
            f"{path}: palette ('P') mask whose palette disagrees with its indices (index 0 is background, every "
            f"other index foreground, but indices {bad[:10]} are drawn otherwise); save it as a 0/255 "
            "grayscale ('L') PNG"
        )
    return MaskRead(fg, "palette (P)")


def _colour_mask(img: Image.Image) -> MaskRead:
    """LA / RGB / RGBA: any colour channel > 0; alpha 0 is background; alpha only when the colour is all 0."""
    arr = np.asarray(img)
    has_alpha = img.mode in ("LA", "RGBA")
    colour = arr[..., :-1] if has_alpha else arr
    value = (colour != 0).any(axis=-1)
    if not has_alpha:
        return MaskRead(value, img.mode)
    visible = arr[..., -1] > 0
    if value.any():
        label = "colour" if visible.all() else "colour, transparent = background"
        return MaskRead(value & visible, f"{img.mode} ({label})")
    if visible.all():  # all black, all opaque: an empty mask
        return MaskRead(value, f"{img.mode} (colour)")
    return MaskRead(visible, f"{img.mode} (alpha)", alpha_only=bool(visible.any()))


def _read_mask(path: str | Path, img: Image.Image) -> MaskRead:
    if img.mode not in MASK_MODES:
        raise DataError(
            f"{path}: mask mode {img.mode!r} is not read as a mask (we read {', '.join(MASK_MODES)}); "
            "save it as a 0/255 grayscale ('L') PNG"
        )
    if img.mode == "1":
        return MaskRead(np.asarray(img, dtype=bool), "binary (1)")
    if img.mode == "P":
        return _palette_mask(path, img)
    if img.mode in ("LA", "RGB", "RGBA"):
        return _colour_mask(img)
    values = np.asarray(img)
    return MaskRead(values != 0, _grey_convention(values, img.mode))


def read_mask(path: str | Path) -> MaskRead:
    """A mask, the convention it was read by (see the rules above) and whether its foreground is alpha only."""
    return _open(path, lambda img: _read_mask(path, img))


def load_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask as bool (H, W): foreground is a non-zero value (see the rules above)."""
    return read_mask(path).mask


# ---------------------------------------------------------------- colour masks (AVSBench-semantic)
#
# One palette colour per class; foreground is every pixel whose RGB colour differs from the background
# class's colour (taken from label2idx.json by the caller, never assumed black). Alpha, if any, is dropped.


def load_mask_colours(path: str | Path) -> np.ndarray:
    """A colour mask as uint8 (H, W, 3) RGB."""
    return _decode(path, "RGB")


def colour_foreground(rgb: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Bool (H, W): pixels whose colour is not the background colour."""
    return (rgb != np.asarray(background, dtype=rgb.dtype)).any(axis=-1)


def load_colour_mask(path: str | Path, background: tuple[int, int, int]) -> np.ndarray:
    """A colour mask as bool (H, W): foreground is every colour but `background`."""
    return colour_foreground(load_mask_colours(path), background)


PROTOCOL_SIZE = 224  # AVSBench's ground truth, predictions and metrics: 224 x 224


def load_clip_mask(clip: Clip, k: int) -> np.ndarray:
    """The GT mask of a clip's annotated frame k (1-based) as bool (H, W) at its own size, read by the clip's
    mask kind."""
    path = _clip_mask_path(clip, k)
    if clip.mask_kind == "colour":
        return load_colour_mask(path, _background(clip))
    return load_mask(path)


def protocol_mask(clip: Clip, k: int, size: int = PROTOCOL_SIZE) -> np.ndarray:
    """The GT mask of frame k as bool (size, size), as the release's official loader reads it.

    AVSBench-semantic (colour masks): the AVSS loader's way: the PNG as PIL RGB, resized to size x size
    with PIL NEAREST, then every pixel whose colour is not the background's. AVSBench v1 (binary masks):
    read at their own size (the release's are 224 x 224 and the official loader never resizes them); a
    mask of another size is nearest-resized by torch (F.interpolate), as av2t has always done.
    """
    path = _clip_mask_path(clip, k)
    if clip.mask_kind == "colour":
        background = _background(clip)

        def resized(img: Image.Image) -> np.ndarray:
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.NEAREST)
            return np.asarray(rgb)

        return colour_foreground(_open(path, resized), background)
    return nearest_resize(load_mask(path), size)


def nearest_resize(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool (H, W) mask at size x size by torch's nearest interpolation (unchanged when it has that size)."""
    if mask.shape == (size, size):
        return mask
    import torch  # only here: the data layer's readers stay free of torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None, None].float()
    return F.interpolate(x, size=(size, size), mode="nearest")[0, 0].numpy() > 0


def _clip_mask_path(clip: Clip, k: int) -> Path:
    """The mask file of frame k, or the DataError of a frame without one."""
    path = clip.mask_paths[k - 1]
    if path is None:
        raise DataError(f"{clip.frame_paths[k - 1]}: frame {k} of {clip.id} has no GT mask")
    return path


def _background(clip: Clip) -> tuple[int, int, int]:
    """A colour-masked clip's background colour."""
    if clip.mask_background is None:
        raise ValueError(f"clip {clip.id}: colour masks need mask_background")
    return clip.mask_background
