"""The Zarr v3 feature store: one group per (subset, split), one sub-group per encoder fingerprint."""

from cache.fingerprint import fingerprint
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
