"""Key listings of the published AV2T-SAM checkpoints, and deterministic random weights built from them."""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from pipeline.checkpoints import read_key_listing

LISTINGS = Path(__file__).parent / "listings"
ADAPTER_LISTING = LISTINGS / "av2t-sam_evf-sam2_mul_adapter.keys.tsv"
PLAIN_LISTING = LISTINGS / "av2t-sam_evf-sam2_mul.keys.tsv"
# The reference's --evf_version per backbone: its checkpoints are named after it.
EVF_VERSIONS = {"sam2": "evf-sam2", "sam1": "evf-sam"}


def listing_path(adapters: bool, backbone: str = "sam2") -> Path:
    """The key listing of the reference checkpoint on a backbone (sam2 / sam1), with or without adapters."""
    if backbone not in EVF_VERSIONS:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {tuple(EVF_VERSIONS)}")
    return LISTINGS / f"av2t-sam_{EVF_VERSIONS[backbone]}_mul{'_adapter' if adapters else ''}.keys.tsv"


def random_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """A tensor that depends only on (seed, key, shape): the same in every process, file and layout.

    Scales keep a random full-size model numerically tame: matrices ~ N(0, 1/fan_in), 1-d `weight`s (norms,
    layer scales) 1 + N(0, 0.1^2), everything else N(0, 0.02^2).
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    if not dtype.is_floating_point:
        return torch.randint(0, 8, shape, generator=g, dtype=dtype)
    t = torch.randn(shape, generator=g, dtype=torch.float32)
    if len(shape) >= 2:
        fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
        t.mul_(fan_in**-0.5)
    elif key.endswith("weight") and len(shape) == 1:
        t.mul_(0.1).add_(1.0)
    else:
        t.mul_(0.02)
    return t.to(dtype)


def random_state(path: str | Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full state dict for a key listing, every tensor from random_tensor (in listing order)."""
    return {k: random_tensor(k, s, d, seed) for k, s, d in read_key_listing(path)}
