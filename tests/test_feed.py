"""The train stage's reader (cache.feed): resident and streaming give the same batches; damage is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from store_helpers import block_data, open_encoder

from cache.batches import Source
from cache.errors import StoreDamaged
from cache.feed import TrainReader, block_order, open_reader
from cache.shards import object_key


@pytest.fixture
def store(tmp_path) -> tuple[str, object]:
    url = str(tmp_path / "f.zarr")
    enc = open_encoder(url)  # 65 rows, blocks of 4
    for b in range(enc.split.n_blocks):
        enc.write_block(b, block_data(enc, b))
    return url, enc


def _src(enc) -> dict[str, Source]:
    return {"emb": Source(enc.key, "emb"), "fmap": Source(enc.key, "fmap")}


def _epoch(reader: TrainReader, e: int) -> list[dict[str, torch.Tensor]]:
    return list(reader.epoch(e))


def _reader(url, enc, mode, **kw) -> TrainReader:
    kw = {"batch_size": 8, "shuffle": True, "seed": 5, "window": 3, "threads": 2, **kw}
    return open_reader(url, "s4", "test", _src(enc), mode=mode, **kw)


def test_resident_and_streaming_serve_identical_batches(store):
    url, enc = store
    res, st = _reader(url, enc, "resident"), _reader(url, enc, "streaming")
    assert (res.mode, st.mode) == ("resident", "streaming")
    assert len(res) == len(st) == 9
    want = {k: enc.array(k)[:] for k in ("emb", "fmap")}
    for e in (0, 1):
        a, b = _epoch(res, e), _epoch(st, e)
        assert len(a) == len(b) == len(res)
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys() == {"row", "emb", "fmap"}
            for k in x:
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k])
            assert x["fmap"].dtype == torch.float16
            np.testing.assert_array_equal(x["fmap"].numpy(), want["fmap"][x["row"].numpy()])


def test_order_is_deterministic_per_seed_and_changes_with_the_epoch(store):
    url, enc = store
    r = _reader(url, enc, "auto")
    rows = lambda e: np.concatenate([b["row"].numpy() for b in _epoch(r, e)])  # noqa: E731
    e0, e1 = rows(0), rows(1)
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(enc.split.n_rows))
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(rows(0), e0)
    other = _reader(url, enc, "auto", seed=6)
    assert not np.array_equal(np.concatenate([b["row"].numpy() for b in _epoch(other, 0)]), e0)
    # Rows of one window come from at most `window` blocks.
    o = block_order(np.arange(65), 4, True, 5, 0, 3)
    assert len(np.unique(o[:12] // 4)) <= 3 and sorted(o.tolist()) == list(range(65))


def test_validation_reads_rows_in_index_order_and_rows_restrict(store):
    url, enc = store
    for mode in ("resident", "streaming"):
        v = _reader(url, enc, mode, shuffle=False)
        got = np.concatenate([b["row"].numpy() for b in _epoch(v, 0)])
        np.testing.assert_array_equal(got, np.arange(enc.split.n_rows))
        sub = np.array([1, 2, 9, 30, 31, 32, 64])
        s = _reader(url, enc, mode, shuffle=False, rows=sub, batch_size=3)
        batches = _epoch(s, 0)
        np.testing.assert_array_equal(np.concatenate([b["row"].numpy() for b in batches]), sub)
        np.testing.assert_array_equal(
            torch.cat([b["emb"] for b in batches]).numpy(), enc.array("emb")[:][sub]
        )
        sh = _reader(url, enc, mode, rows=sub, batch_size=3)
        assert sorted(np.concatenate([b["row"].numpy() for b in _epoch(sh, 0)]).tolist()) == sub.tolist()


def test_budget_decides_the_mode_and_describe_says_so(store):
    url, enc = store
    small = _reader(url, enc, "auto", memory_budget=1000)
    assert small.mode == "streaming"
    line = small.describe()
    assert "streaming" in line and "budget 0.00 GiB (set)" in line and "65 rows" in line
    big = _reader(url, enc, "auto", memory_budget=2**30)
    assert big.mode == "resident" and "resident" in big.describe()
    default = _reader(url, enc, "auto")
    assert default.mode == "resident" and "of available host RAM" in default.describe()
    assert _reader(url, enc, "streaming", memory_budget=2**30).mode == "streaming"


def test_max_steps_and_random_access(store):
    url, enc = store
    st = _reader(url, enc, "streaming")
    assert len(list(st.epoch(0, max_steps=3))) == 3
    res = _reader(url, enc, "resident")
    st.set_epoch(1)
    res.set_epoch(1)
    assert torch.equal(st[4]["fmap"], res[4]["fmap"])  # out of order: read directly


@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_a_damaged_chunk_raises_store_damaged(store, mode):
    url, enc = store
    path = Path(url) / object_key(enc.group["fmap"], 2)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    path.write_bytes(bytes(data))
    with pytest.raises(StoreDamaged, match=r"s4/test fake@\w+ fmap rows? .*checksum mismatch"):
        _epoch(_reader(url, enc, mode), 0)


def _none_store(url: str, block_rows: int = 4):
    """Uncompressed arrays (the default codec): sharded (several chunks per shard), one chunk per shard."""
    from store_helpers import PROVENANCE, make_index

    from cache import ArraySpec, FeatureStore

    g = FeatureStore(url).require_split("s4", "test", make_index(), block_rows=block_rows)
    specs = {"emb": ArraySpec((8,), "float16"), "big": ArraySpec((64, 64, 64), "float16")}
    enc = g.require_encoder("plain", PROVENANCE, specs)
    rng = np.random.default_rng(0)
    for b in range(g.n_blocks):
        sl = g.block_slice(b)
        n = sl.stop - sl.start
        enc.write_block(
            b,
            {
                "emb": rng.standard_normal((n, 8)).astype(np.float16),
                "big": rng.standard_normal((n, 64, 64, 64)).astype(np.float16),
            },
        )
    return enc


def test_uncompressed_objects_read_without_zarr_decoding_equal_zarr(tmp_path):
    from cache.shards import object_rows_raw
    from cache.specs import DEFAULT_CODEC

    url = str(tmp_path / "n.zarr")
    enc = _none_store(url)
    assert DEFAULT_CODEC == "none" and enc.specs["big"].codec == "none"
    assert enc.group["big"].shards is not None  # 512 KiB rows: sharded, one row per inner chunk
    for name in ("emb", "big"):
        arr = enc.array(name)
        for b in range(enc.split.n_blocks):
            rows = object_rows_raw(arr, b)
            assert rows is not None
            np.testing.assert_array_equal(np.stack(rows), arr[enc.split.block_slice(b)])
    src = {k: Source(enc.key, k) for k in ("emb", "big")}
    kw = {"batch_size": 5, "shuffle": True, "seed": 1, "window": 2}
    res = open_reader(url, "s4", "test", src, mode="resident", **kw)
    st = open_reader(url, "s4", "test", src, mode="streaming", **kw)
    big = enc.array("big")[:]
    for x, y in zip(res.epoch(0), st.epoch(0), strict=True):
        assert torch.equal(x["big"], y["big"]) and torch.equal(x["emb"], y["emb"])
        np.testing.assert_array_equal(x["big"].numpy(), big[x["row"].numpy()])


@pytest.mark.parametrize("mode", ["resident", "streaming"])
@pytest.mark.parametrize("what", ["data", "index"])
def test_damage_in_an_uncompressed_shard_raises_store_damaged(tmp_path, mode, what):
    url = str(tmp_path / "n.zarr")
    enc = _none_store(url)
    path = Path(url) / object_key(enc.group["big"], 3)
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if what == "data" else len(data) - 10  # a row, or the shard index
    data[at : at + 4] = bytes(b ^ 0xFF for b in data[at : at + 4])
    path.write_bytes(bytes(data))
    src = {k: Source(enc.key, k) for k in ("emb", "big")}
    with pytest.raises(
        StoreDamaged, match=r"s4/test plain@\w+ big rows? 1[2-5].*(checksum mismatch|undecodable)"
    ):
        list(open_reader(url, "s4", "test", src, mode=mode, batch_size=4, shuffle=True).epoch(0))
