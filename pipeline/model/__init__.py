"""The AV2T-SAM model: fusion head, pseudo-token MLP, adapters, mask decoder, and its loss.

Names are resolved on first use, so `pipeline.model.config` (pydantic only) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AV2TSAM": "pipeline.model.av2t_sam",
    "HeadConfig": "pipeline.model.config",
    "head_config": "pipeline.model.config",
    "build_model": "pipeline.model.build",
    "segmentation_loss": "pipeline.model.loss",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import the defining module of a public name when it is first asked for."""
    if name not in _WHERE:
        raise AttributeError(f"module 'pipeline.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
