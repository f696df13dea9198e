"""The Zarr feature store: concurrent writers, resume after a kill, fingerprints, HDF5, reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from store_helpers import ARRAYS, PROVENANCE, block_data, make_index, open_encoder

from cache import ArraySpec, FeatureStore, FingerprintMismatch, IndexMismatch, StoreError
from cache.batches import FeatureBatches, Source
from cache.hdf5 import import_h5
from cache.info import store_info
from flows.cli import main as cli
from flows.errors import one_line

HERE = Path(__file__).parent


def _writer(url: str, first: int, last: int, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    return subprocess.Popen(
        [sys.executable, str(HERE / "store_writer.py"), url, str(first), str(last), str(delay)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def _arrays(url: str) -> dict[str, np.ndarray]:
    enc = FeatureStore(url, mode="r").split("s4", "test").encoder("fake")
    return {k: enc.array(k)[:] for k in ARRAYS} | {"done": enc.done_mask()}


def _reference(tmp_path: Path) -> dict[str, np.ndarray]:
    url = str(tmp_path / "reference.zarr")
    enc = open_encoder(url)
    for b in range(enc.split.n_blocks):
        enc.write_block(b, block_data(enc, b))
    return _arrays(url)


def test_two_processes_write_disjoint_blocks_bit_exact(tmp_path):
    url = str(tmp_path / "two.zarr")
    enc = open_encoder(url)  # metadata is created once, before the writers start
    n = enc.split.n_blocks
    procs = [_writer(url, 0, n // 2), _writer(url, n // 2, n)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    got, want = _arrays(url), _reference(tmp_path)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert got["done"].all()


def test_killed_writer_resumes_without_recomputing_done_rows(tmp_path):
    url = str(tmp_path / "killed.zarr")
    enc = open_encoder(url)
    n = enc.split.n_blocks
    p = _writer(url, 0, n, delay=0.3)
    for _ in range(3):  # wait for three blocks, then kill without warning
        assert p.stdout.readline().startswith("wrote")
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    done_before = enc.done_mask().copy()
    assert 0 < done_before.sum() < len(done_before)
    pending = enc.pending_blocks()
    computed = []
    for b in pending:
        computed.append(b)
        enc.write_block(b, block_data(enc, b))
    done_rows = {r for b in computed for r in range(*enc.split.block_slice(b).indices(enc.split.n_rows))}
    assert not any(done_before[r] for r in done_rows), "a row marked done was recomputed"
    got, want = _arrays(url), _reference(tmp_path)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_fingerprint_mismatch_is_refused(tmp_path):
    url = str(tmp_path / "fp.zarr")
    enc = open_encoder(url)
    other = {**PROVENANCE, "weights": "sha256:1"}
    g = FeatureStore(url).split("s4", "test")
    with pytest.raises(FingerprintMismatch, match="weights"):
        g.require_encoder("fake", other, ARRAYS)
    with pytest.raises(FingerprintMismatch, match=enc.fingerprint):
        g.encoder("fake", fingerprint="0" * 16)
    assert g.encoder("fake", enc.fingerprint).key == enc.key
    side = g.require_encoder("fake", other, ARRAYS, allow_other_fingerprints=True)
    assert side.key != enc.key and len(g.encoders()) == 2


def test_index_mismatch_and_shape_errors_are_refused(tmp_path):
    url = str(tmp_path / "idx.zarr")
    enc = open_encoder(url)
    with pytest.raises(IndexMismatch, match="clip list changed"):
        FeatureStore(url).require_split("s4", "test", make_index(12))
    with pytest.raises(StoreError, match="shape"):
        enc.write_block(0, {"emb": np.zeros((3, 8)), "fmap": np.zeros((4, 4, 16, 16))})
    bad = block_data(enc, 1)
    bad["emb"][0, 0] = np.nan
    with pytest.raises(StoreError, match="non-finite"):
        enc.write_block(1, bad)
    assert not enc.done_mask()[4:8].any()


def test_writers_never_share_a_shard(tmp_path):
    enc = open_encoder(str(tmp_path / "s.zarr"), block_rows=4)
    for name in ARRAYS:
        arr = enc.array(name)
        assert (arr.shards or arr.chunks)[0] == enc.split.block_rows
    assert enc.group["done"].chunks[0] == enc.split.block_rows


def test_hdf5_round_trip_is_bit_exact(tmp_path):
    url = str(tmp_path / "h.zarr")
    enc = open_encoder(url)
    for b in range(0, enc.split.n_blocks, 2):  # partial: the completion record must survive too
        enc.write_block(b, block_data(enc, b))
    h5 = tmp_path / "g.h5"
    assert cli(["cache", "export", url, "--h5", str(h5)]) == 0
    url2 = str(tmp_path / "back.zarr")
    assert cli(["cache", "import", url2, "--h5", str(h5)]) == 0
    a, b = _arrays(url), _arrays(url2)
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])
    g1, g2 = FeatureStore(url).split("s4", "test"), FeatureStore(url2).split("s4", "test")
    assert g1.index_digest == g2.index_digest
    assert list(g2.index.video) == list(g1.index.video)
    assert g2.encoder("fake").provenance == enc.provenance
    with pytest.raises(StoreError, match="exists"):
        import_h5(FeatureStore(url2), h5)
    assert cli(["cache", "import", url2, "--h5", str(h5)]) == 2


def test_reads_as_dask_and_as_torch_batches(tmp_path):
    url = str(tmp_path / "r.zarr")
    enc = open_encoder(url)
    for b in range(enc.split.n_blocks):
        enc.write_block(b, block_data(enc, b))
    want = enc.array("fmap")[:]
    d = enc.dask("fmap")
    assert d.shape == want.shape
    np.testing.assert_array_equal(d.mean(axis=(1, 2, 3)).compute(), want.mean(axis=(1, 2, 3)))
    src = {"emb": Source(enc.key, "emb"), "fmap": Source(enc.key, "fmap")}
    ds = FeatureBatches(url, "s4", "test", src, batch_size=8, shuffle=True, seed=3)
    seen = []
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)
    for batch in loader:
        rows = batch["row"].numpy()
        np.testing.assert_array_equal(batch["fmap"].numpy(), want[rows])
        seen += rows.tolist()
    assert sorted(seen) == list(range(enc.split.n_rows))
    ds.set_epoch(1)
    assert [b["row"].tolist() for b in ds] != [seen[i : i + 8] for i in range(0, len(seen), 8)]


def test_batches_refuse_unfinished_rows(tmp_path):
    url = str(tmp_path / "u.zarr")
    enc = open_encoder(url)
    enc.write_block(0, block_data(enc, 0))
    with pytest.raises(StoreError, match="not extracted"):
        FeatureBatches(url, "s4", "test", {"emb": Source(enc.key, "emb")})
    ok = FeatureBatches(url, "s4", "test", {"emb": Source(enc.key, "emb")}, rows=np.arange(4))
    assert len(ok) == 1


def test_spawned_dataloader_workers_read_the_store(tmp_path):
    url = str(tmp_path / "w.zarr")
    enc = open_encoder(url)
    for b in range(enc.split.n_blocks):
        enc.write_block(b, block_data(enc, b))
    ds = FeatureBatches(url, "s4", "test", {"emb": Source(enc.key, "emb")}, batch_size=16)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    total = torch.cat([b["emb"] for b in loader])
    np.testing.assert_array_equal(total.numpy(), enc.array("emb")[:])


def test_store_on_an_fsspec_filesystem():
    url = f"memory://av2t-test-{time.time_ns()}"
    enc = open_encoder(url)
    enc.write_block(0, block_data(enc, 0))
    assert FeatureStore(url, mode="r").split("s4", "test").encoder("fake").rows_done() == 4


def test_cache_info_reports_groups_encoders_and_progress(tmp_path, capsys):
    url = str(tmp_path / "i.zarr")
    enc = open_encoder(url)
    enc.write_block(0, block_data(enc, 0))
    info = store_info(FeatureStore(url, mode="r"))
    (g,) = info["groups"]
    assert (g["subset"], g["split"], g["rows"]) == ("s4", "test", 65)
    e = g["encoders"][enc.key]
    assert (e["fingerprint"], e["rows_done"], e["rows_total"]) == (enc.fingerprint, 4, 65)
    assert e["bytes_stored"] > 0 and e["compression_ratio"] > 0
    assert cli(["cache", "info", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["groups"][0]["encoders"][enc.key]["rows_done"] == 4
    assert cli(["cache", "info", url]) == 0
    assert "rows 4/65" in capsys.readouterr().out
    assert cli(["cache", "info", str(tmp_path / "nothing.zarr")]) == 2


def test_codecs_round_trip(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 4, 16, 16)).astype(np.float16)
    idx = make_index(1)
    for codec in ("none", "zstd", "blosc-lz4", "blosc-zstd-bitshuffle"):
        g = FeatureStore(str(tmp_path / f"{codec}.zarr")).require_split("s4", "test", idx, block_rows=5)
        enc = g.require_encoder("c", PROVENANCE, {"fmap": ArraySpec((4, 16, 16), "float16", codec)})
        enc.write_block(0, {"fmap": np.concatenate([x, x[:1]])})
        np.testing.assert_array_equal(enc.array("fmap")[:4], x)


def test_a_store_written_with_zstd_resumes_with_its_own_codec(tmp_path):
    """The default codec changed (zstd -> none): an old store reads and resumes with the codec it was made with."""
    url = str(tmp_path / "old.zarr")
    g = FeatureStore(url).require_split("s4", "test", make_index(), block_rows=4)
    old = g.require_encoder("fake", PROVENANCE, {"emb": ArraySpec((8,), "float16", "zstd")})
    old.write_block(0, {"emb": block_data(old, 0)["emb"]})
    again = g.require_encoder("fake", PROVENANCE, {"emb": ArraySpec((8,), "float16")})
    assert again.specs["emb"].codec == "zstd"
    with pytest.raises(StoreError, match="was created with arrays"):
        g.require_encoder("fake", PROVENANCE, {"emb": ArraySpec((9,), "float16")})
    np.testing.assert_array_equal(again.read("emb", np.arange(4)), block_data(old, 0)["emb"])


@pytest.mark.parametrize("rows,block", [(70, 32), (5, 32), (64, 8)])
def test_the_direct_writer_writes_the_bytes_zarr_writes(tmp_path, rows, block):
    """Extraction writes whole uncompressed objects without zarr's codec pipeline: the files must be the very
    ones zarr writes (sharded and not, edge chunks padded), and read back through zarr."""
    import zarr

    from cache.shards import object_key, raw_layout, write_object_raw
    from cache.store import WRITE_ALL_CHUNKS, create_feature_array

    specs = {
        "map": ArraySpec((64, 32, 32), "float16"),  # sharded: 128 KiB rows, 1 MiB chunks
        "vec": ArraySpec((64,), "float16"),
        "q": ArraySpec((16, 8, 8), "int8"),
        "mask": ArraySpec((224, 224), "uint8"),
    }
    rng = np.random.default_rng(0)
    for name, spec in specs.items():
        ours, theirs = (zarr.open_group(str(tmp_path / k), mode="a") for k in ("ours", "zarr"))
        for g in (ours, theirs):
            create_feature_array(g, name, spec, rows, block)
        a, b = (g[name].with_config(WRITE_ALL_CHUNKS) for g in (ours, theirs))
        x = (rng.standard_normal((rows, *spec.shape)) * 10).astype(spec.dtype)
        n_objects = -(-rows // block)
        for i in range(n_objects):
            sl = slice(i * block, min((i + 1) * block, rows))
            assert write_object_raw(a, i, x[sl]), name
            b[sl] = x[sl]
        np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "ours"))[name][:], x)
        for i in range(n_objects):
            mine = (Path(raw_layout(a)[0]) / object_key(a, i)).read_bytes()
            want = (Path(raw_layout(b)[0]) / object_key(b, i)).read_bytes()
            assert mine == want, (name, i)
    compressed = zarr.open_group(str(tmp_path / "zstd"), mode="a")
    create_feature_array(compressed, "z", ArraySpec((8,), "float16", "zstd"), rows, block)
    assert not write_object_raw(compressed["z"], 0, np.zeros((min(rows, block), 8), np.float16))


def test_a_missing_encoder_names_the_command_that_adds_it(tmp_path):
    """A split without an encoder's features (gt left out of the extraction): the error says to add it."""
    url = str(tmp_path / "store.zarr")
    open_encoder(url)
    group = FeatureStore(url, mode="r").split("s4", "test")
    with pytest.raises(StoreError) as e:
        group.encoder("gt")
    said = one_line(e.value)  # what `av2t` prints: the store's words plus the command (flows.store_hints)
    assert f"av2t extract --store {url} --subset s4 --splits test --encoders gt" in said
    assert "add gt to the encoders" in str(e.value) and """'encoders=[..., "gt"]'""" in said
