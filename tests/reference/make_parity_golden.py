"""Pack the reference run's outputs into av2t_sam_parity.npz / av2t_sam1_parity.npz (see README.md here).

usage: PYTHONPATH=tests python tests/reference/make_parity_golden.py REF_ADAPTER.pt REF_PLAIN.pt [sam2|sam1]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from official_inputs import GOLDEN, B, T


def main(adapter: str, plain: str, backbone: str = "sam2") -> None:
    out = {}
    for name, path in (("adapter", adapter), ("plain", plain)):
        r = torch.load(path, map_location="cpu", weights_only=False)
        out[f"logits_{name}"] = r["logits"].float().reshape(B, T, 224, 224).numpy()
        out[f"iou_{name}"] = r["iou_pred"].float().numpy()
        out[f"choice_{name}"] = r["chosen_index"].reshape(-1).numpy().astype(np.int64)
    np.savez_compressed(GOLDEN[backbone], **out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
