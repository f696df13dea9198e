"""A Ref-AVS split of the store in memory, for training and scoring at the (expression, frame) level.

The per-video frame features of every frame row the expression table points at (`frame_rows`: read once, nothing
copied in the store), and per expression its text tokens (`ids`, `length` of one tokenizer sub-group) and its GT
masks (`gt-*`, 256 x 256). Row (e, k) of a split = frame row `frame_rows[e, k]` with expression e's tokens and its
mask k; the head's batches are built from it by pipeline.ref_avs_rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cache.batches import FeatureBatches, Source, to_device
from cache.errors import StoreError
from cache.expressions import GROUP, read_feature, read_table
from cache.store import FeatureStore


@dataclass
class ExpressionSplit:
    """One split in memory: frame features by frame row, and per expression its tokens and masks."""

    split: str
    uid: np.ndarray  # (n,) str
    frame_rows: np.ndarray  # (n, frames) int, -1 = none
    features: dict[str, torch.Tensor]  # field -> (rows held, ...) float32
    position: dict[int, int]  # frame row -> index into features
    ids: torch.Tensor  # (n, L) long
    length: torch.Tensor  # (n,) long
    masks: torch.Tensor  # (n, frames, 256, 256) uint8

    def pairs(self) -> np.ndarray:
        """(m, 2) (expression, frame) of every row that has a frame, in table order."""
        e, k = np.nonzero(self.frame_rows >= 0)
        return np.stack([e, k], axis=1)

    def frame_features(self, pairs: np.ndarray) -> dict[str, torch.Tensor]:
        """The frame features of (expression, frame) pairs."""
        rows = self.frame_rows[pairs[:, 0], pairs[:, 1]]
        pos = torch.as_tensor([self.position[int(r)] for r in rows], dtype=torch.long)
        return {n: v[pos] for n, v in self.features.items()}


def read_expression_split(
    store: str, subset: str, split: str, sources: dict[str, Source], text_key: str
) -> ExpressionSplit:
    """Read a split with an expression level: the `sources` arrays of its frame rows, the tokens of `text_key`
    (a `text-<fingerprint>` sub-group), its one GT sub-group."""
    group = FeatureStore(store, mode="r").split(subset, split)
    table = read_table(group)
    where = f"{store}: {subset}/{split}"
    if not len(table):
        raise StoreError(f"{where} has no expression table; run extract on the Ref-AVS root")
    held = list(group.group[GROUP])
    if text_key not in held:
        raise StoreError(f"{where}: no text tokens of this tokenizer ({text_key}; held: {held}); run extract")
    gt_keys = [k for k in held if k.startswith("gt-")]
    if len(gt_keys) != 1:
        raise StoreError(f"{where}: expected one expression GT sub-group, found {gt_keys}")
    rows = np.unique(table.frame_rows[table.frame_rows >= 0]).astype(np.int64)
    raw = FeatureBatches(store, subset, split, sources, rows=rows, batch_size=max(1, len(rows)))[0]
    order = raw["row"].numpy()
    got = to_device(raw, torch.device("cpu"))  # dequantises int8 arrays
    return ExpressionSplit(
        split,
        table.uid,
        table.frame_rows,
        {n: v.float() for n, v in got.items() if n != "row"},
        {int(r): i for i, r in enumerate(order)},
        torch.as_tensor(read_feature(group, text_key, "ids").astype(np.int64)),
        torch.as_tensor(read_feature(group, text_key, "length").astype(np.int64)),
        torch.as_tensor(read_feature(group, gt_keys[0], "mask")),
    )
