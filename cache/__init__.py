"""The Zarr v3 feature store: one group per (subset, split), one sub-group per encoder fingerprint."""

from cache.index import SplitIndex
from cache.store import (
    ArraySpec,
    EncoderGroup,
    FeatureStore,
    FingerprintMismatch,
    IndexMismatch,
    SplitGroup,
    StoreError,
)
from pipeline.provenance import fingerprint

__all__ = [
    "ArraySpec",
    "EncoderGroup",
    "FeatureStore",
    "FingerprintMismatch",
    "IndexMismatch",
    "SplitGroup",
    "SplitIndex",
    "StoreError",
    "fingerprint",
]
