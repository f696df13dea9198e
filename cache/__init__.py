"""The Zarr v3 feature store: one group per (subset, split), one sub-group per encoder fingerprint."""

from cache.errors import Damage, FingerprintMismatch, IndexMismatch, StoreDamaged, StoreError
from cache.index import SplitIndex
from cache.specs import ArraySpec
from cache.store import EncoderGroup, FeatureStore, SplitGroup
from pipeline.provenance import fingerprint

__all__ = [
    "ArraySpec",
    "Damage",
    "EncoderGroup",
    "FeatureStore",
    "FingerprintMismatch",
    "IndexMismatch",
    "SplitGroup",
    "SplitIndex",
    "StoreDamaged",
    "StoreError",
    "fingerprint",
]
