"""Storage dtypes of feature arrays: float16/float32 casts, and int8 with a float32 scale per row and channel.

int8 (`quantize="int8"`) applies to the (C, H, W) feature maps, the bulk of a store (SAM 2's levels, trunk
activations): symmetric, per row and channel, scale = max|x| / 127 over H x W, q = round(x / scale). The
scale lives in a companion array `<name>_scale` (rows, C) float32; readers carry it as one more field and
`dequantize` turns the pair back into floats on the device, after the (halved) copy. Smaller arrays
(CLIP/CLAP vectors, BEiT-3 patches) keep the float dtype: they are a few percent of the bytes.
Everything here is torch, so extraction casts on the device before the copy back, and readers dequantise
on the device after it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from cache.specs import (
    QUANTIZE,
    SCALE_SUFFIX,
    ArraySpec,
    Quantize,
    quantizable,
    scale_name,
    scale_names,
    storage_specs,
)

QMAX = 127
# The storage specs (what an encoder's outputs are stored as, int8 included) are cache.specs'; named here too.
__all__ = [
    "QMAX",
    "QUANTIZE",
    "SCALE_SUFFIX",
    "Quantize",
    "dequantize",
    "nonfinite_row_flags",
    "quantizable",
    "quantize_int8",
    "scale_name",
    "scale_names",
    "storage_specs",
    "to_storage",
    "torch_dtype",
]


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, ...) floats -> int8 values and (B, C) float32 scales (max|x| / 127 per row and channel)."""
    x = x.float()
    amax = x.abs().flatten(2).amax(2)
    scale = amax / QMAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero
    q = torch.round(x / safe.reshape(*safe.shape, *([1] * (x.ndim - 2)))).clamp_(-QMAX, QMAX)
    return q.to(torch.int8), scale


def to_storage(
    outputs: Mapping[str, torch.Tensor], specs: Mapping[str, ArraySpec]
) -> dict[str, torch.Tensor]:
    """An encoder's outputs in their storage dtypes (on their device): casts, or int8 values plus scales."""
    out = {}
    for name, y in outputs.items():
        spec = specs[name]
        if spec.dtype == "int8" and scale_name(name) in specs:
            out[name], out[scale_name(name)] = quantize_int8(y)
        else:
            out[name] = y.to(torch_dtype(spec.dtype))
    return out


def nonfinite_row_flags(stored: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per row, whether any stored float value is inf or nan (a float16 cast of a large value included)."""
    bad = None
    for y in stored.values():
        if y.is_floating_point():
            b = ~torch.isfinite(y).flatten(1).all(1)
            bad = b if bad is None else bad | b
    if bad is None:
        n = len(next(iter(stored.values()))) if stored else 0
        return torch.zeros(n, dtype=torch.bool)
    return bad


def dequantize(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch with every int8 field that has a `_scale` field turned back into float32 (scales dropped)."""
    out = {}
    for name, x in batch.items():
        if name.endswith(SCALE_SUFFIX) and name[: -len(SCALE_SUFFIX)] in batch:
            continue
        s = batch.get(scale_name(name))
        if s is not None and x.dtype == torch.int8:
            x = x.float() * s.float().reshape(*s.shape, *([1] * (x.ndim - s.ndim)))
        out[name] = x
    return out


def torch_dtype(dtype: str | np.dtype) -> torch.dtype:
    """The torch dtype of a numpy dtype (or its name)."""
    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
