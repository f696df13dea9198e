"""AV2T's adapters: one small MLP per adapted Hiera block, its output added to that block's input."""

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
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            self.add_module(f"lightweight_mlp_{i}", mlp)

    def forward(self, fused: torch.Tensor) -> dict[int, torch.Tensor]:
        """(B, d_in) -> {block i: (B, C_i)}."""
        return {i: getattr(self, f"lightweight_mlp_{i}")(fused) for i in self.blocks}
