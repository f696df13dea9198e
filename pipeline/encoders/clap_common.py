"""What the two implementations of the "clap" encoder share (laion-clap's CLAP and Microsoft's msclap).

Both build an `HTSAT_Swin_Transformer` (each package vendors its own copy) from a package whose __init__ is
not run, and both read training checkpoints that hold numpy scalars next to the weights.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from pipeline.checkpoints import CheckpointError, read_state_dict
from pipeline.encoders.base import Encoder

# ---------------------------------------------------------------- the packages


@cache
def package_dir(package: str, requirement: str) -> Path:
    """An installed package's folder, found without importing it (`requirement` goes in the install hint)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = requirement.split("==")[0]
        raise ImportError(f"{dist} is not installed (pip install --no-deps {requirement})")
    return Path(next(iter(spec.submodule_search_locations)))


def import_from(name: str, folder: Path) -> ModuleType:
    """Import module `name`, checking that it is the copy inside `folder` (not another one on sys.path)."""
    mod = importlib.import_module(name)
    if not Path(mod.__file__).resolve().is_relative_to(folder.resolve()):
        raise ImportError(f"{name} resolved to {mod.__file__}, not the copy in {folder}")
    return mod


# ---------------------------------------------------------------- HTSAT sizes


class HtsatSizes(BaseModel):
    """Arguments of `HTSAT_Swin_Transformer` for a custom (non-released) size."""

    model_config = ConfigDict(extra="forbid")

    embed_dim: int = Field(gt=0)
    depths: list[int] = Field(min_length=1)
    num_heads: list[int] = Field(min_length=1)
    window_size: int = Field(8, gt=0)
    spec_size: int = Field(256, gt=0)
    patch_size: int = Field(4, gt=0)
    patch_stride: tuple[int, int] = (4, 4)

    @model_validator(mode="after")
    def _check(self) -> HtsatSizes:
        """Heads must divide every stage width, one head count per stage."""
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        for i, h in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % h:
                raise ValueError(f"stage {i}: width {self.embed_dim * 2**i} not divisible by {h} heads")
        return self

    def htsat_kwargs(self) -> dict[str, Any]:
        """These sizes as `HTSAT_Swin_Transformer` keyword arguments (the class count and config apart)."""
        return {
            "spec_size": self.spec_size,
            "patch_size": self.patch_size,
            "patch_stride": tuple(self.patch_stride),
            "embed_dim": self.embed_dim,
            "depths": list(self.depths),
            "num_heads": list(self.num_heads),
            "window_size": self.window_size,
        }


def built_sizes(htsat: nn.Module) -> dict[str, Any]:
    """The sizes of a built `HTSAT_Swin_Transformer`, as the encoders' config_dict records them."""
    return {
        "embed_dim": htsat.embed_dim,
        "depths": list(htsat.depths),
        "num_heads": list(htsat.num_heads),
        "window_size": htsat.window_size,
        "spec_size": htsat.spec_size,
        "patch_size": htsat.patch_size,
        "patch_stride": list(htsat.patch_stride),
    }


# ---------------------------------------------------------------- the encoder


class ClapEncoder(Encoder):
    """Either implementation: the store and the head see an audio encoder called "clap"."""

    name = "clap"
    input = "audio"

    def __init__(self, cfg: BaseModel):
        super().__init__()
        self.cfg = cfg
        self.stereo = cfg.stereo


# ---------------------------------------------------------------- checkpoints


def numpy_scalar_globals() -> list:
    """Globals a training checkpoint needs beyond plain tensors, all data-only.

    LAION's cosine scheduler sets the optimizer's lr to a numpy float64, so the saved 'optimizer' entry
    holds numpy scalars. weights_only=True refuses them by default; allowing only numpy's scalar and dtype
    reconstructors (under the numpy 1 and numpy 2 module names) keeps the load free of code execution.
    """
    scalar = np.core.multiarray.scalar if not hasattr(np, "_core") else np._core.multiarray.scalar
    dtypes = [
        type(np.dtype(t))
        for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
    ]
    return [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *dtypes,
    ]


def read_training_checkpoint(path: Path) -> Mapping[str, Any]:
    """A checkpoint's top-level object, read with weights_only=True, numpy scalars allowed."""
    with torch.serialization.safe_globals(numpy_scalar_globals()):
        return read_state_dict(path)


def tensors_only(sd: Mapping[str, Any], path: Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict `sd` as a dict, after checking that every entry is a tensor."""
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: non-tensor entries in the {what}: {bad[:8]}")
    return dict(sd)
