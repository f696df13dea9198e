"""The extract stage: run the frozen encoders over AVSBench clips and fill the feature store, resumably."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache import ArraySpec, EncoderGroup, FeatureStore, SplitGroup, SplitIndex, StoreError, fingerprint
from cache.negatives import has_negative_clap, write_negative_clap
from cache.quant import nonfinite_row_flags, to_storage
from cache.specs import storage_specs
from pipeline.data.audio import Resampler, Stereo, load_segments
from pipeline.data.clips import Clip, DataError, read_clips
from pipeline.data.images import load_frame, protocol_mask
from pipeline.data.layout import mask_kind
from pipeline.data.releases import release_of
from pipeline.devices import resolve_device, torch_threads
from pipeline.encoders.base import Encoder
from pipeline.encoders.registry import get_encoder
from pipeline.evaluation.negative_audio import noise_segments, segment_samples, silence_segments
from pipeline.model.precision import autocast, resolve_precision
from pipeline.provenance import with_precision
from pipeline.settings import ExtractConfig, encoder_batch_size


def cfg_encoder(cfg: ExtractConfig, name: str) -> Encoder:
    """The encoder an extraction config asks for (the GT 'encoder' told how the subset's masks are read)."""
    overrides = cfg.overrides.get(name)
    if name == "gt":
        overrides = {**(overrides or {}), "masks": mask_kind(cfg.subset)}
    return get_encoder(name, cfg.preset, cfg.weights_dir, cfg.device, overrides)


# Encoders reading the same input are extracted together: each input is decoded once for all of them.
INPUT_ORDER = ("frames", "audio", "masks")


@dataclass(frozen=True)
class Shard:
    """A unit of work: some blocks of one split, for the encoders that read one kind of input."""

    split: str
    encoders: tuple[str, ...]
    blocks: tuple[int, ...]
    rows: int  # rows to compute, summed over the encoders

    @property
    def label(self) -> str:
        """The encoders as a task name shows them: clip+sam2+beit3."""
        return "+".join(self.encoders)


def split_index(cfg: ExtractConfig, split: str) -> tuple[list[Clip], SplitIndex]:
    """The clips of a split and the store rows they give."""
    clips = read_clips(cfg.root, cfg.subset, split)
    return clips, SplitIndex.from_clips(clips, cfg.frames)


def check_store_target(url: str) -> None:
    """A local --store must be a feature store, a missing path or an empty folder: never anything else."""
    if "://" in url:
        return  # remote stores: the store itself refuses what it cannot open
    path = Path(url)
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path}: is a file, not a feature store; choose another --store")
    if path.is_dir() and not (path / "zarr.json").is_file() and any(path.iterdir()):
        raise StoreError(
            f"{path}: is a non-empty folder that is not a feature store; refused, so that nothing in it is "
            "mixed with features: choose a new or empty folder for --store"
        )


def prepare(cfg: ExtractConfig, blocks_per_shard: int = 4) -> list[Shard]:
    """Create the groups and encoder sub-groups (once, before any writer), and list the pending work."""
    check_store_target(cfg.store)
    indexes = {
        split: split_index(cfg, split)[1] for split in cfg.splits
    }  # bad data: refused before any write
    store = FeatureStore(cfg.store)
    kinds = input_groups(cfg)
    shards = []
    for split, index in indexes.items():
        group = store.require_split(cfg.subset, split, index, cfg.block_rows)
        slices = [group.block_slice(b) for b in range(group.n_blocks)]
        for names in kinds:
            done = [require_encoder_group(cfg, group, cfg_encoder(cfg, n)).done_mask() for n in names]
            pending = [b for b, sl in enumerate(slices) if any(not d[sl].all() for d in done)]
            for i in range(0, len(pending), blocks_per_shard):
                blocks = tuple(pending[i : i + blocks_per_shard])
                rows = sum(int((~d[slices[b]]).sum()) for b in blocks for d in done)
                shards.append(Shard(split, names, blocks, rows))
    return shards


def input_groups(cfg: ExtractConfig) -> list[tuple[str, ...]]:
    """cfg's encoders grouped by the input they read (frames, audio, masks), each in cfg's order."""
    by_kind: dict[str, list[str]] = {}
    for name in cfg.encoders:
        by_kind.setdefault(cfg_encoder(cfg, name).input, []).append(name)
    return [tuple(by_kind[k]) for k in INPUT_ORDER if k in by_kind]


def decode_workers(cfg: ExtractConfig, device: torch.device) -> int:
    """Threads decoding inputs: cfg's, else 1 when the encoders run on the CPU (whose cores they need; one
    decoder ahead of them is measured fastest there, bench/bench_extract.py) and 4 beside a GPU."""
    if cfg.decode_workers is not None:
        return cfg.decode_workers
    return 1 if device.type == "cpu" else 4


def compute_precision(cfg: ExtractConfig) -> str:
    """fp32 or bf16: cfg.precision with auto resolved for the encoders' device."""
    return resolve_precision(cfg.precision, resolve_device(cfg.device))


def require_encoder_group(cfg: ExtractConfig, group, enc: Encoder) -> EncoderGroup:
    """The encoder's sub-group for its fingerprint, with its arrays declared."""
    arrays = storage_specs(enc.output_shapes(), enc.output_dtypes(), cfg.dtype, cfg.quantize, cfg.codec)
    prov = with_precision(enc.provenance(), compute_precision(cfg))
    preset = (
        str(Path(cfg.preset).resolve()) if "/" in str(cfg.preset) else str(cfg.preset)
    )  # a folder: absolute
    given = {"root": str(Path(cfg.root).resolve()), "preset": preset}
    return group.require_encoder(enc.name, prov, arrays, cfg.allow_other_fingerprints, given)


class InputCache:
    """Decoded audio per video within one shard (five rows of a video share one WAV)."""

    def __init__(self, rate: int | None, stereo: Stereo = "mean", resampler: Resampler = "polyphase"):
        self.rate, self.stereo, self.resampler, self.audio = rate, stereo, resampler, {}

    @classmethod
    def for_encoder(cls, enc: Encoder) -> InputCache:
        """Audio loaded the way the encoder asks for (its sample rate, stereo handling and resampler)."""
        return cls(**enc.audio_loading())

    def segments(self, clip: Clip) -> np.ndarray:
        """(frames, samples) one-second segments of a clip's audio: (frames, rate) mono, or longer with
        stereo="flatten" (5 frames, or 10 for the semantic release's v2)."""
        if clip.id not in self.audio:
            self.audio[clip.id] = load_segments(
                clip.audio_path, self.rate, len(clip.frames), stereo=self.stereo, resampler=self.resampler
            )
        return self.audio[clip.id]


_DECODE_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="av2t-decode")
AHEAD_BLOCKS = 2  # blocks decoded ahead of the encoders, and blocks written behind them
WRITERS = 2  # writer threads beside a GPU


def input_path(enc: Encoder, clip: Clip, k: int) -> Path | None:
    """The file a row's input comes from (None: a frame without a GT mask)."""
    if enc.input == "frames":
        return clip.frame_paths[k - 1]
    return clip.audio_path if enc.input == "audio" else clip.mask_paths[k - 1]


def _load_one(enc: Encoder, clip: Clip, k: int, cache: InputCache) -> np.ndarray | DataError:
    """One row's raw input, or the DataError that names its bad file."""
    try:
        if enc.input == "frames":
            return load_frame(clip.frame_paths[k - 1])
        if enc.input == "audio":
            return cache.segments(clip)[k - 1]
        path = clip.mask_paths[k - 1]
        if path is None:
            return np.zeros((enc.cfg.size, enc.cfg.size), bool)
        return protocol_mask(clip, k, enc.cfg.size)  # as the release's official loader reads it
    except DataError as e:
        return e


def load_inputs(
    enc: Encoder,
    clips: dict[str, Clip],
    index: SplitIndex,
    rows: np.ndarray,
    cache: InputCache,
    pool: ThreadPoolExecutor | None | bool = None,
):
    """Raw inputs of the rows (frames, audio segments or masks) and a failure record for each bad one.

    Decoded in parallel in `pool` (PNG and WAV decoding release the GIL; default: a shared pool of 4), or
    with pool=False one after the other in this thread; audio once per video, its rows sharing it.
    """
    run = (pool or _DECODE_POOL).map if pool is not False else map  # False: in this thread, in order
    keys = [(clips[index.video[r]], int(index.frame[r])) for r in rows]
    if enc.input == "audio":  # one WAV per video: decode each video's once, videos in parallel
        videos = list({c.id: c for c, _ in keys}.values())
        list(run(lambda c: _load_one(enc, c, 1, cache), videos))
    loaded = list(run(lambda ck: _load_one(enc, *ck, cache), keys))
    items, ok, failures = [], np.ones(len(rows), bool), []
    for i, ((clip, k), x) in enumerate(zip(keys, loaded, strict=True)):
        if isinstance(x, DataError):
            ok[i] = False
            path = input_path(enc, clip, k)
            failures.append(
                {"row": int(rows[i]), "video": clip.id, "frame": k, "path": str(path), "error": str(x)}
            )
        else:
            items.append(x)
    return items, ok, failures


def batch_plan(items: list[np.ndarray], batch_size: int) -> list[list[int]]:
    """Positions of the items per forward: inputs of one shape batched together, in order.

    Inputs of other shapes (stereo="flatten" audio of a stereo file is twice as long as a mono file's) are
    batched among themselves.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(items):
        groups.setdefault(np.shape(x), []).append(i)
    return [idx[i : i + batch_size] for idx in groups.values() for i in range(0, len(idx), batch_size)]


class Timings:
    """Seconds spent per part of the stage (threads overlap: parts may sum to more than the wall time)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Time the block under `name`."""
        t = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t


@dataclass
class SplitWork:
    """What the blocks of one split write to: its group, clips and the encoders' sub-groups."""

    group: SplitGroup
    by_id: dict[str, Clip]
    egs: list[EncoderGroup]
    done: list[np.ndarray]  # per encoder, rows done when the run started


@dataclass
class BlockWork:
    """One block: per encoder the rows still to compute, their inputs decoded once for all the encoders."""

    shard: int  # position of its shard in the run
    split: SplitWork
    block: int
    rows: slice
    todo: list[np.ndarray]  # per encoder: its pending rows of the block
    failures: list[dict[str, Any]] = field(default_factory=list)  # per bad input row
    computed: list[np.ndarray] = field(default_factory=list)  # per encoder: its pending rows whose input read
    batches: list[list[tuple[np.ndarray, torch.Tensor]]] = field(default_factory=list)  # per encoder


def encode_on_device(
    enc: Encoder, x: torch.Tensor, specs: dict[str, ArraySpec], precision: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Host input -> the device (uint8 frames), preprocessing and forward there, cast to the storage dtypes
    there; the stored tensors (still on the device) and which rows hold inf/nan."""
    x = x.to(enc.device, non_blocking=True)
    with torch.inference_mode(), autocast(precision, enc.device):
        y = enc.encode(enc.device_input(x))
    stored = to_storage({k: v for k, v in y.items() if k in specs}, specs)
    return stored, nonfinite_row_flags(stored)


class Extraction:
    """Shards of the encoders reading one input, as one pipeline: decode (a thread) -> encoders on the device
    (this thread) -> write (behind).

    Inputs are decoded `AHEAD_BLOCKS` blocks ahead, across shard and split boundaries, once for all the
    encoders, and turned into host tensors there (uint8 frames, pinned for an asynchronous copy on CUDA);
    outputs leave the device in their storage dtype; a block is written while the next ones compute.
    """

    def __init__(self, cfg: ExtractConfig, shards: list[Shard], timings: Timings | None = None):
        if len({s.encoders for s in shards}) > 1:
            raise ValueError("one Extraction runs shards of the same encoders")
        self.cfg, self.shards, self.t = cfg, shards, timings or Timings()
        names = shards[0].encoders if shards else ()
        self.encs = [cfg_encoder(cfg, n) for n in names]
        self.sizes = [encoder_batch_size(cfg, e.name) for e in self.encs]
        self.precision = compute_precision(cfg)
        self.cache = InputCache.for_encoder(self.encs[0]) if self.encs else None
        self.pin = bool(self.encs) and self.encs[0].device.type == "cuda"
        self.splits: dict[str, SplitWork] = {}

    def split(self, name: str) -> SplitWork:
        """The split's group, clips and sub-groups (opened once per run)."""
        if name not in self.splits:
            clips, _ = split_index(self.cfg, name)
            group = FeatureStore(self.cfg.store).split(self.cfg.subset, name)
            egs = [require_encoder_group(self.cfg, group, e) for e in self.encs]
            # One read per run: these blocks have no other writer.
            self.splits[name] = SplitWork(
                group, {c.id: c for c in clips}, egs, [eg.done_mask() for eg in egs]
            )
        return self.splits[name]

    def plan(self) -> list[BlockWork]:
        """Every block of the shards with any pending row, in order."""
        out = []
        for i, shard in enumerate(self.shards):
            sw = self.split(shard.split)
            for b in shard.blocks:
                sl = sw.group.block_slice(b)
                todo = [np.arange(sl.start, sl.stop)[~d[sl]] for d in sw.done]
                if any(len(t) for t in todo):
                    out.append(BlockWork(i, sw, b, sl, todo))
        return out

    def decode(self, work: BlockWork, pool: ThreadPoolExecutor | bool) -> BlockWork:
        """A block's inputs decoded once, cut into each encoder's host batches."""
        union = np.unique(np.concatenate(work.todo))
        sw = work.split
        with self.t.part("decode"):
            items, ok, work.failures = load_inputs(
                self.encs[0], sw.by_id, sw.group.index, union, self.cache, pool
            )
        pos = np.cumsum(ok) - 1  # union position -> position in items (ok rows only)
        at = {int(r): int(pos[i]) for i, r in enumerate(union) if ok[i]}
        with self.t.part("host input"):
            for enc, rows, size in zip(self.encs, work.todo, self.sizes, strict=True):
                good = np.array([r for r in rows.tolist() if r in at], dtype=np.int64)
                work.computed.append(good)
                mine = [items[at[r]] for r in good.tolist()]
                per = []
                for idx in batch_plan(mine, size):
                    x = enc.host_input(np.stack([mine[i] for i in idx]))
                    per.append((good[idx], x.pin_memory() if self.pin else x))
                work.batches.append(per)
        return work

    def compute(self, work: BlockWork) -> list[dict[str, np.ndarray]]:
        """Per encoder, the stored arrays of its computed rows (storage dtypes, in row order)."""
        out = []
        for enc, eg, per in zip(self.encs, work.split.egs, work.batches, strict=True):
            parts: dict[str, list[np.ndarray]] = {}
            bad = []
            with self.t.part(f"device {enc.name}"):
                for rows, x in per:
                    stored, nonfinite = encode_on_device(enc, x, eg.specs, self.precision)
                    for k, v in stored.items():
                        parts.setdefault(k, []).append(v.cpu().numpy())
                    bad.append(rows[nonfinite.cpu().numpy()])
            bad_rows = np.concatenate(bad) if bad else np.zeros(0, np.int64)
            if len(bad_rows):
                videos = sorted({str(v) for v in work.split.group.index.video[bad_rows]})
                raise StoreError(f"{eg.key}: non-finite features for video(s) {videos[:5]}")
            arrays = {k: np.concatenate(v) for k, v in parts.items()}
            rows = np.concatenate([r for r, _ in per]) if per else np.zeros(0, np.int64)
            if np.any(np.diff(rows) < 0):  # inputs of several shapes were batched apart: back to row order
                order = np.argsort(rows, kind="stable")
                arrays = {k: v[order] for k, v in arrays.items()}
            out.append(arrays)
        return out

    def write(self, work: BlockWork, results: list[dict[str, np.ndarray]]) -> None:
        """Write the block of every encoder (rows done before, and rows that failed, keep what is stored)."""
        sl, n = work.rows, work.rows.stop - work.rows.start
        with self.t.part("write"):
            for eg, todo, computed, stored in zip(
                work.split.egs, work.todo, work.computed, results, strict=True
            ):
                if not len(todo):
                    continue
                partial = len(todo) < n or len(computed) < len(todo)
                block = eg.read_block(work.block) if partial else {}
                for k, spec in eg.specs.items():
                    full = block[k] if k in block else np.zeros((n, *spec.shape), spec.dtype)
                    if len(computed):
                        full[computed - sl.start] = stored[k]
                    block[k] = full
                ok = np.zeros(n, bool)
                ok[computed - sl.start] = True
                eg.write_block(work.block, block, ok=ok, checked=True)
                if partial:  # input failures, or a partly done block (a retry): clear or renew its records
                    mine = set(todo.tolist())
                    eg.record_failures(work.block, [f for f in work.failures if f["row"] in mine])

    def run(self, progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Every pending block of the shards; per shard, rows computed per encoder and the failures."""
        results = [
            {
                "split": s.split,
                "encoders": list(s.encoders),
                "computed": [0] * len(s.encoders),
                "failures": [],
            }
            for s in self.shards
        ]
        if not self.shards:
            return results
        plan = self.plan()
        device = self.encs[0].device
        workers = decode_workers(self.cfg, device)
        # One decoder: the reader thread itself (a pool's hand-offs cost more GIL than they save there).
        pool = ThreadPoolExecutor(workers, thread_name_prefix="av2t-decode") if workers > 1 else False
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="av2t-read")
        # Encoders on the CPU need its cores, and every Python thread more takes the GIL from their forward:
        # there the reader thread also writes (measured best, bench/bench_extract.py). Beside a GPU the
        # host has cores to spare and paper-size blocks take long to write: writers of their own.
        writer = (
            reader if device.type == "cpu" else ThreadPoolExecutor(WRITERS, thread_name_prefix="av2t-write")
        )
        behind = AHEAD_BLOCKS if device.type == "cpu" else AHEAD_BLOCKS + WRITERS
        ahead: deque[Future] = deque(reader.submit(self.decode, w, pool) for w in plan[:AHEAD_BLOCKS])
        writes: deque[Future] = deque()
        try:
            for i in range(len(plan)):
                with self.t.part("wait for input"):
                    work = ahead.popleft().result()
                if i + AHEAD_BLOCKS < len(plan):
                    ahead.append(reader.submit(self.decode, plan[i + AHEAD_BLOCKS], pool))
                if work.failures and self.cfg.on_error == "stop":
                    _drain(writes)  # everything before this block is kept
                    f = work.failures[0]
                    raise DataError(
                        f"{f['error']} (video {f['video']} frame {f['frame']}; rows done so far are kept; fix "
                        "the file and run again, or pass on_error=skip)"
                    )
                try:
                    out = self.compute(work)
                except StoreError:
                    _drain(writes)
                    raise
                while len(writes) >= behind:
                    with self.t.part("wait for writes"):
                        writes.popleft().result()
                writes.append(writer.submit(self.write, work, out))
                res = results[work.shard]
                for j, (todo, computed) in enumerate(zip(work.todo, work.computed, strict=True)):
                    res["computed"][j] += len(computed)
                    if progress:
                        progress(len(todo))
                res["failures"] += work.failures
            with self.t.part("wait for writes"):
                _drain(writes)
        finally:
            for f in ahead:
                f.cancel()
            for ex in {reader, writer, pool} - {False}:
                ex.shutdown(wait=True)
        return results


def _drain(writes: deque[Future]) -> None:
    """Wait for every pending write; the first error raised."""
    while writes:
        writes.popleft().result()


def extract_shard(
    cfg: ExtractConfig,
    shard: Shard,
    progress: Callable[[int], None] | None = None,
    timings: Timings | None = None,
) -> dict[str, Any]:
    """Compute and write one shard's pending rows; returns rows computed per encoder and the failures."""
    with torch_threads(cfg.threads):
        return Extraction(cfg, [shard], timings).run(progress)[0]


def summarize(cfg: ExtractConfig) -> dict[str, Any]:
    """Rows done / total and failures per split and encoder sub-group in the store."""
    store = FeatureStore(cfg.store, mode="r")
    out = {}
    for split in cfg.splits:
        group = store.split(cfg.subset, split)
        for name in cfg.encoders:
            enc = cfg_encoder(cfg, name)
            eg = group.encoder(name, fingerprint(with_precision(enc.provenance(), compute_precision(cfg))))
            out[f"{split}/{eg.key}"] = {
                "rows_done": eg.rows_done(),
                "rows_total": group.n_rows,
                "failures": len(eg.failures()),
            }
    return out


def extract_negatives(cfg: ExtractConfig) -> dict[str, str]:
    """With cfg.negatives, per split: CLAP's embedding of silence and of every row's white noise, beside the
    split's clap features (cache.negatives); rows already stored for this CLAP and seed are kept.

    A pass after the clap features exist: the CLAP encoder on `silence_segment` / `noise_segment` segments of
    its own length, batched, cast and checked as extraction casts its features. split -> negatives key.
    """
    if not cfg.negatives:
        return {}
    enc = cfg_encoder(cfg, "clap")
    precision, size = compute_precision(cfg), encoder_batch_size(cfg, "clap")
    store, out = FeatureStore(cfg.store), {}
    for split in cfg.splits:
        group = store.split(cfg.subset, split)
        fp = fingerprint(with_precision(enc.provenance(), precision))
        try:
            eg = group.encoder("clap", fp)
        except StoreError as e:
            raise StoreError(f"{e}; --negatives needs the clap features: add clap to --encoders") from e
        if has_negative_clap(cfg.store, cfg.subset, split, fp, cfg.negatives_seed):
            out[split] = "kept"
            continue
        spec = {"clap": eg.specs["clap"]}
        n, index, seed = segment_samples(enc), group.index, cfg.negatives_seed

        def embed(segments: np.ndarray, eg=eg, spec=spec) -> np.ndarray:
            stored, bad = encode_on_device(enc, enc.host_input(segments), spec, precision)
            if bool(bad.any()):
                raise StoreError(f"{eg.key}: non-finite CLAP embedding of negative audio")
            return stored["clap"].cpu().numpy()

        with torch_threads(cfg.threads):  # noise made batch by batch: a whole split at once is 100s of MB
            silence = embed(silence_segments(n))
            batches = [slice(i, i + size) for i in range(0, group.n_rows, size)]
            noise = [embed(noise_segments(n, seed, index.video[b], index.frame[b])) for b in batches]
        embs = (silence, np.concatenate(noise) if noise else np.zeros((0, *spec["clap"].shape)))
        out[split] = write_negative_clap(
            cfg.store, cfg.subset, split, fp, cfg.negatives_seed, *embs, spec["clap"].dtype
        )
    return out


def extract(cfg: ExtractConfig, progress: bool = True, timings: Timings | None = None) -> dict[str, Any]:
    """Run every pending shard in this process (the flow fans the same shards out as tasks)."""
    from tqdm import tqdm

    t = time.perf_counter()
    shards = prepare(cfg)
    prepared = time.perf_counter() - t
    results = []
    with (
        tqdm(total=sum(s.rows for s in shards), unit="row", desc="extract", disable=not progress) as bar,
        torch_threads(cfg.threads),
    ):
        for names in dict.fromkeys(s.encoders for s in shards):  # one pipeline per input: no refills
            results += Extraction(cfg, [s for s in shards if s.encoders == names], timings).run(bar.update)
    if timings is not None:
        timings.seconds["prepare"] = prepared
    negatives = extract_negatives(cfg)
    failures = [f for r in results for f in r["failures"]]
    computed = sum(n for r in results for n in r["computed"])
    out = {"shards": len(shards), "computed": computed, "failures": failures, "negatives": negatives}
    if expressions := extract_expressions(cfg):
        out["expressions"] = expressions
    return out


MASK_RULE = (
    "the release's official GT reading at its protocol size (Ref-AVS: 256 x 256, cv2-like bilinear > 0)"
)


def extract_expressions(cfg: ExtractConfig) -> dict[str, dict[str, Any]]:
    """The (video, expression) level of a release with referring expressions (Ref-AVS): the expression table,
    each expression's text tokens and GT masks; only rows not cached yet are computed. Per split: the uids added
    to the table and those whose tokens / masks were computed now. {} for a release without expressions."""
    from cache.expressions import add_expressions, require_feature
    from pipeline.encoders.text_tokens import load_tokenizer
    from pipeline.presets import weights_dir

    release = release_of(cfg.subset)
    if release.expressions is None:
        return {}
    tok = load_tokenizer(cfg.preset, weights_dir(cfg.weights_dir))
    store = FeatureStore(cfg.store)
    out = {}
    for split in cfg.splits:
        group = store.split(cfg.subset, split)
        exprs = release.read_expressions(Path(cfg.root), split)
        by_uid = {e.uid: e for e in exprs}
        table, added = add_expressions(group, exprs)

        def tokens(rows: list[int], table=table) -> dict[str, np.ndarray]:
            ids, lengths = tok.encode([str(table.text[r]) for r in rows])
            return {"ids": ids, "length": lengths}

        def masks(rows: list[int], table=table, by_uid=by_uid) -> dict[str, np.ndarray]:
            got = [release.read_expression_masks(Path(cfg.root), by_uid[str(table.uid[r])]) for r in rows]
            return {"mask": np.stack(got).astype(np.uint8)}

        _, tok_rows = require_feature(group, "text", tok.provenance(), tokens)
        _, mask_rows = require_feature(group, "gt", {"reader": MASK_RULE, "release": release.name}, masks)
        uid = table.uid.tolist()
        out[split] = {
            "expressions": len(table),
            "added": [uid[i] for i in added],
            "tokens_computed": [uid[i] for i in tok_rows],
            "masks_computed": [uid[i] for i in mask_rows],
        }
    return out
