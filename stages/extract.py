"""The extract stage: run the frozen encoders over AVSBench clips and fill the feature store, resumably."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache import ArraySpec, EncoderGroup, FeatureStore, SplitIndex, StoreError, fingerprint
from pipeline.data.audio import Resampler, Stereo, load_segments
from pipeline.data.clips import Clip, DataError, read_clips
from pipeline.data.images import load_frame, load_mask
from pipeline.data.layout import FRAME_SIZE
from pipeline.encoders.base import Encoder
from pipeline.encoders.registry import get_encoder
from pipeline.settings import ExtractConfig


def cfg_encoder(cfg: ExtractConfig, name: str) -> Encoder:
    """The encoder an extraction config asks for."""
    return get_encoder(name, cfg.preset, cfg.weights_dir, cfg.device, cfg.overrides.get(name))


@dataclass(frozen=True)
class Shard:
    """A unit of work: some blocks of one encoder in one split."""

    split: str
    encoder: str
    blocks: tuple[int, ...]
    rows: int


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
    shards = []
    for split, index in indexes.items():
        group = store.require_split(cfg.subset, split, index, cfg.block_rows)
        for name in cfg.encoders:
            enc = cfg_encoder(cfg, name)
            eg = require_encoder_group(cfg, group, enc)
            pending = eg.pending_blocks()
            for i in range(0, len(pending), blocks_per_shard):
                blocks = tuple(pending[i : i + blocks_per_shard])
                rows = sum(len(range(*group.block_slice(b).indices(group.n_rows))) for b in blocks)
                shards.append(Shard(split, name, blocks, rows))
    return shards


def require_encoder_group(cfg: ExtractConfig, group, enc: Encoder) -> EncoderGroup:
    """The encoder's sub-group for its fingerprint, with its arrays declared."""
    fixed = enc.output_dtypes()
    arrays = {
        k: ArraySpec(tuple(v), fixed.get(k, cfg.dtype), cfg.codec) for k, v in enc.output_shapes().items()
    }
    return group.require_encoder(enc.name, enc.provenance(), arrays, cfg.allow_other_fingerprints)


class InputCache:
    """Decoded audio per video within one shard (five rows of a video share one WAV)."""

    def __init__(self, rate: int | None, stereo: Stereo = "mean", resampler: Resampler = "polyphase"):
        self.rate, self.stereo, self.resampler, self.audio = rate, stereo, resampler, {}

    @classmethod
    def for_encoder(cls, enc: Encoder) -> InputCache:
        """Audio loaded the way the encoder asks for (its sample rate, stereo handling and resampler)."""
        return cls(**enc.audio_loading())

    def segments(self, clip: Clip) -> np.ndarray:
        """(5, samples) segments of a clip's audio: (5, rate) mono, or longer with stereo="flatten"."""
        if clip.id not in self.audio:
            self.audio[clip.id] = load_segments(
                clip.audio_path, self.rate, stereo=self.stereo, resampler=self.resampler
            )
        return self.audio[clip.id]


_DECODE_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="av2t-decode")


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
        return load_mask(path) if path is not None else np.zeros(FRAME_SIZE[::-1], bool)
    except DataError as e:
        return e


def load_inputs(enc: Encoder, clips: dict[str, Clip], index: SplitIndex, rows: np.ndarray, cache: InputCache):
    """Raw inputs of the rows (frames or audio segments) and a failure record for each bad one."""
    keys = [(clips[index.video[r]], int(index.frame[r])) for r in rows]
    if enc.input != "audio":  # PNG decoding releases the GIL: decode in parallel
        loaded = list(_DECODE_POOL.map(lambda ck: _load_one(enc, *ck, cache), keys))
    else:  # five rows share one WAV: decode each once, in order
        loaded = [_load_one(enc, c, k, cache) for c, k in keys]
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


def encode_rows(enc: Encoder, items: list[np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Run the encoder over inputs in batches; float32 numpy outputs in the items' order.

    Inputs of one shape are batched together (in order); inputs of other shapes (stereo="flatten" audio of
    a stereo file is twice as long as a mono file's) are batched among themselves.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(items):
        groups.setdefault(np.shape(x), []).append(i)
    outs = {k: np.zeros((len(items), *s), np.float32) for k, s in enc.output_shapes().items()}
    for idx in groups.values():
        for i in range(0, len(idx), batch_size):
            rows = idx[i : i + batch_size]
            x = enc.preprocess(np.stack([items[r] for r in rows])).to(enc.device, non_blocking=True)
            with torch.inference_mode():
                y = enc.encode(x)
            for k in outs:
                outs[k][rows] = y[k].float().cpu().numpy()
    return outs


def extract_shard(
    cfg: ExtractConfig, shard: Shard, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Compute and write one shard's pending rows; returns counts and failures."""
    if not cfg.threads:
        return _extract_shard(cfg, shard, progress)
    # CPU kernels reduce in a thread-count-dependent order: pin it to reproduce features bit for bit,
    # and give the caller its own setting back afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _extract_shard(cfg, shard, progress)
    finally:
        torch.set_num_threads(before)


def _extract_shard(
    cfg: ExtractConfig, shard: Shard, progress: Callable[[int], None] | None
) -> dict[str, Any]:
    clips, _ = split_index(cfg, shard.split)
    by_id = {c.id: c for c in clips}
    group = FeatureStore(cfg.store).split(cfg.subset, shard.split)
    enc = cfg_encoder(cfg, shard.encoder)
    eg = require_encoder_group(cfg, group, enc)
    index, cache = group.index, InputCache.for_encoder(enc)
    computed, failed = 0, []
    done_all = eg.done_mask()  # one read per shard: this shard's blocks have no other writer
    for b in shard.blocks:
        sl = group.block_slice(b)
        done = done_all[sl]
        todo = np.arange(sl.start, sl.stop)[~done]  # rows already done are never recomputed
        if not len(todo):
            continue
        items, ok, failures = load_inputs(enc, by_id, index, todo, cache)
        if failures and cfg.on_error == "stop":
            f = failures[0]
            raise DataError(
                f"{f['error']} (video {f['video']} frame {f['frame']}; {eg.key} rows done so far are kept; "
                "fix the file and run again, or pass on_error=skip)"
            )
        # Rows done before and rows that failed keep what the store holds; the rest are computed.
        block = eg.read_block(b) if done.any() or not ok.all() else {}
        if items:
            for k, v in encode_rows(enc, items, cfg.batch_size).items():
                full = (
                    block[k].astype(np.float32)
                    if k in block
                    else np.zeros((sl.stop - sl.start, *v.shape[1:]), np.float32)
                )
                full[todo[ok] - sl.start] = v
                block[k] = full
        block_ok = np.zeros(sl.stop - sl.start, bool)
        block_ok[todo[ok] - sl.start] = True
        eg.write_block(b, block, ok=block_ok)
        if failures or done.any():  # a partly done block is a retry: clear or renew its failure records
            eg.record_failures(b, failures)
        computed += int(ok.sum())
        failed += failures
        if progress:
            progress(len(todo))
    return {"split": shard.split, "encoder": shard.encoder, "computed": computed, "failures": failed}


def summarize(cfg: ExtractConfig) -> dict[str, Any]:
    """Rows done / total and failures per split and encoder sub-group in the store."""
    store = FeatureStore(cfg.store, mode="r")
    out = {}
    for split in cfg.splits:
        group = store.split(cfg.subset, split)
        for name in cfg.encoders:
            enc = cfg_encoder(cfg, name)
            eg = group.encoder(name, fingerprint(enc.provenance()))
            out[f"{split}/{eg.key}"] = {
                "rows_done": eg.rows_done(),
                "rows_total": group.n_rows,
                "failures": len(eg.failures()),
            }
    return out


def extract(cfg: ExtractConfig, progress: bool = True) -> dict[str, Any]:
    """Run every pending shard in this process (the flow fans the same shards out as tasks)."""
    from tqdm import tqdm

    shards = prepare(cfg)
    with tqdm(total=sum(s.rows for s in shards), unit="row", desc="extract", disable=not progress) as bar:
        results = [extract_shard(cfg, s, bar.update) for s in shards]
    failures = [f for r in results for f in r["failures"]]
    return {"shards": len(shards), "computed": sum(r["computed"] for r in results), "failures": failures}
