"""CLIP image encoder (open_clip): per-frame `encode_image` embeddings, unnormalised.

The `paper` preset is open_clip `ViT-B-32-quickgelu` with OpenAI's CLIP ViT-B/32 weights, read from any of the
files a user may hold: open_clip's HF file (`open_clip_model.safetensors` / `open_clip_pytorch_model.bin`), a
plain OpenAI-style state dict, or OpenAI's TorchScript archive `ViT-B-32.pt`. The `tiny` preset is the same
open_clip `CLIP` class with a small config and seeded random weights.
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from pipeline.checkpoints import CheckpointError, load_strict, read_state_dict, require_file, strip_prefix
from pipeline.encoders.base import Encoder, frames_tensor, seeded
from pipeline.presets import resolve_weights

OUTPUT = "clip"
# 0-dim entries of OpenAI's files that are hyper-parameters, not weights; every loader drops them.
OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


class Config(BaseModel):
    """A preset's clip.json."""

    model_config = ConfigDict(extra="forbid")

    model: str = "ViT-B-32-quickgelu"
    """open_clip architecture name (`open_clip.list_models()`)."""
    model_cfg: dict[str, Any] = {}
    """Entries replacing those of `model`'s open_clip config (embed_dim, quick_gelu, vision_cfg, text_cfg)."""
    pretrained: str | None = None
    """open_clip tag the weights come from ("openai"): sets QuickGELU, the preprocessing and the download hint."""
    weights: str | None = None
    """Checkpoint path relative to the weights folder; None = random weights from `seed`."""
    seed: int = 0


class ClipImageEncoder(Encoder):
    """open_clip CLIP vision tower: uint8 RGB frames -> `encode_image` embedding (not normalised)."""

    name = "clip"
    input = "frames"

    def __init__(self, visual: nn.Module, model: str, arch: dict[str, Any], pretrained: str | None):
        super().__init__()
        self.visual = visual
        self.model_name = model
        self.arch = arch
        self.pretrained = pretrained
        # open_clip attaches the preprocessing to the tower it built, so it cannot drift from the model.
        self.preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(visual))

    def host_input(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 frames as they are."""
        return frames_tensor(batch)

    def device_input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) RGB frames -> normalised float32 (B, 3, S, S), as open_clip's eval transform."""
        return preprocess_frames(x, self.preprocess_cfg)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """CLIP.encode_image(x, normalize=False): the tower's projected embedding."""
        p = next(self.visual.parameters())
        return {OUTPUT: self.visual(x.to(p.device, p.dtype))}

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """One embed_dim vector per frame."""
        return {OUTPUT: (int(self.visual.output_dim),)}

    def config_dict(self) -> dict[str, Any]:
        """open_clip name and the effective architecture config."""
        return {
            "model": self.model_name,
            "arch": self.arch,
            "pretrained": self.pretrained,
            "output": "encode_image",
        }

    def preprocessing_dict(self) -> dict[str, Any]:
        """open_clip's preprocess config of this model, plus how our batched version resizes."""
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in self.preprocess_cfg.items()}
        return cfg | {"input": "uint8 RGB", "resize_impl": "torch uint8 antialiased (PIL-like)"}


# ---------------------------------------------------------------- preprocessing


def _square_size(size: int | tuple[int, ...] | list[int]) -> int:
    """The side of a square target size (open_clip's 'shortest' mode with a non-square target is not done)."""
    if isinstance(size, int):
        return size
    if len(size) != 2 or size[0] != size[1]:
        raise NotImplementedError(f"only square CLIP input sizes are supported, got {size}")
    return int(size[0])


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """Shortest side to `size`, long side truncated, as torchvision's Resize(int) computes it."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def center_crop_box(h: int, w: int, size: int) -> tuple[int, int]:
    """Top-left of torchvision's CenterCrop (Python round, so .5 goes to even)."""
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def preprocess_frames(frames: np.ndarray | torch.Tensor, cfg: Mapping[str, Any]) -> torch.Tensor:
    """Batched open_clip eval transform: resize shortest side, center crop, /255, normalise (on the frames'
    device)."""
    x = frames_tensor(frames).permute(0, 3, 1, 2)
    if cfg.get("resize_mode", "shortest") != "shortest":
        raise NotImplementedError(f"resize_mode {cfg['resize_mode']!r}: only 'shortest' is implemented")
    size = _square_size(cfg["size"])
    h, w = x.shape[-2:]
    oh, ow = resized_shape(h, w, size)
    if (oh, ow) != (h, w):
        # uint8 in, uint8 out, antialiased: torch's PIL-compatible path (a float resize overshoots
        # where PIL clamps between its two passes, by up to ~20 grey levels on sharp edges).
        mode = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        x = F.interpolate(x.contiguous(), size=(oh, ow), mode=mode, antialias=True, align_corners=False)
    top, left = center_crop_box(oh, ow, size)
    # The model takes NCHW: made contiguous while still uint8 (a quarter of the bytes to move), then the
    # elementwise steps run in place (same values as out of place, no new buffers).
    x = x[..., top : top + size, left : left + size].contiguous().float().div_(255)
    mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


# ---------------------------------------------------------------- checkpoints


def _is_torchscript(path: Path) -> bool:
    """Whether the file is a TorchScript archive (a zip with compiled code), like OpenAI's ViT-B-32.pt."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())


def read_clip_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of any supported CLIP file, OpenAI's 0-dim extras still in it."""
    if _is_torchscript(path):
        # torch.load(weights_only=True) refuses TorchScript; jit.load reads it without unpickling Python.
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as e:  # jit raises RuntimeError or its own types
            raise CheckpointError(f"{path}: cannot read TorchScript archive: {e}") from e
    sd = read_state_dict(path)
    if isinstance(sd.get("state_dict"), Mapping):  # an open_clip training checkpoint
        sd = dict(sd["state_dict"])
    if sd and next(iter(sd)).startswith("module."):
        sd = strip_prefix(sd, "module.")
    return sd


def drop_openai_extras(sd: dict[str, torch.Tensor], model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Remove OpenAI's input_resolution/context_length/vocab_size, checking they describe this model."""
    expect = {
        "input_resolution": _square_size(model.visual.image_size),
        "context_length": getattr(model, "context_length", None),
        "vocab_size": getattr(model, "vocab_size", None),
    }
    sd = dict(sd)
    for key in OPENAI_EXTRAS:
        if key in sd and sd[key].ndim == 0:
            value = int(sd.pop(key).item())
            if expect[key] is not None and value != expect[key]:
                raise CheckpointError(f"{path}: {key} = {value}, but the model has {expect[key]}")
    return sd


def load_clip_weights(model: nn.Module, path: Path) -> None:
    """Load a CLIP file strictly into the whole model (text tower too, so every key is checked)."""
    sd = drop_openai_extras(read_clip_checkpoint(path), model, path)
    load_strict(model, sd, path)


# ---------------------------------------------------------------- building


def _tag_cfg(model: str, tag: str | None) -> dict[str, Any]:
    """open_clip's pretrained config for (model, tag), or {}."""
    if tag is None:
        return {}
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        raise ValueError(f"open_clip has no pretrained tag {tag!r} for {model!r}")
    return cfg


def weights_source(model: str, tag: str | None) -> str:
    """Where the official file comes from, from open_clip's own registry."""
    cfg = _tag_cfg(model, tag)
    hub = cfg.get("hf_hub", "").rstrip("/")
    parts = [f"HF {hub} (open_clip_model.safetensors or open_clip_pytorch_model.bin)"] if hub else []
    if cfg.get("url"):
        parts.append(f"{Path(cfg['url']).name} from {cfg['url']}")
    return " or ".join(parts) or f"open_clip {model} weights"


def effective_arch(cfg: Config) -> dict[str, Any]:
    """The open_clip model config create_model will build: built-in, tag's QuickGELU, then overrides."""
    arch = open_clip.get_model_config(cfg.model)
    if arch is None:
        raise ValueError(f"unknown open_clip model {cfg.model!r}")
    if _tag_cfg(cfg.model, cfg.pretrained).get("quick_gelu"):
        arch["quick_gelu"] = True
    return arch | cfg.model_cfg


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """Hide open_clip's 'initialized randomly' warning: we load weights right after."""

    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def create_clip(cfg: Config) -> nn.Module:
    """The whole open_clip CLIP, seeded random weights, preprocessing config attached."""
    tag = _tag_cfg(cfg.model, cfg.pretrained)
    with seeded(cfg.seed), _quiet_random_init_warning():
        return open_clip.create_model(
            cfg.model,
            pretrained=None,  # never download; files are loaded below, strictly
            force_quick_gelu=bool(tag.get("quick_gelu")),
            force_preprocess_cfg={
                k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag
            },
            **cfg.model_cfg,
        )


def build(cfg: Config, weights_dir: str | Path | None = None) -> ClipImageEncoder:
    """The encoder of a preset: open_clip CLIP, weights loaded strictly when the preset names a file."""
    path = resolve_weights(cfg.weights, weights_dir)
    if path is not None:  # fail on a missing file before spending seconds on random init
        what = f"CLIP {cfg.model}" + (f" ({cfg.pretrained})" if cfg.pretrained else "")
        path = require_file(path, what, weights_source(cfg.model, cfg.pretrained))
    clip = create_clip(cfg)
    if path is not None:
        load_clip_weights(clip, path)
    # Only the vision tower makes features; the text tower was loaded only to check the file strictly.
    enc = ClipImageEncoder(clip.visual, cfg.model, effective_arch(cfg), cfg.pretrained)
    return enc.eval().requires_grad_(False)
