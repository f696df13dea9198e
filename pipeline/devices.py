"""Which device a run uses (`auto` is the GPU when there is one), and torch's CPU threads for a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' is the GPU when there is one."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's CPU threads set to n (0: left as is) for the block, the caller's setting given back after.

    CPU kernels reduce in a thread-count-dependent order: a fixed count reproduces features bit for bit.
    """
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
