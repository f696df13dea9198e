"""Deterministic store contents shared by the store tests and the writer subprocess."""

from __future__ import annotations

import numpy as np

from cache import ArraySpec, FeatureStore, SplitIndex

PROVENANCE = {
    "encoder": "fake",
    "config": {"width": 8},
    "weights": "sha256:0",
    "preprocessing": {},
    "versions": {},
}
ARRAYS = {"emb": ArraySpec((8,), "float16"), "fmap": ArraySpec((4, 16, 16), "float16", "blosc-lz4")}


def make_index(n_videos: int = 13) -> SplitIndex:
    """Five frames per video; names like the real ones, some starting with '-'."""
    rows = [
        (f"{'-' if v % 3 == 0 else 'v'}id{v:04d}", k, "dog_barking", True)
        for v in range(n_videos)
        for k in range(1, 6)
    ]
    return SplitIndex.from_rows(rows)


def block_data(enc, b: int) -> dict[str, np.ndarray]:
    """Features of block b as a pure function of the row numbers."""
    sl = enc.split.block_slice(b)
    rows = np.arange(sl.start, sl.stop)
    rng = np.random.default_rng(rows[0])
    return {
        "emb": (rows[:, None] + np.linspace(0, 1, 8)[None]).astype(np.float16),
        "fmap": rng.standard_normal((len(rows), 4, 16, 16)).astype(np.float16),
    }


def open_encoder(url: str, block_rows: int = 4):
    """Create or open the test group and encoder."""
    g = FeatureStore(url).require_split("s4", "test", make_index(), block_rows=block_rows)
    return g.require_encoder("fake", PROVENANCE, ARRAYS)
