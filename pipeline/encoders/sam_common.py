"""What the SAM slot's two implementations (SAM 2: sam2_image, SAM 1: sam1_image) share: the store's output
names, ImageNet's normalisation, SAM-1's ResizeLongestSide preprocessing (SAM 1's own, and SAM 2's under the
reference's `resize: sam1`), building on the meta device and the random-or-strictly-loaded builder."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.checkpoints import load_strict, require_file, require_materialised, to_empty_keeping_buffers
from pipeline.encoders.base import check_frames, frames_tensor
from pipeline.presets import resolve_weights

IMAGE_EMBED = "image_embed"
TRUNK_IN = "trunk_in"
# SAM2Transforms' normalisation (ImageNet), applied to [0, 1] pixels (SAM 1: the same on the 0-255 scale).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every parameter on the meta device (no memory, no init cost); buffers stay real.

    `with torch.device("meta")` does not work here: Hiera calls `.item()` on a linspace in __init__.
    """
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def random_or_loaded(
    cfg: Any,
    weights_dir: str | Path | None,
    what: str,
    sources: Mapping[str, str],
    make: Callable[..., nn.Module],
    read: Callable[[Path, str], dict[str, torch.Tensor]],
) -> nn.Module:
    """A SAM (1 or 2) of the config: make(cfg) with seeded random weights when cfg.weights is None, else
    cfg.weights (in cfg.weights_format, read by `read`) loaded strictly into make(cfg, empty=True)."""
    path = resolve_weights(cfg.weights, weights_dir)
    if path is None:
        return make(cfg)
    path = require_file(path, what, sources[cfg.weights_format])
    sd = read(path, cfg.weights_format)
    model = to_empty_keeping_buffers(make(cfg, empty=True), "cpu")  # SAM 1's pixel_mean/std keep values
    load_strict(model, sd, path)
    require_materialised(model, path)
    return model


def longest_side_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """SAM-1's ResizeLongestSide target shape: the longest side to size, the other scaled and rounded."""
    scale = size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_frames_sam1(frames: np.ndarray, image_size: int) -> torch.Tensor:
    """SAM-1's ResizeLongestSide on the host: PIL bilinear on uint8, longest side to size -> uint8 (B, h, w, 3)."""
    frames = check_frames(frames)
    h, w = longest_side_shape(frames.shape[1], frames.shape[2], image_size)
    out = np.empty((len(frames), h, w, 3), np.uint8)
    for i, frame in enumerate(frames):
        img = Image.fromarray(frame)
        if img.size != (w, h):  # torchvision's resize returns the PIL image itself when the size matches
            img = img.resize((w, h), Image.BILINEAR)
        out[i] = np.asarray(img)
    return torch.from_numpy(out)


def normalize_frames_sam1(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resized uint8 (B, h, w, 3) -> mean/std on the 0-255 scale, zero padded to S x S (bottom/right)."""
    x = frames_tensor(x)
    h, w = x.shape[1:3]
    mean = torch.tensor([255 * m for m in MEAN], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([255 * s for s in STD], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    out = torch.zeros(len(x), 3, image_size, image_size, device=x.device)
    out[:, :, :h, :w] = (x.permute(0, 3, 1, 2).float() - mean) / std
    return out


def preprocess_frames_sam1(frames: np.ndarray, image_size: int) -> torch.Tensor:
    """SAM-1's ResizeLongestSide (PIL bilinear on uint8) + mean/std on 0-255 + zero pad: AV2T's images_sam."""
    return normalize_frames_sam1(resize_frames_sam1(frames, image_size), image_size)
