"""AV2T's adapters: one small MLP per adapted block (Hiera or ViT), its output added to that block's input."""

from __future__ import annotations

import torch
from torch import nn


class AdapterBank(nn.Module):
    """`lightweight_mlp_{i}` = Linear(d_in, hidden) -> GELU -> Linear(hidden, C_i) for blocks i in `widths`.

    Named and initialised as the reference's AudioPromptGenerator (truncated normal std .02, zero biases), so
    its `audio_prompt_generator.*` keys load as they are.
    """

    def __init__(self, d_in: int, hidden: int, widths: dict[int, int]):
        super().__init__()
        self.blocks = sorted(widths)
        for i in self.blocks:
            mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, widths[i]))
            for m in (mlp[0], mlp[2]):
                _init_linear(m)
            self.add_module(f"lightweight_mlp_{i}", mlp)

    def forward(self, fused: torch.Tensor) -> dict[int, torch.Tensor]:
        """(B, d_in) -> {block i: (B, C_i)}."""
        return {i: getattr(self, f"lightweight_mlp_{i}")(fused) for i in self.blocks}


class SharedAdapterBank(nn.Module):
    """AV2T's SAM 1 adapters: `lightweight_mlp_{i}` = Linear(d_in, hidden) -> GELU per block, one `shared_mlp`.

    `shared_mlp` = Linear(hidden, C) maps every block's hidden vector to the ViT's width C; named, ordered and
    initialised as the reference's AudioPromptGenerator for depth 32 (truncated normal std .02, zero biases).
    """

    def __init__(self, d_in: int, hidden: int, blocks: list[int], width: int):
        super().__init__()
        self.blocks = sorted(blocks)
        for i in self.blocks:
            mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU())
            _init_linear(mlp[0])
            self.add_module(f"lightweight_mlp_{i}", mlp)
        self.shared_mlp = nn.Linear(hidden, width)
        _init_linear(self.shared_mlp)

    def forward(self, fused: torch.Tensor) -> dict[int, torch.Tensor]:
        """(B, d_in) -> {block i: (B, C)}."""
        return {i: self.shared_mlp(getattr(self, f"lightweight_mlp_{i}")(fused)) for i in self.blocks}


def _init_linear(m: nn.Linear) -> None:
    """The reference's init of every adapter Linear: truncated normal (std .02) weights, zero biases."""
    nn.init.trunc_normal_(m.weight, std=0.02)
    nn.init.zeros_(m.bias)
