"""Ground-truth masks as a store "encoder", so training reads masks from the store with the features."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from pipeline.data.clips import DataError
from pipeline.encoders.base import Encoder

# How AVSBench-semantic's official loader (AVSS) brings a colour mask to the protocol's size.
COLOUR_RULE = "PIL RGB, resized to size x size with PIL NEAREST, then colour != background (AVSS loader)"


class Config(BaseModel):
    """Masks are stored at the size the metrics use (AVSBench: 224x224)."""

    model_config = ConfigDict(extra="forbid")
    size: int = 224
    masks: Literal["binary", "colour"] = "binary"
    """The release's mask kind: binary (AVSBench v1) or colour (AVSBench-semantic; set by extraction)."""


class GtMaskEncoder(Encoder):
    """0/1 uint8 masks at `size`; rows without a GT mask (S4 train frames 2..5) are all zero."""

    name: ClassVar[str] = "gt"
    input: ClassVar[Literal["masks"]] = "masks"

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # gives the module a device

    @property
    def device(self) -> torch.device:
        """Where outputs are produced."""
        return self._anchor.device

    def host_input(self, batch: np.ndarray) -> torch.Tensor:
        """Bool (B, H, W) masks as uint8."""
        return torch.from_numpy(np.asarray(batch, dtype=np.uint8))

    def device_input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 masks, nearest-resized to size when they differ."""
        if x.shape[1:] != (self.cfg.size, self.cfg.size):
            x = F.interpolate(x[:, None].float(), size=(self.cfg.size,) * 2, mode="nearest")[:, 0].to(
                torch.uint8
            )
        return x

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The masks themselves."""
        return {"mask": x}

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """One (size, size) mask per row."""
        return {"mask": (self.cfg.size, self.cfg.size)}

    def output_dtypes(self) -> dict[str, str]:
        """Masks stay uint8 whatever the feature dtype."""
        return {"mask": "uint8"}

    def config_dict(self) -> dict[str, Any]:
        """The mask size."""
        return {"size": self.cfg.size}

    def preprocessing_dict(self) -> dict[str, Any]:
        """How masks are read (v1's entry is unchanged since the first stores, so their fingerprint holds)."""
        if self.cfg.masks == "colour":
            return {"foreground": "colour != background", "resize": COLOUR_RULE}
        return {"foreground": "pixel > 0 after 'L'", "resize": "nearest"}

    def weights_digest(self) -> str:
        """No weights."""
        return "none"


def build(cfg: Config, weights_dir: str | Path | None = None) -> GtMaskEncoder:
    """The mask 'encoder'."""
    return GtMaskEncoder(cfg)


class StaleGroundTruth(DataError):
    """A store's ground truth was not read the way its release's official loader reads it."""


def ground_truth_group(groups: Sequence[Any], masks: str, where: str, subset: str) -> Any | None:
    """Of a split's encoder sub-groups, the 'gt' one read by today's rule for the release's mask kind.

    None when the split has no 'gt' features (the caller's usual error names that). Binary masks: the one
    'gt' group, as ever. Colour masks: a 'gt' group stored before the AVSS rule (torch nearest) is refused,
    naming the command that re-extracts it.
    """
    gts = [g for g in groups if g.name == "gt"]
    if masks != "colour" or not gts:
        return None
    good = [g for g in gts if g.provenance.get("preprocessing", {}).get("resize") == COLOUR_RULE]
    if good:
        return good[0]
    raise StaleGroundTruth(
        f"{where}: its ground truth ('gt' {gts[0].fingerprint}) was resized by torch's nearest, not as "
        "AVSBench-semantic's official loader reads it (PIL NEAREST of the colour mask to 224x224), so scores "
        f"would differ from the official ones; re-extract it (the other features are kept): av2t extract "
        f"--root <AVSBench-semantic root> --subset {subset} --encoders gt --store <this store> "
        "--allow-other-fingerprints"
    )
