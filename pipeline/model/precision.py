"""Compute precision of head training and evaluation: fp32, or bf16 autocast (with TF32 for what stays fp32).

`precision` is "auto" (bf16 on CUDA, fp32 elsewhere), "fp32" or "bf16". Under bf16 the forward runs in
`torch.autocast(device.type, dtype=torch.bfloat16)`: BEiT-3, the adapters and trunk suffix and the mask
decoder compute their matmuls / convs in bf16, the weights stay fp32 and so do the features (the store
keeps its dtype; they are cast on the device). Callers cast the logits to fp32 before the loss and the
metrics. On CUDA, bf16 also turns TF32 on for the matmuls and convolutions that stay fp32; fp32 leaves
TF32 as it is (the published-weights parity test runs fp32 and must match bit for bit on the CPU).
CPU autocast supports bf16 too, which is how the CPU tests check bf16 against fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device | str) -> Literal["fp32", "bf16"]:
    """ "fp32" or "bf16": auto is bf16 on CUDA and fp32 on any other device."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision  # type: ignore[return-value]


def enable_tf32(device: torch.device | str) -> None:
    """TF32 matmuls and cuDNN convolutions on CUDA (for the ops autocast leaves in fp32)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """bf16 autocast on the device (TF32 on CUDA) for "bf16", nothing for "fp32" ("auto" is resolved here)."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "fp32":
        yield
        return
    enable_tf32(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield


def as_fp32(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A forward's outputs with every floating tensor in float32 (losses and metrics are computed in fp32)."""
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in out.items()}
