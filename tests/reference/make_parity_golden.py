"""Pack the reference run's outputs into av2t_sam_parity.npz (see README.md in this folder).

usage: python tests/reference/make_parity_golden.py REF_ADAPTER.pt REF_PLAIN.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from official_inputs import B, T


def main(adapter: str, plain: str) -> None:
    out = {}
    for name, path in (("adapter", adapter), ("plain", plain)):
        r = torch.load(path, map_location="cpu", weights_only=False)
        out[f"logits_{name}"] = r["logits"].float().reshape(B, T, 224, 224).numpy()
        out[f"iou_{name}"] = r["iou_pred"].float().numpy()
        out[f"choice_{name}"] = r["chosen_index"].reshape(-1).numpy().astype(np.int64)
    np.savez_compressed(Path(__file__).with_name("av2t_sam_parity.npz"), **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
