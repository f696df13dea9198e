"""The train stage's reader: a split's rows resident in memory when they fit a budget, else streamed by blocks.

Both modes serve the same batches for a seed: a block-shuffled order (the store's blocks permuted, then the
rows shuffled inside windows of `window` blocks). Resident reads each array once, block by block (whole
shards, in threads), and indexes every batch in memory: on a CUDA device from one tensor per field (no host
round trip); on the host, uncompressed arrays stay mapped (page cache, checked once), compressed ones
decoded in RAM. Streaming reads whole blocks (every array of a block) in a thread pool, keeps the window and
`prefetch_blocks` blocks ahead, and assembles batches from them. Uncompressed arrays with checksums on a local
store skip zarr's codec pipeline: shard files are mapped and every chunk checked against its crc32c, once per
reader (later epochs reuse the checked views).
Damaged chunks raise `StoreDamaged` in both modes (resident: at open; streaming: at the batch).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch

from cache.batches import FeatureBatches, Source, prefetch
from cache.quant import torch_dtype
from cache.shards import object_rows_raw, outer_rows, read_rows_many
from cache.store import FeatureStore

Mode = Literal["auto", "resident", "streaming"]
DEFAULT_WINDOW = 8  # blocks whose rows are shuffled together (8 x 32 rows at the default block size)
DEFAULT_THREADS = 4
HOST_FRACTION = 0.5  # default budget: this share of the host's available memory ...
DEVICE_FRACTION = 0.8  # ... or of the device's free memory


def host_available_bytes() -> int:
    """MemAvailable from /proc/meminfo (else free pages from sysconf)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_budget(device: torch.device | None) -> tuple[int, str]:
    """(bytes, where): 80% of the CUDA device's free memory, else 50% of the host's available memory."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * DEVICE_FRACTION), f"{DEVICE_FRACTION:.0%} of free {device} memory"
    return int(host_available_bytes() * HOST_FRACTION), f"{HOST_FRACTION:.0%} of available host RAM"


def block_order(
    rows: np.ndarray,
    block_rows: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    window: int,
    stream: tuple[int, ...] = (),
) -> np.ndarray:
    """The rows of one epoch: as given without shuffle; else blocks permuted, rows shuffled per window of blocks.

    Deterministic for (seed, epoch, *stream); every row exactly once.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if not shuffle or len(rows) == 0:
        return rows.copy()
    rng = np.random.default_rng((seed, epoch, *stream))
    rows = np.sort(rows)
    blocks, starts = np.unique(rows // block_rows, return_index=True)
    groups = np.split(rows, starts[1:])
    perm = rng.permutation(len(blocks))
    out = []
    for w in range(0, len(perm), max(1, window)):
        chunk = np.concatenate([groups[b] for b in perm[w : w + max(1, window)]])
        rng.shuffle(chunk)
        out.append(chunk)
    return np.concatenate(out)


def rank_shares(rows: np.ndarray, world_size: int) -> list[np.ndarray]:
    """The rows each of `world_size` ranks owns for the whole run: the sorted rows cut into contiguous, near-equal
    parts (sizes differ by at most one), so a rank's share is a run of whole blocks plus at most two partial ones.
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    n = len(rows)
    return [rows[r * n // world_size : (r + 1) * n // world_size] for r in range(world_size)]


def video_shares(rows: np.ndarray, videos: np.ndarray, world_size: int) -> list[np.ndarray]:
    """Like `rank_shares`, but cut only between videos (`videos[i]` is row i's video): validation scores whole
    videos, so each rank scores whole videos and the per-video results are merged exactly."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    n = len(rows)
    if not n:
        return [rows] * world_size
    v = np.asarray(videos)[rows]
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    owner = (starts * world_size) // n  # the rank whose part a video's first row falls in
    ends = np.r_[starts[1:], n]
    return [
        np.concatenate(
            [rows[a:b] for a, b, o in zip(starts, ends, owner, strict=True) if o == r] or [rows[:0]]
        )
        for r in range(world_size)
    ]


def steps_per_epoch(n_rows: int, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Steps of one epoch of `TrainReader` (every rank takes the same number; a rank out of rows takes empty
    micro-batches)."""
    check_world(batch_size, world_size)
    micro = batch_size // world_size
    sizes = [(r + 1) * n_rows // world_size - r * n_rows // world_size for r in range(world_size)]
    if drop_last:
        return min(s // micro for s in sizes)
    return max(-(-s // micro) for s in sizes)


def check_world(batch_size: int, world_size: int) -> None:
    """The global batch must split evenly over the ranks."""
    if world_size < 1 or batch_size % world_size:
        raise ValueError(
            f"batch size {batch_size} (the global batch) does not split over {world_size} ranks: choose a batch "
            f"size that is a multiple of the number of ranks (--batch-size) or another --nproc"
        )


class TrainReader(FeatureBatches):
    """Batches for training and validation, resident or streaming (see the module); a FeatureBatches.

    `epoch(e, max_steps)` yields one epoch's batches (dicts of the arrays' fields plus "row", store dtypes:
    float16 features stay float16); `len()` is batches per epoch; `.mode` is "resident" or "streaming";
    `describe()` is the one line the train stage logs at start.

    Data parallel: with `world_size` N the split's rows (or `rows`) are cut once into N contiguous shares
    (`rank_shares`); each epoch every rank shuffles its own share (seeded by seed, epoch, N and its rank) and
    cuts it into micro-batches of batch_size / N rows. Step k's global batch is the ranks' k-th micro-batches
    concatenated in rank order. With `rank` r the reader serves (and holds, or streams) rank r's share only;
    with `rank` None it serves the global batches in one process (the single-process equivalent of an N-rank
    run). `global_batch(k)` gives step k's global rows and where this reader's slice starts. N = 1 is the plain
    reader (the order seeded by seed and epoch alone).
    """

    def __init__(
        self,
        store_url: str,
        subset: str,
        split: str,
        sources: dict[str, Source],
        batch_size: int = 8,
        shuffle: bool = False,
        seed: int = 0,
        mode: Mode = "auto",
        memory_budget: float | None = None,
        device: torch.device | str | None = None,
        rows: np.ndarray | None = None,
        window: int = DEFAULT_WINDOW,
        threads: int = DEFAULT_THREADS,
        prefetch_blocks: int = 2,
        storage_options: dict[str, Any] | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int = 1,
    ):
        check_world(batch_size, world_size)
        if rank is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if mode not in ("auto", "resident", "streaming"):
            raise ValueError(f"feed mode {mode!r}: choose auto, resident or streaming")
        group = FeatureStore(store_url, mode="r", storage_options=storage_options).split(subset, split)
        self.block_rows, self._n_split = group.block_rows, group.n_rows
        self.rank, self.world_size = rank, world_size
        wanted = np.arange(group.n_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        self.shares = rank_shares(wanted, world_size) if world_size > 1 else [wanted]
        self.total_rows = len(wanted)
        if rank is not None and world_size > 1:
            rows = self.shares[rank]
        self.window, self.threads, self.prefetch_blocks = (
            max(1, window),
            max(1, threads),
            max(0, prefetch_blocks),
        )
        self.device = None if device is None else torch.device(device)
        self._pool: ThreadPoolExecutor | None = None
        self._stream: _Stream | None = None
        self._resident: dict[str, torch.Tensor] | None = None
        self._host: dict[str, list[Any]] | None = None
        self._raw: dict[tuple[str, int], list[np.ndarray]] = {}  # (field, block) -> verified mapped rows
        super().__init__(
            store_url, subset, split, sources, rows=rows, batch_size=batch_size, shuffle=shuffle, seed=seed,
            drop_last=drop_last, storage_options=storage_options,
        )  # fmt: skip
        arrays = self._open()
        self.nbytes = sum(len(self.rows) * math.prod(a.shape[1:]) * a.dtype.itemsize for a in arrays.values())
        if memory_budget is None:
            self.budget, self.budget_from = default_budget(self.device)
        else:
            self.budget, self.budget_from = int(memory_budget), "set"
        self.mode = (
            "resident"
            if mode == "resident" or (mode == "auto" and self.nbytes <= self.budget)
            else "streaming"
        )
        if self.mode == "resident":
            self._load()

    # -- order ------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """This epoch's block-shuffled order (index order without shuffle), cut into batches (see the class)."""
        w = self.world_size
        if w == 1:
            order = block_order(self.rows, self.block_rows, self.shuffle, self.seed, epoch, self.window)
            n = len(order) // self.batch_size if self.drop_last else -(-len(order) // self.batch_size)
            self._batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(n)]
            self._global, self._offsets = self._batches, [0] * n
            self._bounds = [[(0, len(b))] for b in self._batches]
            self._stream = None
            return
        micro = self.batch_size // w
        n = steps_per_epoch(self.total_rows, self.batch_size, w, self.drop_last)
        parts = []
        for r, share in enumerate(self.shares):
            order = block_order(share, self.block_rows, self.shuffle, self.seed, epoch, self.window, (w, r))
            parts.append([order[i * micro : (i + 1) * micro] for i in range(n)])
        self._global = [np.concatenate([p[i] for p in parts]) for i in range(n)]
        ends = [np.cumsum([len(p[i]) for p in parts]).tolist() for i in range(n)]
        self._bounds = [list(zip([0, *e[:-1]], e, strict=True)) for e in ends]
        if self.rank is None:
            self._batches, self._offsets = self._global, [0] * n
        else:
            self._batches = parts[self.rank]
            self._offsets = [sum(len(p[i]) for p in parts[: self.rank]) for i in range(n)]
        self._stream = None

    def global_batch(self, step: int) -> tuple[np.ndarray, int]:
        """Step `step`'s global batch (every rank's rows, in rank order) and where this reader's rows start."""
        return self._global[step], self._offsets[step]

    def rank_slices(self, step: int) -> list[tuple[int, int]]:
        """Where each rank's micro-batch lies in step `step`'s global batch: (start, end) per rank."""
        return self._bounds[step]

    def epoch(self, epoch: int, max_steps: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of batches (the first max_steps), the next one prepared in a thread while this one runs."""
        return prefetch(self, epoch, max_steps)

    def describe(self) -> str:
        """One line: mode, bytes, budget."""
        where = "" if self.mode == "streaming" else f" on {self.device or 'cpu'}"
        how = (
            f"read once{where}"
            if self.mode == "resident"
            else f"blocks of {self.block_rows} rows, shuffle window {self.window} blocks, {self.threads} threads"
        )
        if self.world_size == 1:
            who = ""
        elif self.rank is None:
            who = f" (global batches of {self.world_size} ranks, all in this process)"
        else:
            who = f" rank {self.rank}/{self.world_size}"
        held = "holds" if self.mode == "resident" else "streams"
        share = (
            f"; this rank {held} {len(self.rows)} of {self.total_rows} rows"
            if self.rank is not None and self.world_size > 1
            else ""
        )
        return (
            f"feed {self.subset}/{self.split}{who}: {self.mode} ({how}); {self.nbytes / 2**30:.2f} GiB for "
            f"{len(self.rows)} rows{share}, budget {self.budget / 2**30:.2f} GiB ({self.budget_from})"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_pool": None, "_stream": None, "_raw": {}}

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="av2t-feed")
        return self._pool

    def _block_sel(self, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(block, its sorted rows among these) for every block holding any."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        if not len(rows):
            return []
        blocks, starts = np.unique(rows // self.block_rows, return_index=True)
        return list(zip(blocks.tolist(), np.split(rows, starts[1:]), strict=True))

    def _read(self, sel: np.ndarray) -> dict[str, Any]:
        """Sorted rows of one block, every array: uncompressed objects read whole as verified views of the
        mapped files (a list of rows), the rest through zarr (an array; StoreDamaged on a damaged chunk)."""
        arrays = self._open()
        b = int(sel[0]) // self.block_rows
        start = b * self.block_rows
        full = len(sel) == min(self.block_rows, self._n_split - start)
        out: dict[str, Any] = {}
        slow = {}
        for f, arr in arrays.items():
            x = self._raw.get((f, b))
            if x is None and outer_rows(arr) == self.block_rows:
                x = object_rows_raw(arr, b)
                if x is not None:  # verified once per reader: later epochs reuse the mapped, checked views
                    self._raw[(f, b)] = x
            if x is None:
                slow[f] = arr
            else:
                out[f] = x if full else [x[k] for k in (sel - start).tolist()]
        if slow:
            out.update(read_rows_many(slow, sel, {f: self._owners[f] for f in slow}))
        return out

    # -- resident ---------------------------------------------------------------------------------------
    def _load(self) -> None:
        """Read every requested row once, block by block in threads (each block's objects whole).

        On the host, uncompressed arrays stay where the read put them: the shard files mapped (the page
        cache holds them, no second copy), every chunk checked against its crc32c once, here; compressed
        ones are decoded into RAM. On a CUDA device every field is one device tensor.
        """
        arrays = self._open()
        dev = self.device or torch.device("cpu")
        n = len(self.rows)
        self._pos = np.full(int(self.rows.max()) + 1 if n else 0, -1, dtype=np.int64)
        self._pos[self.rows] = np.arange(n)
        if dev.type == "cpu":
            host: dict[str, list[Any]] = {f: [None] * n for f in arrays}
        else:
            out = {
                f: torch.empty((n, *a.shape[1:]), dtype=torch_dtype(a.dtype), device=dev)
                for f, a in arrays.items()
            }

        def load(sel: np.ndarray) -> None:
            pos = self._pos[sel]
            for f, x in self._read(sel).items():
                if dev.type == "cpu":
                    for p, row in zip(pos.tolist(), x, strict=True):
                        host[f][p] = row
                else:
                    t = torch.from_numpy(np.stack(x) if isinstance(x, list) else x)
                    out[f].index_copy_(0, torch.from_numpy(pos).to(dev), t.to(dev))

        for fut in [self._executor().submit(load, sel) for _, sel in self._block_sel(self.rows)]:
            fut.result()
        if dev.type == "cpu":
            self._resident, self._host = {}, host
        else:
            self._resident, self._host = out, None
        self._pos_t = torch.from_numpy(self._pos).to(dev)
        self._raw = {}  # resident: the rows are held above (host) or copied (device)

    # -- batches ----------------------------------------------------------------------------------------
    def _batch(self, i: int) -> dict[str, torch.Tensor]:
        rows = self._batches[i]
        if not len(rows):  # a rank out of rows at the end of an epoch: an empty micro-batch
            return {"row": torch.from_numpy(rows.copy())}
        if self._resident is not None:
            out = {"row": torch.from_numpy(rows.copy())}
            if self._host is not None:  # rows copied once into the batch (fancy-index speed)
                pos = self._pos[rows].tolist()
                for f, held in self._host.items():
                    dst = np.empty((len(pos), *held[pos[0]].shape), held[pos[0]].dtype)
                    for j, p in enumerate(pos):
                        dst[j] = held[p]
                    out[f] = torch.from_numpy(dst)
            else:  # on the device: no host round trip
                idx = self._pos_t[torch.from_numpy(rows).to(self._pos_t.device)]
                out.update({f: t.index_select(0, idx) for f, t in self._resident.items()})
            return out
        if self._stream is None or self._stream.next != i:
            if i != 0:  # random access: read just this batch
                return super()._batch(i)
            self._stream = _Stream(self)
        return self._stream.batch(i)


class _Stream:
    """One epoch's streaming state: blocks read ahead in order of first use, freed after their last use."""

    def __init__(self, reader: TrainReader):
        self.r = reader
        self.next = 0
        br = reader.block_rows
        first: dict[int, None] = {}
        self.last: dict[int, int] = {}
        for i, rows in enumerate(reader._batches):
            for b in (rows // br).tolist():
                first.setdefault(b, None)
                self.last[b] = i
        self.seq = list(first)
        self.sel = dict(reader._block_sel(reader.rows))
        self.p = 0
        self.live: dict[int, Future] = {}
        self.pin = reader.device is not None and reader.device.type == "cuda"

    def _submit_until(self, need: set[int]) -> None:
        ahead = self.r.window + self.r.prefetch_blocks
        pool = self.r._executor()
        while self.p < len(self.seq) and (len(self.live) < ahead or not need.issubset(self.live)):
            b = self.seq[self.p]
            self.live[b] = pool.submit(self.r._read, self.sel[b])
            self.p += 1

    def batch(self, i: int) -> dict[str, torch.Tensor]:
        rows = self.r._batches[i]
        br = self.r.block_rows
        blocks = rows // br
        self._submit_until(set(blocks.tolist()))
        data = {b: self.live[b].result() for b in set(blocks.tolist())}
        out: dict[str, torch.Tensor] = {"row": torch.from_numpy(rows.copy())}
        for f in self.r.sources:
            like = next(iter(data.values()))[f][0]
            if self.pin:  # page-locked: the copy to the device can be asynchronous
                t = torch.empty((len(rows), *like.shape), dtype=torch_dtype(like.dtype), pin_memory=True)
                dst = t.numpy()
            else:  # numpy's allocator: torch.empty of big CPU tensors is ~8x slower to fill (fresh pages)
                dst = np.empty((len(rows), *like.shape), like.dtype)
                t = torch.from_numpy(dst)
            for j, (r, b) in enumerate(zip(rows.tolist(), blocks.tolist(), strict=True)):
                sel = self.sel[b]
                dst[j] = data[b][f][np.searchsorted(sel, r)]
            out[f] = t
        for b in set(blocks.tolist()):
            if self.last[b] == i:
                del self.live[b]
        self.next = i + 1
        self._submit_until(set())
        return out


def open_reader(
    store_url: str, subset: str, split: str, sources: dict[str, Source], **options: Any
) -> TrainReader:
    """The train stage's reader of a split: a `TrainReader`, whose signature lists the options.

    memory_budget is in bytes (None: the default budget, see describe()).
    """
    return TrainReader(store_url, subset, split, sources, **options)
