"""Training batches straight from the store: one item is one whole batch, read in one call per array."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cache.store import EncoderGroup, FeatureStore, StoreError, read_rows_many


@dataclass(frozen=True)
class Source:
    """Where one output field comes from: an encoder sub-group key and one of its arrays."""

    encoder_key: str
    array: str


class FeatureBatches(Dataset):
    """Batches of cached rows as dicts of tensors; picklable, so it works with spawned DataLoader workers.

    Each item reads every array once for the batch's sorted rows (consecutive runs as slices),
    so there is no per-sample Python work on the hot path. Use `DataLoader(ds, batch_size=None)`.
    """

    def __init__(
        self,
        store_url: str,
        subset: str,
        split: str,
        sources: dict[str, Source],
        rows: np.ndarray | None = None,
        batch_size: int = 8,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        storage_options: dict[str, Any] | None = None,
    ):
        self.store_url, self.storage_options = store_url, storage_options
        self.subset, self.split, self.sources = subset, split, dict(sources)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        group = FeatureStore(store_url, mode="r", storage_options=storage_options).split(subset, split)
        self.rows = np.arange(group.n_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        for field, src in self.sources.items():
            enc = _encoder_by_key(group, src.encoder_key)
            enc.array(src.array)
            missing = ~enc.done_mask()[self.rows]
            if missing.any():
                raise StoreError(
                    f"{store_url}: {group.path}/{src.encoder_key} ({field}) has {int(missing.sum())} of "
                    f"{len(self.rows)} rows not extracted yet; finish extract-features first"
                )
        self._arrays: dict[str, Any] | None = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle deterministically for this epoch."""
        order = self.rows.copy()
        if self.shuffle:
            np.random.default_rng((self.seed, epoch)).shuffle(order)
        n = len(order) // self.batch_size if self.drop_last else -(-len(order) // self.batch_size)
        self._batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(n)]

    def __len__(self) -> int:
        return len(self._batches)

    def __getstate__(self) -> dict[str, Any]:
        # zarr handles hold an event loop and thread: each process opens its own.
        return {**self.__dict__, "_arrays": None}

    def _open(self) -> dict[str, Any]:
        if self._arrays is None:
            group = FeatureStore(self.store_url, mode="r", storage_options=self.storage_options).split(
                self.subset, self.split
            )
            self._arrays = {
                f: _encoder_by_key(group, s.encoder_key).array(s.array) for f, s in self.sources.items()
            }
        return self._arrays

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rows = self._batches[i]
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        out: dict[str, torch.Tensor] = {"row": torch.from_numpy(rows.copy())}
        for field, x in read_rows_many(self._open(), sorted_rows).items():
            out[field] = torch.from_numpy(np.ascontiguousarray(x[inverse]))
        return out


def _encoder_by_key(group, key: str) -> EncoderGroup:
    """The encoder sub-group with exactly this key (name@fingerprint)."""
    for e in group.encoders():
        if e.key == key:
            return e
    name, _, fp = key.partition("@")
    return group.encoder(name, fp or None)
