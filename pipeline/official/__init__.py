"""The published AV2T-SAM: its checkpoint layout, its preprocessing, and our model with its weights."""

from pipeline.official.checkpoint import load_reference_state, read_reference, save_reference, to_reference
from pipeline.official.model import empty_model, from_reference_state, load_av2t_sam

__all__ = [
    "empty_model",
    "from_reference_state",
    "load_av2t_sam",
    "load_reference_state",
    "read_reference",
    "save_reference",
    "to_reference",
]
