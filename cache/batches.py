"""Training batches straight from the store: one item is one whole batch, read in one call per array."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from cache.errors import StoreError
from cache.index import SplitIndex
from cache.quant import dequantize
from cache.shards import read_rows
from cache.specs import scale_name
from cache.store import EncoderGroup, FeatureStore


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
            enc.refuse_missing([src.array], self.rows)  # StoreDamaged: done rows whose chunks are gone
            missing = ~enc.done_record()[self.rows]
            if missing.any():
                raise StoreError(
                    f"{store_url}: {group.path}/{src.encoder_key} ({field}) has {int(missing.sum())} of "
                    f"{len(self.rows)} rows not extracted yet; finish extract-features first"
                )
        self._arrays: dict[str, Any] | None = None
        self._owners: dict[str, tuple[EncoderGroup, str]] | None = None
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
        return {**self.__dict__, "_arrays": None, "_owners": None}

    def _open(self) -> dict[str, Any]:
        if self._arrays is None:
            group = FeatureStore(self.store_url, mode="r", storage_options=self.storage_options).split(
                self.subset, self.split
            )
            owners = {f: (_encoder_by_key(group, s.encoder_key), s.array) for f, s in self.sources.items()}
            self._arrays = {f: enc.array(name) for f, (enc, name) in owners.items()}
            self._owners = owners
        return self._arrays

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """One batch; a damaged chunk (checksum, decoding, non-finite before checksums) raises StoreDamaged."""
        return self._batch(i)

    def _batch(self, i: int) -> dict[str, torch.Tensor]:
        """Batch i read from the store (readers that hold rows in memory override this)."""
        rows = self._batches[i]
        out: dict[str, torch.Tensor] = {"row": torch.from_numpy(rows.copy())}
        arrays = self._open()
        for field, x in read_rows(arrays, rows, self._owners).items():
            out[field] = torch.from_numpy(x)
        return out


def _encoder_by_key(group, key: str) -> EncoderGroup:
    """The encoder sub-group with exactly this key (name@fingerprint)."""
    for e in group.encoders():
        if e.key == key:
            return e
    name, _, fp = key.partition("@")
    return group.encoder(name, fp or None)


class CachedModel(Protocol):
    """What the batch plumbing asks of a model: the store arrays it reads, per encoder name."""

    def cached_fields(self) -> dict[str, list[str]]: ...


MASK = "mask"


def sources(models: list[CachedModel], groups: Mapping[str, EncoderGroup]) -> dict[str, Source]:
    """Store arrays every model needs (by encoder name -> sub-group), plus the GT mask.

    An int8 array brings its `<name>_scale` companion as one more field (`to_device` dequantises the pair).
    """
    out = {MASK: Source(groups["gt"].key, MASK)}
    for m in models:
        for enc_name, arrays in m.cached_fields().items():
            enc = groups[enc_name]
            for a in arrays:
                out[a] = Source(enc.key, a)
                if scale_name(a) in enc.specs:
                    out[scale_name(a)] = Source(enc.key, scale_name(a))
    return out


def prefetch(
    ds: FeatureBatches, epoch: int = 0, max_steps: int | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of batches in order, the next one read in a thread while this one runs.

    With a `cache.feed.TrainReader` the batches come from memory (resident) or from whole blocks decoded
    ahead in threads (streaming); `TrainReader.epoch(e)` is this.
    """
    ds.set_epoch(epoch)
    n = len(ds) if max_steps is None else min(len(ds), max_steps)
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(ds.__getitem__, 0) if n else None
        for i in range(n):
            batch = nxt.result()
            nxt = pool.submit(ds.__getitem__, i + 1) if i + 1 < n else None
            yield batch


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Features as float32 on the device, masks as float; the row ids stay behind.

    The store's dtypes cross (float16, or int8 + float32 scales: half the bytes); int8 fields are
    dequantised on the device, after the copy, and their `_scale` fields dropped.
    """
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "row"}
    return {k: v.float() for k, v in dequantize(moved).items()}


@dataclass
class VideoRows:
    """One video's rows gathered from batches, in frame order: frames and each field stacked (N, ...)."""

    video: str
    category: str | None
    frames: list[int]
    fields: dict[str, Any]


class VideoAssembler:
    """Regroups rows that arrive batch by batch into whole videos (a video may span two batches)."""

    def __init__(self, index: SplitIndex, rows: np.ndarray):
        self.index = index
        self.expected = Counter(index.video[rows].tolist())
        self.pending: dict[str, list[tuple[int, dict[str, Any]]]] = {}

    def add(self, row: int, fields: dict[str, Any]) -> VideoRows | None:
        """Take one row's fields; returns its video once all of the video's rows have come."""
        video = str(self.index.video[row])
        items = self.pending.setdefault(video, [])
        items.append((int(self.index.frame[row]), fields))
        if len(items) < self.expected[video]:
            return None
        del self.pending[video]
        return self._video(video, items)

    def _video(self, video: str, items: list[tuple[int, dict[str, Any]]]) -> VideoRows:
        """The items of one video in frame order, fields stacked."""
        items.sort(key=lambda t: t[0])
        stacked = {k: _stack([f[k] for _, f in items]) for k in items[0][1]}
        category = str(self.index.category[self.index.rows_of(video)[0]]) or None
        return VideoRows(video, category, [k for k, _ in items], stacked)

    def flush(self) -> Iterator[VideoRows]:
        """The videos still missing rows (a run cut short), with the rows they have, in order of arrival."""
        for video in list(self.pending):
            items = self.pending.pop(video)
            yield self._video(video, items)


def _stack(values: list[Any]) -> Any:
    """Stack per-row tensors; dicts of tensors (e.g. logits per variant) key by key."""
    if isinstance(values[0], dict):
        return {k: torch.stack([v[k] for v in values]) for k in values[0]}
    return torch.stack(values)


def video_outputs(
    ds: FeatureBatches,
    index: SplitIndex,
    forward: Callable[[dict[str, torch.Tensor], np.ndarray], dict[str, Any]],
    device: torch.device,
    max_steps: int | None = None,
) -> Iterator[VideoRows]:
    """Run `forward(batch on device, rows)` over the dataset's rows in order and yield whole videos.

    `forward` returns per-row outputs (tensors or dicts of tensors with the batch on the first axis); each
    video's rows come back with the GT mask as read from the store under "mask". With max_steps (benchmarks)
    only the first batches run, and the videos they cut short come last, with the rows they have.
    """
    assembler = VideoAssembler(index, ds.rows)
    for raw in prefetch(ds, 0, max_steps):
        rows = raw["row"].numpy()
        outs = forward(to_device(raw, device), rows)
        for j, r in enumerate(rows):
            fields = {MASK: raw[MASK][j]}
            for k, v in outs.items():
                fields[k] = {n: x[j] for n, x in v.items()} if isinstance(v, dict) else v[j]
            done = assembler.add(int(r), fields)
            if done is not None:
                yield done
    yield from assembler.flush()
