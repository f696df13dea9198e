"""Frame and mask reading: fully decoded PNGs, with errors that name the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from pipeline.data.clips import DataError


def _guard_truncated_flag() -> None:
    """Undo a global LOAD_TRUNCATED_IMAGES set by someone else: it would hide truncated PNGs."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set; reset to False so truncated PNGs are detected",
            RuntimeWarning,
            stacklevel=3,
        )


def _decode(path: str | Path, mode: str) -> np.ndarray:
    """Fully decode an image and convert it to `mode`; a missing, garbage or truncated file raises DataError."""
    _guard_truncated_flag()
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: not found")
    try:
        with Image.open(p) as img:
            # Image.open only reads the header; load() decodes all pixel data, which is where a
            # truncated file fails.
            img.load()
            # Convert inside the `with`: closing the file invalidates the decoded image.
            return np.asarray(img.convert(mode))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL reports bad data as OSError (incl. UnidentifiedImageError), SyntaxError (broken PNG
        # chunks) or ValueError (bad header fields).
        raise DataError(f"{path}: unreadable or truncated PNG: {e}") from e


def load_frame(path: str | Path) -> np.ndarray:
    """A video frame as uint8 (H, W, 3) RGB."""
    return _decode(path, "RGB").astype(np.uint8, copy=False)


def load_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask as bool (H, W); foreground is any pixel > 0 in 'L' mode (AVSBench uses 0/255)."""
    # Converting covers the '1', 'P', 'RGB' and 'LA' variants some tools write instead of plain 'L'.
    return _decode(path, "L") > 0
