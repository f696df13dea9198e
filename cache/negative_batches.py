"""Negative rows in training batches: a share of a batch's rows gets audio that sounds nothing on screen, and
an empty target mask.

A negative row keeps its frame (CLIP, SAM 2, BEiT-3 features) and takes a CLAP row that is not its own audio:
offscreen (a frame of another video, from another semantic group when there is one, the pools of
`pipeline.negatives.offscreen_partners`, whose ranking the caller passes as `rank`), silence or noise (CLAP of those segments, written by
`av2t extract --negatives`, `cache.negatives`). Which rows, which condition and which source row are drawn from
(run seed, epoch, step): the same for every head of a sweep with the same settings, and after a resume.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from cache.batches import MASK
from cache.index import SplitIndex
from cache.store import EncoderGroup

CLAP = "clap"  # the batch field of the CLAP row (the model's cached array)
STREAM = zlib.crc32(b"negative rows")  # keeps these draws apart from the shuffling's (seed, epoch) stream


@dataclass(frozen=True)
class NegativePlan:
    """One step's negatives: batch positions, their condition, and the row of that condition's bank each takes."""

    positions: np.ndarray  # int64, sorted
    conditions: tuple[str, ...]
    sources: np.ndarray  # int64: offscreen, a store row of the split; silence 0; noise, a noise row


@dataclass
class NegativeBank:
    """Where negative CLAP rows come from: the split's cached rows (offscreen), silence and noise (when read)."""

    index: SplitIndex
    # (own category, other category) -> 0 the best off-screen contrast .. 2 any other video will do
    rank: Callable[[str | None, str | None], int]
    clap: torch.Tensor | None = None  # (n_rows, d) the split's CLAP rows, float32
    silence: torch.Tensor | None = None  # (1, d)
    noise: torch.Tensor | None = None  # (n_noise, d)
    pools: dict[str, np.ndarray | None] = field(init=False)

    def __post_init__(self) -> None:
        """Offscreen pools per category: the rows of the categories of its best `rank` below 2; None (rank 2: no
        category tells, as in MS3 of the object release): any other video."""
        category = self.index.category.astype(str)
        names = list(dict.fromkeys(category.tolist()))
        self.pools = {}
        for c in names:
            ranks = {o: self.rank(c or None, o or None) for o in names}
            best = min(ranks.values())
            fitting = [o for o, r in ranks.items() if r == best]
            self.pools[c] = np.flatnonzero(np.isin(category, fitting)) if best < 2 else None

    def table(self, condition: str) -> torch.Tensor:
        """The CLAP rows of a condition (offscreen: the split's own rows)."""
        t = {"offscreen": self.clap, "silence": self.silence, "noise": self.noise}[condition]
        if t is None:
            raise ValueError(f"negative condition {condition!r}: its CLAP rows were not read into the bank")
        return t

    def offscreen_row(self, row: int, rng: np.random.Generator) -> int:
        """A store row of another video (of the best contrast the split has) for this row's frame."""
        pool = self.pools[str(self.index.category[row])]
        if pool is None:
            pool = np.flatnonzero(self.index.video != self.index.video[row])
            if not len(pool):
                raise ValueError("offscreen negatives need at least two videos in the training split")
        return int(pool[rng.integers(len(pool))])


class NegativeMixer:
    """Replaces a share of each batch's rows by negatives (drawn per step from the seed), for one head."""

    def __init__(self, share: float, weights: Mapping[str, float], bank: NegativeBank, seed: int):
        if not 0 < share < 1:
            raise ValueError(f"negatives share {share}: must be in (0, 1)")
        self.share, self.bank, self.seed = share, bank, seed
        self.names = tuple(c for c, w in weights.items() if w > 0)
        p = np.array([weights[c] for c in self.names], dtype=np.float64)
        self.p = p / p.sum()
        for c in self.names:
            bank.table(c)  # every condition drawn has its rows

    def count(self, batch_rows: int) -> int:
        """Negative rows in a batch of this size: the share, rounded half up."""
        return int(np.floor(self.share * batch_rows + 0.5))

    def plan(self, rows: np.ndarray, epoch: int, step: int) -> NegativePlan:
        """Which positions of a batch of these store rows become negatives, with which condition and source."""
        rng = np.random.default_rng([self.seed, STREAM, epoch, step])
        k = self.count(len(rows))
        positions = np.sort(rng.choice(len(rows), size=k, replace=False)).astype(np.int64)
        conditions = tuple(self.names[i] for i in rng.choice(len(self.names), size=k, p=self.p))
        sources = []
        for pos, c in zip(positions.tolist(), conditions, strict=True):
            if c == "offscreen":
                sources.append(self.bank.offscreen_row(int(rows[pos]), rng))
            elif c == "noise":
                sources.append(int(rng.integers(len(self.bank.table("noise")))))
            else:
                sources.append(0)
        return NegativePlan(positions, conditions, np.array(sources, dtype=np.int64))

    def apply(
        self,
        batch: Mapping[str, torch.Tensor],
        rows: np.ndarray,
        epoch: int,
        step: int,
        whole: np.ndarray | None = None,
        at: int = 0,
    ) -> dict[str, torch.Tensor]:
        """A copy of the (device, float) batch with the planned rows' CLAP swapped and masks emptied; the batch
        given is left as it is (other heads of a sweep read it).

        Data parallel: `whole` is the step's global batch and `at` where this rank's rows start in it; the plan
        is drawn for the global batch (as one process would) and this rank applies its part.
        """
        plan = self.plan(rows if whole is None else whole, epoch, step)
        if whole is not None:
            keep = (plan.positions >= at) & (plan.positions < at + len(rows))
            plan = NegativePlan(
                plan.positions[keep] - at,
                tuple(c for c, k in zip(plan.conditions, keep.tolist(), strict=True) if k),
                plan.sources[keep],
            )
        out = dict(batch)
        if not len(plan.positions):
            return out
        clap, mask = batch[CLAP].clone(), batch[MASK].clone()
        new = torch.stack(
            [self.bank.table(c)[s] for c, s in zip(plan.conditions, plan.sources.tolist(), strict=True)]
        )
        pos = torch.from_numpy(plan.positions).to(clap.device)
        clap[pos] = new.to(device=clap.device, dtype=clap.dtype)
        mask[pos] = 0
        out[CLAP], out[MASK] = clap, mask
        return out


def read_clap_rows(clap: EncoderGroup, device: torch.device) -> torch.Tensor:
    """Every cached CLAP row of a split, (n_rows, d) float32 on the device (CLAP rows are never quantised)."""
    return torch.from_numpy(clap.read(CLAP, slice(None))).to(device).float()


def negative_bank(
    store: str,
    subset: str,
    split: str,
    clap: EncoderGroup,
    conditions: set[str],
    device: torch.device,
    rank: Callable[[str | None, str | None], int],
    noise_seed: int = 0,
) -> NegativeBank:
    """The bank for these conditions: the split's CLAP rows for offscreen; silence / noise read with
    `cache.negatives.read_negative_clap` (a StoreError naming `av2t extract --negatives` when absent)."""
    bank = NegativeBank(clap.split.index, rank)
    if "offscreen" in conditions:
        bank.clap = read_clap_rows(clap, device)
    if conditions & {"silence", "noise"}:
        from cache.negatives import read_negative_clap

        rows = read_negative_clap(store, subset, split, clap.fingerprint, noise_seed)
        bank.silence = torch.from_numpy(rows["silence"]).to(device)
        bank.noise = torch.from_numpy(rows["noise"]).to(device)
    return bank
