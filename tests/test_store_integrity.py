"""Integrity of the feature store: checksums, lost chunks, `av2t cache verify`, repair and re-extraction.

Nothing silently wrong: flipped bytes inside a chunk or a deleted shard are named (group, encoder key,
array, rows, problem) by `cache verify`, refused by every reader with the same text, and repaired by
marking their blocks not done and re-extracting them, bit for bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from store_helpers import ARRAYS, PROVENANCE, block_data, make_index, open_encoder
from synthetic_run import synthetic_store, train_head

import cache.specs
import cache.store as cs
from cache import ArraySpec, FeatureStore
from cache.batches import FeatureBatches, Source
from cache.errors import StoreDamaged
from cache.hdf5 import export_h5
from cache.info import info_text, store_info
from cache.shards import object_key
from cache.verify import repair, verify_store
from flows.cli import main as cli
from flows.errors import one_line
from flows.store_hints import UNCHECKED
from stages.extract import ExtractConfig, extract

# Small inner chunks, so that the bigger arrays of the tiny preset are sharded (several chunks per shard).
CHUNK_BYTES = 16 * 1024
BLOCK_ROWS = 4


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(cache.specs, "TARGET_CHUNK_BYTES", CHUNK_BYTES)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict:
    """A synthetic S4 store (every encoder, threads=1: bit-identical on re-extraction), never damaged."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache.specs, "TARGET_CHUNK_BYTES", CHUNK_BYTES)
        run = synthetic_store(tmp_path_factory.mktemp("pristine"), threads=1, block_rows=BLOCK_ROWS)
    return run


def _copy(run: dict, dest: Path) -> dict:
    shutil.copytree(run["store"], dest / "store.zarr")
    return {**run, "store": str(dest / "store.zarr")}


def _cfg(run: dict) -> ExtractConfig:
    """The extraction that made the pristine store, aimed at this run's store."""
    return ExtractConfig(
        root=run["root"], subset="s4", store=run["store"], device="cpu", threads=1, block_rows=BLOCK_ROWS
    )


def _encoder(store: str, split: str, name: str):
    return FeatureStore(store, mode="r").split("s4", split).encoder(name)


def _object_file(store: str, enc, array: str, i: int) -> Path:
    return Path(store) / object_key(enc.group[array], i)


def _flip(path: Path, n: int = 16) -> None:
    """Overwrite n bytes in the middle of a stored object."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def _everything(store: str) -> dict[str, np.ndarray]:
    """Every array of the store (index, features, completion records), by path."""
    out = {}
    fs = FeatureStore(store, mode="r")
    for subset, split in fs.groups():
        g = fs.split(subset, split)
        for c in g.group["index"].array_keys():
            out[f"{g.path}/index/{c}"] = g.group["index"][c][:]
        for e in g.encoders():
            for name in [*e.specs, "done"]:
                out[f"{g.path}/{e.key}/{name}"] = e.group[name][:]
    return out


def _verify(store: str, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli(["cache", "verify", store, *extra])
    return rc, capsys.readouterr().out


def test_new_arrays_carry_checksums_and_the_shard_index_too(pristine):
    enc = _encoder(pristine["store"], "test", "sam2")
    arr = enc.group["image_embed"]
    assert arr.shards is not None and arr.chunks[0] < arr.shards[0]  # sharded: chunks inside a shard
    (sharding,) = arr.metadata.codecs
    names = [type(c).__name__ for c in sharding.codecs]
    assert (
        names[-1] == "Crc32cCodec"
    )  # crc32c last (after the compressor, when there is one), every inner chunk
    assert [type(c).__name__ for c in sharding.index_codecs][-1] == "Crc32cCodec"
    assert all(enc.checksum(k) == "crc32c" for k in [*enc.specs, "done"])
    assert enc.split.index_checksum() == "crc32c"
    info = store_info(FeatureStore(pristine["store"], mode="r"))
    e = info["groups"][0]["encoders"][enc.key]
    assert set(e["checksums"].values()) == {"crc32c"} and e["rows_missing_chunks"] == 0


def test_clean_store_verifies_with_exit_0_and_json_schema(pristine, capsys):
    rc, out = _verify(pristine["store"], capsys)
    assert rc == 0 and "clean" in out
    rc, out = _verify(pristine["store"], capsys, "--json")
    assert rc == 0
    report = json.loads(out)
    assert set(report) == {"store", "ok", "problems", "summary", "unchecked", "fix", "repaired"}
    assert report["ok"] is True and report["problems"] == [] and report["fix"] == []
    assert report["unchecked"] == [] and report["repaired"] is None
    s = report["summary"]
    assert s["groups"] == 3 and s["encoders"] == 15 and s["damaged"] == 0 and s["objects_read"] > s["arrays"]


def test_flipped_bytes_are_named_and_refused_by_every_reader(pristine, tmp_path, capsys):
    run = _copy(pristine, tmp_path)
    store = run["store"]
    enc = _encoder(store, "train", "sam2")
    _flip(_object_file(store, enc, "image_embed", 0))
    rc, out = _verify(store, capsys)
    assert rc == 1
    report = verify_store(FeatureStore(store, mode="r"))
    where = {(d.group, d.encoder, d.array, d.problem) for d in report.damage}
    assert where == {("s4/train", enc.key, "image_embed", "checksum mismatch")}
    d = report.damage[0]
    assert 0 <= d.start < d.stop <= BLOCK_ROWS
    assert d.line() in out
    assert f"av2t cache verify {store} --repair" in out
    assert f"av2t extract --store {store} --subset s4 --splits train --encoders sam2" in out
    rc, out = _verify(store, capsys, "--json")
    assert rc == 1
    problem = json.loads(out)["problems"][0]
    assert problem == {
        "group": "s4/train",
        "subset": "s4",
        "split": "train",
        "encoder": enc.key,
        "array": "image_embed",
        "rows": [d.start, d.stop],
        "key": d.key,
        "problem": "checksum mismatch",
        "detail": "",
    }

    # Readers: the same line, and the fix (in words; `av2t` names the commands: flows.store_hints).
    with pytest.raises(StoreDamaged) as e:
        enc.read("image_embed", np.arange(enc.split.n_rows))
    assert d.line() in str(e.value) and "repair" in str(e.value) and "re-extract" in str(e.value)
    assert "av2t" not in str(e.value) and "--" not in str(e.value)
    said = one_line(e.value)
    assert d.line() in said and f"av2t cache verify {store} --repair" in said
    assert f"av2t extract --store {store} --subset s4 --splits train --encoders sam2" in said
    with pytest.raises(StoreDamaged, match="checksum mismatch") as e:
        enc.read_block(0)
    assert d.line() in str(e.value)
    ds = FeatureBatches(store, "s4", "train", {"image_embed": Source(enc.key, "image_embed")}, batch_size=2)
    with pytest.raises(StoreDamaged) as e:
        [b for b in ds]
    assert d.line() in str(e.value)
    with pytest.raises(StoreDamaged) as e:
        export_h5(FeatureStore(store, mode="r"), tmp_path / "x.h5", [("s4", "train")])
    assert d.line() in str(e.value)
    # Rows in other chunks still read.
    other = _encoder(store, "train", "clip")
    assert other.read("clip", np.arange(other.split.n_rows)).shape[0] == other.split.n_rows


def test_training_refuses_a_damaged_store(pristine, tmp_path):
    run = _copy(pristine, tmp_path)
    enc = _encoder(run["store"], "train", "sam2")
    _flip(_object_file(run["store"], enc, "image_embed", 0))
    with pytest.raises(StoreDamaged, match=r"s4/train sam2@\w+ image_embed rows? .*checksum mismatch"):
        train_head(run, tmp_path / "head")


def test_a_deleted_shard_is_missing_not_zeros(pristine, tmp_path, capsys):
    run = _copy(pristine, tmp_path)
    store = run["store"]
    enc = _encoder(store, "test", "sam2")
    n = enc.split.n_rows
    assert enc.rows_done() == n
    _object_file(store, enc, "high_res_0", 1).unlink()
    enc = _encoder(store, "test", "sam2")
    assert enc.rows_done() == n - BLOCK_ROWS  # the block's rows are not counted
    assert enc.done_record().sum() == n  # though the record marks them done
    assert enc.pending_blocks() == [1]  # and extract would recompute them
    rc, out = _verify(store, capsys)
    assert rc == 1
    (d,) = verify_store(FeatureStore(store, mode="r")).damage
    assert (d.group, d.encoder, d.array, d.problem) == ("s4/test", enc.key, "high_res_0", "missing")
    assert (d.start, d.stop) == (BLOCK_ROWS, 2 * BLOCK_ROWS)
    assert d.line() in out
    info = store_info(FeatureStore(store, mode="r"))
    e = next(g for g in info["groups"] if g["split"] == "test")["encoders"][enc.key]
    assert (e["rows_done"], e["rows_missing_chunks"]) == (n - BLOCK_ROWS, BLOCK_ROWS)
    assert f"rows {n - BLOCK_ROWS}/{n}" in info_text(info)
    with pytest.raises(StoreDamaged) as err:
        enc.read("high_res_0", np.arange(n))
    assert d.line() in str(err.value)
    with pytest.raises(StoreDamaged) as err:
        enc.read("high_res_0", slice(BLOCK_ROWS, BLOCK_ROWS + 1))
    assert d.line() in str(err.value)
    with pytest.raises(StoreDamaged) as err:
        FeatureBatches(store, "s4", "test", {"h": Source(enc.key, "high_res_0")})
    assert d.line() in str(err.value)
    assert enc.read("high_res_0", np.arange(BLOCK_ROWS)).shape[0] == BLOCK_ROWS  # block 0 is intact


def test_repair_then_extract_restores_every_array_bit_for_bit(pristine, tmp_path, capsys, small_chunks):
    run = _copy(pristine, tmp_path)
    store = run["store"]
    want = _everything(store)
    sam2 = _encoder(store, "test", "sam2")
    _flip(_object_file(store, sam2, "image_embed", 2))  # a sharded array, last block (partial)
    _object_file(store, sam2, "high_res_1", 0).unlink()  # a lost shard
    beit3 = _encoder(store, "val", "beit3")
    _flip(_object_file(store, beit3, "done", 1), n=4)  # the completion record itself
    clip = _encoder(store, "train", "clip")
    _flip(_object_file(store, clip, "clip", 0))  # an unsharded array
    val_index = Path(store) / "s4/val/index/video/c/0"
    _flip(val_index, n=2)  # a split's index: the group is rebuilt

    rc, out = _verify(store, capsys)
    assert rc == 1
    damage = verify_store(FeatureStore(store, mode="r")).damage
    assert {(d.group, d.encoder.split("@")[0], d.array, d.problem) for d in damage} == {
        ("s4/test", "sam2", "image_embed", "checksum mismatch"),
        ("s4/test", "sam2", "high_res_1", "missing"),
        ("s4/train", "clip", "clip", "checksum mismatch"),
        ("s4/val", "", "index/video", "checksum mismatch"),
        ("s4/val", "beit3", "done", "checksum mismatch"),
    }
    assert "av2t extract" in out

    rc, out = _verify(store, capsys, "--repair")
    assert rc == 1 and "repaired:" in out and "deleted split group(s) with a damaged index: s4/val" in out
    rc, out = _verify(store, capsys)
    assert rc == 0, out  # no damage left: the rows are simply not done
    assert _encoder(store, "test", "sam2").rows_done() == sam2.split.n_rows - BLOCK_ROWS - 2
    assert _encoder(store, "train", "clip").rows_done() == 0

    extract(_cfg(run), progress=False)
    rc, out = _verify(store, capsys)
    assert rc == 0, out
    got = _everything(store)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_a_damaged_completion_record_is_named_and_repaired(pristine, tmp_path, capsys, small_chunks):
    run = _copy(pristine, tmp_path)
    store = run["store"]
    want = _everything(store)
    enc = _encoder(store, "test", "beit3")
    _flip(_object_file(store, enc, "done", 1), n=2)
    with pytest.raises(StoreDamaged, match=r"s4/test beit3@\w+ done rows 4-7: checksum mismatch"):
        enc.done_mask()
    info = store_info(FeatureStore(store, mode="r"))  # info still reports, and says so
    e = next(g for g in info["groups"] if g["split"] == "test")["encoders"][enc.key]
    assert e["rows_done"] is None and "checksum mismatch" in e["completion_record_damaged"]
    rc, out = _verify(store, capsys, "--repair")
    assert rc == 1 and "done rows 4-7: checksum mismatch" in out
    assert _encoder(store, "test", "beit3").rows_done() == enc.split.n_rows - BLOCK_ROWS
    extract(_cfg(run), progress=False)
    assert _verify(store, capsys)[0] == 0
    got = _everything(store)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.fixture
def unchecked(monkeypatch):
    """Arrays written the way stores were before checksums: no crc32c, all-zero chunks not stored."""
    monkeypatch.setattr(cs, "_with_checksum", lambda compressors: list(compressors or []))
    monkeypatch.setattr(cs, "WRITE_ALL_CHUNKS", {})


def _old_store(url: str):
    arrays = {**ARRAYS, "raw": ArraySpec((4, 8), "float16", "none"), "mask": ArraySpec((8, 8), "uint8")}
    g = FeatureStore(url).require_split("s4", "test", make_index(), block_rows=4)
    enc = g.require_encoder("old", PROVENANCE, arrays)
    for b in range(g.n_blocks):
        data = block_data(enc, b)
        n = len(data["emb"])
        data["raw"] = np.full((n, 4, 8), b + 1, np.float16)
        data["mask"] = np.full((n, 8, 8), 0 if b == 2 else 1, np.uint8)  # block 2: empty masks
        enc.write_block(b, data)
    return enc


def test_stores_written_before_checksums_still_read_and_say_unchecked(tmp_path, capsys, unchecked):
    url = str(tmp_path / "old.zarr")
    enc = _old_store(url)
    assert enc.checksum("fmap") is None and enc.checksum("done") is None
    # The empty masks of block 2 were never stored: that is not damage in an array written before.
    assert not (Path(url) / object_key(enc.group["mask"], 2)).exists()
    enc = FeatureStore(url, mode="r").split("s4", "test").encoder("old")
    assert enc.rows_done() == enc.split.n_rows
    np.testing.assert_array_equal(enc.read("mask", slice(8, 12)), 0)
    src = {k: Source(enc.key, k) for k in ("fmap", "raw", "mask")}
    total = sum(len(b["row"]) for b in FeatureBatches(url, "s4", "test", src, batch_size=16))
    assert total == enc.split.n_rows
    info = store_info(FeatureStore(url, mode="r"))
    assert set(info["groups"][0]["encoders"][enc.key]["checksums"].values()) == {None}
    assert info["groups"][0]["index_checksum"] is None
    assert cli(["cache", "info", url]) == 0
    assert UNCHECKED in capsys.readouterr().out
    assert "unchecked (written before checksums: run `av2t cache verify`" in UNCHECKED
    rc, out = _verify(url, capsys, "--json")
    report = json.loads(out)
    assert rc == 0 and report["ok"]
    assert f"s4/test/{enc.key}/fmap" in report["unchecked"] and "s4/test/index" in report["unchecked"]


def test_without_checksums_damage_is_still_caught_where_it_shows(tmp_path, capsys, unchecked):
    url = str(tmp_path / "old.zarr")
    enc = _old_store(url)
    raw = Path(url) / object_key(enc.group["raw"], 3)  # uncompressed: garbage reads as other numbers
    data = bytearray(raw.read_bytes())
    data[8:24] = b"\xff" * 16  # float16 0xffff: NaN
    raw.write_bytes(bytes(data))
    (Path(url) / object_key(enc.group["fmap"], 5)).unlink()  # a float array: absent means lost
    zstd = Path(url) / object_key(enc.group["emb"], 1)
    zstd.write_bytes(zstd.read_bytes()[:-6])  # truncated: does not decode
    report = verify_store(FeatureStore(url, mode="r"))
    got = {(d.array, d.start, d.problem) for d in report.damage}
    assert got == {("raw", 12, "non-finite"), ("fmap", 20, "missing"), ("emb", 4, "undecodable")}
    enc = FeatureStore(url, mode="r").split("s4", "test").encoder("old")
    ds = FeatureBatches(url, "s4", "test", {"raw": Source(enc.key, "raw")}, batch_size=4)
    with pytest.raises(StoreDamaged, match=r"s4/test old@\w+ raw rows 12-15: non-finite"):
        ds[3]
    with pytest.raises(StoreDamaged, match="undecodable"):
        enc.read("emb", np.arange(8))
    assert cli(["cache", "verify", url]) == 1


def test_cli_exit_codes(tmp_path, capsys, small_chunks):
    url = str(tmp_path / "s.zarr")
    enc = open_encoder(url)
    for b in range(enc.split.n_blocks):
        enc.write_block(b, block_data(enc, b))
    assert cli(["cache", "verify", url]) == 0
    _flip(Path(url) / object_key(enc.group["fmap"], 3))
    assert cli(["cache", "verify", url]) == 1
    out = capsys.readouterr().out
    assert f"s4/test {enc.key} fmap rows 12-" in out
    assert cli(["cache", "verify", str(tmp_path / "nothing.zarr")]) == 2
    with pytest.raises(SystemExit) as e:
        cli(["cache", "verify"])
    assert e.value.code == 2
    # repair + rewriting the block: clean again, and the same bytes as before
    before = open_encoder(str(tmp_path / "ref.zarr"))
    before.write_block(3, block_data(before, 3))
    assert cli(["cache", "verify", url, "--repair", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["repaired"]["blocks"] == 1 and report["repaired"]["rows_not_done"] == 4
    enc = FeatureStore(url).split("s4", "test").encoder("fake")
    assert enc.pending_blocks() == [3]
    enc.write_block(3, block_data(enc, 3))
    assert cli(["cache", "verify", url]) == 0
    np.testing.assert_array_equal(enc.read("fmap", slice(12, 16)), before.read("fmap", slice(12, 16)))


def test_repair_of_a_report_object(tmp_path):
    url = str(tmp_path / "r.zarr")
    enc = open_encoder(url)
    for b in range(enc.split.n_blocks):
        enc.write_block(b, block_data(enc, b))
    (Path(url) / object_key(enc.group["emb"], 0)).unlink()
    store = FeatureStore(url)
    report = repair(store, verify_store(store))
    assert report.repaired["deleted"] == [object_key(enc.group["done"], 0)]
    assert "repaired:" in report.to_text() and "--repair" not in report.to_text()
    assert verify_store(FeatureStore(url, mode="r")).ok
