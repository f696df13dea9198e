"""Negative-audio training: which rows become negatives, what they hold, and a head trained with them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic_run import synthetic_store

from cache import StoreError
from cache.batches import MASK
from cache.index import SplitIndex
from cache.negative_batches import CLAP, NegativeBank, NegativeMixer
from pipeline.model import head_config
from pipeline.negatives import category_group, least_suitable, offscreen_rank
from pipeline.settings import ExtractConfig, OptimConfig, TrainConfig
from stages.extract import extract
from stages.train import sweep, train

D = 6
# Two videos per category, three frames each: every group has another group to draw from.
CATEGORIES = ["playing_piano", "male_speech", "dog_barking", "helicopter"]


def hand_index(categories: list[str], videos_per: int = 2, frames: int = 3) -> SplitIndex:
    """An index of videos v<c><i> with `frames` rows each, in category order."""
    rows = [
        (f"v{c}{i}", k, cat, True)
        for c, cat in enumerate(categories)
        for i in range(videos_per)
        for k in range(1, frames + 1)
    ]
    return SplitIndex.from_rows(rows)


def hand_bank(index: SplitIndex) -> NegativeBank:
    """CLAP row r = r + 1 everywhere (so a swapped-in row names its source); silence -1; noise -2 - j."""
    n = len(index)
    clap = torch.arange(1, n + 1, dtype=torch.float32)[:, None].expand(n, D).clone()
    noise = -2 - torch.arange(4, dtype=torch.float32)[:, None].expand(4, D).clone()
    return NegativeBank(index, offscreen_rank, clap=clap, silence=torch.full((1, D), -1.0), noise=noise)


def hand_batch(bank: NegativeBank, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """The rows' own CLAP, full masks, and a stand-in visual field."""
    return {
        CLAP: bank.clap[torch.from_numpy(rows)].clone(),
        MASK: torch.ones(len(rows), 8, 8),
        "clip": torch.randn(len(rows), 4),
    }


def swapped(batch, out) -> np.ndarray:
    """Positions whose CLAP changed."""
    return np.flatnonzero((batch[CLAP] != out[CLAP]).any(1).numpy())


def offscreen_draws(
    index: SplitIndex, seed: int, size: int, steps: int, epoch: int = 0, rng_base: int = 0
) -> list[tuple[int, int]]:
    """(row, the store row whose CLAP it took) of every off-screen negative of `steps` batches of `size` rows
    (drawn with generators seeded rng_base + step), share 0.5, from the hand bank."""
    bank = hand_bank(index)
    mix = NegativeMixer(0.5, {"offscreen": 1.0}, bank, seed=seed)
    draws = []
    for step in range(steps):
        rows = np.random.default_rng(rng_base + step).choice(len(index), size, replace=False)
        batch = hand_batch(bank, rows)
        out = mix.apply(batch, rows, epoch, step)
        draws += [(int(rows[p]), int(out[CLAP][p, 0]) - 1) for p in swapped(batch, out)]
    return draws


@pytest.mark.parametrize("share,size,expected", [(0.25, 8, 2), (0.5, 8, 4), (0.25, 4, 1), (0.25, 3, 1)])
def test_the_share_of_rows_is_swapped_and_their_masks_emptied(share, size, expected):
    index = hand_index(CATEGORIES)
    bank = hand_bank(index)
    mix = NegativeMixer(share, {"offscreen": 1.0}, bank, seed=0)
    for step in range(20):
        rows = np.random.default_rng(step).choice(len(index), size, replace=False)
        batch = hand_batch(bank, rows)
        kept = {k: v.clone() for k, v in batch.items()}
        out = mix.apply(batch, rows, epoch=0, step=step)
        neg = swapped(batch, out)
        assert len(neg) == expected
        assert (out[MASK][neg] == 0).all()
        rest = np.setdiff1d(np.arange(size), neg)
        assert torch.equal(out[MASK][rest], batch[MASK][rest]) and torch.equal(out["clip"], batch["clip"])
        for k in batch:  # the batch given is untouched: the other heads of a sweep read it
            assert torch.equal(batch[k], kept[k])


def test_offscreen_audio_is_another_videos_from_another_group():
    index = hand_index(CATEGORIES)
    draws = offscreen_draws(index, seed=3, size=6, steps=50, epoch=1, rng_base=100)
    for row, src in draws:
        own, other = index.category[row], index.category[src]
        assert index.video[src] != index.video[row]
        assert category_group(other) not in {category_group(own), least_suitable(category_group(own))}
        assert offscreen_rank(own, other) == 0
    assert len(draws) == 50 * 3


def test_without_categories_offscreen_audio_is_any_other_video():
    index = hand_index([""], videos_per=4)  # MS3: the index holds no category
    draws = offscreen_draws(index, seed=1, size=4, steps=40)
    assert all(index.video[src] != index.video[row] for row, src in draws)
    assert (
        len({index.video[src] for _, src in draws}) == 4
    )  # every video serves as another's off-screen audio


def test_silence_and_noise_rows_come_from_the_bank_in_their_weights():
    index = hand_index(CATEGORIES)
    bank = hand_bank(index)
    mix = NegativeMixer(0.5, {"silence": 1.0, "noise": 3.0}, bank, seed=0)
    seen = []
    for step in range(200):
        rows = np.arange(8) + step % 16
        batch = hand_batch(bank, rows)
        out = mix.apply(batch, rows, 0, step)
        seen += [float(out[CLAP][p, 0]) for p in swapped(batch, out)]
    seen = np.array(seen)
    assert set(seen.tolist()) <= {-1.0, -2.0, -3.0, -4.0, -5.0} and len(seen) == 800
    assert 0.2 < (seen == -1).mean() < 0.3  # silence weight 1 of 4
    assert len(set(seen[seen < -1].tolist())) == 4  # noise rows drawn across the bank


def test_plans_repeat_for_a_seed_and_differ_for_another():
    index = hand_index(CATEGORIES)
    bank = hand_bank(index)
    rows = np.arange(8)
    weights = dict.fromkeys(("silence", "noise", "offscreen"), 1.0)

    def plans(seed: int) -> list:
        mix = NegativeMixer(0.25, weights, bank, seed)
        return [
            (p.positions.tolist(), p.conditions, p.sources.tolist())
            for p in (mix.plan(rows, e, s) for e in range(3) for s in range(10))
        ]

    assert plans(7) == plans(7)
    assert plans(7) != plans(8)
    first = plans(7)
    assert len({str(p) for p in first}) > 20  # a fresh draw per (epoch, step)


def test_head_config_validates_negatives():
    with pytest.raises(ValueError, match="unknown negative conditions"):
        head_config("tiny", negatives=0.25, negative_conditions={"music": 1.0})
    with pytest.raises(ValueError, match="one above 0"):
        head_config("tiny", negatives=0.25, negative_conditions={"silence": 0.0})
    with pytest.raises(ValueError):
        head_config("tiny", negatives=1.0)
    assert head_config("tiny").negative_weights() == {}
    assert head_config(
        "tiny", negatives=0.2, negative_conditions={"noise": 1, "offscreen": 3}
    ).negative_weights() == {
        "noise": 0.25,
        "offscreen": 0.75,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A small synthetic S4 store (train and val) with every encoder, no negative rows yet."""
    return synthetic_store(tmp_path_factory.mktemp("negtrain"), videos=8, seed=6, test_fraction=None,
                           splits=["train", "val"])  # fmt: skip


def _cfg(store: str, out, **kw) -> TrainConfig:
    return TrainConfig(
        store=store, subset="s4", device="cpu", out=out, progress=False,
        optim=OptimConfig(epochs=1, batch_size=4), **kw,
    )  # fmt: skip


def test_silence_or_noise_without_negative_rows_fails_naming_the_command(run, tmp_path):
    head = head_config("tiny", negatives=0.25, negative_conditions={"silence": 1.0})
    with pytest.raises(StoreError, match="--negatives") as err:
        train(_cfg(run["store"], tmp_path / "run", head=head))
    assert "s4/train" in str(err.value)  # names the split whose rows are missing
    assert not (tmp_path / "run" / "last.pt").exists()  # failed before any step


@pytest.mark.slow
def test_a_sweep_trains_heads_with_and_without_negatives(run, tmp_path):
    store = run["store"]
    extract(
        ExtractConfig(root=run["root"], subset="s4", splits=["train"], store=store, device="cpu",
                      encoders=["clap"], negatives=True),
        progress=False,
    )  # fmt: skip
    heads = {"plain": head_config("tiny"), "neg": head_config("tiny", negatives=0.25)}
    table = sweep(_cfg(store, tmp_path / "sweep"), heads)
    assert table["negatives"].tolist() == [0.0, 0.25]
    for name, head in heads.items():
        best = torch.load(tmp_path / "sweep" / name / "best.pt", weights_only=True)
        assert best["head"]["negatives"] == head.negatives
        assert best["head"]["negative_conditions"] == head.negative_conditions
    plain = pd.read_csv(tmp_path / "sweep" / "plain" / "metrics.csv")
    neg = pd.read_csv(tmp_path / "sweep" / "neg" / "metrics.csv")
    assert neg["train_loss"][0] != pytest.approx(plain["train_loss"][0], abs=1e-4)  # its batches differ
    alone = tmp_path / "alone"
    train(_cfg(store, alone, head=heads["plain"]))
    # The head without negatives saw the batches unchanged by its neighbour's negatives.
    pd.testing.assert_frame_equal(
        plain.drop(columns="seconds"), pd.read_csv(alone / "metrics.csv").drop(columns="seconds"), atol=1e-6
    )


def test_ms3_object_lists_draw_offscreen_audio_of_the_best_contrast():
    # v1m-style categories (a_obj object lists): the device video is the only rank-0 partner of the others, and
    # the animal-only video of it (device avoids music, not animal).
    index = hand_index(["cat_piano", "dog_piano", "emergency-car_mower", "cat_dog"], videos_per=1)
    draws = offscreen_draws(index, seed=2, size=6, steps=40)
    for row, src in draws:
        own, other = index.category[row], index.category[src]
        assert offscreen_rank(own, other) == 0
        assert other == ("cat_dog" if own == "emergency-car_mower" else "emergency-car_mower")
    assert len(draws) == 40 * 3
