"""Make torchvision importable on a CPU torch that its compiled ops were not built for."""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

_LIB: torch.library.Library | None = None  # kept alive: dropping it unregisters the schemas


def _compiled_ops_loadable() -> bool:
    """Whether torchvision's own _C extension loads against this torch."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # no torchvision: nothing to fix
    folder = os.path.dirname(spec.origin)
    lib = next((f for f in os.listdir(folder) if f.startswith("_C.") and f.endswith((".so", ".pyd"))), None)
    if lib is None:
        return False
    try:
        torch.ops.load_library(os.path.join(folder, lib))
    except OSError:
        return False
    return True


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression in plain torch (only for the CPU fallback)."""
    order = scores.argsort(descending=True)
    keep = []
    while order.numel():
        i = order[0]
        keep.append(i)
        if order.numel() == 1:
            break
        rest = boxes[order[1:]]
        lt = torch.maximum(boxes[i, :2], rest[:, :2])
        rb = torch.minimum(boxes[i, 2:], rest[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        iou = inter / (area(boxes[i]) + area(rest) - inter)
        order = order[1:][iou <= iou_threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)


def ensure_torchvision() -> None:
    """Register torchvision::nms/qnms schemas when its compiled ops cannot load (CUDA wheel on CPU torch).

    Without them `import torchvision` (and so open_clip and sam2) raises "operator torchvision::nms does
    not exist". A user with a matching torch/torchvision pair is left untouched.
    """
    global _LIB
    if _LIB is not None or "torchvision" in sys.modules or _compiled_ops_loadable():
        return
    if torch._C._jit_get_schemas_for_operator("torchvision::nms"):
        return  # someone registered them already
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms, "CPU")
    _LIB = lib


ensure_torchvision()
