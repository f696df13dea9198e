"""The extract stage: every expected row of every encoder, resume after SIGKILL, bad inputs, Dask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cache import FeatureStore, StoreError
from pipeline.data.clips import DataError, read_clips
from pipeline.data.images import load_mask
from pipeline.data.synth import write_synthetic
from stages.extract import ExtractConfig, extract

HERE = Path(__file__).parent
ENCODERS = ["clip", "clap", "sam2", "beit3", "gt"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("avsbench")
    write_synthetic(root, "s4", videos=6, seed=5)
    write_synthetic(root, "ms3", videos=4, seed=5)
    return root


def _cfg(root: Path, store: Path, **kw) -> ExtractConfig:
    # A fixed thread count: CPU kernels reduce in a thread-count-dependent order, and the killed subprocess and
    # this process must compute the same features bit for bit whatever an earlier test left torch at.
    return ExtractConfig(root=root, store=str(store), device="cpu", **{"threads": 2, **kw})


def _expected_rows(root: Path, subset: str, split: str, frames: str = "used") -> list[tuple[str, int]]:
    rows = []
    for c in read_clips(root, subset, split):
        ks = [1] if (subset, split, frames) == ("s4", "train", "used") else range(1, 6)
        rows += [(c.id, k) for k in ks]
    return rows


def _store_arrays(store: Path, subset: str) -> dict[str, np.ndarray]:
    out = {}
    fs = FeatureStore(str(store), mode="r")
    for s, split in fs.groups():
        if s != subset:
            continue
        for e in fs.split(s, split).encoders():
            for name in e.specs:
                out[f"{split}/{e.key}/{name}"] = e.array(name)[:]
            out[f"{split}/{e.key}/done"] = e.done_mask()
    return out


@pytest.fixture(scope="module")
def reference_store(tree, tmp_path_factory) -> Path:
    """An uninterrupted local run of every encoder on S4 (all frames, small blocks)."""
    store = tmp_path_factory.mktemp("ref") / "store.zarr"
    out = extract(_cfg(tree, store, frames="all", block_rows=4), progress=False)
    assert out["failures"] == []
    return store


def test_every_expected_row_of_every_encoder(tree, tmp_path):
    store = tmp_path / "s.zarr"
    extract(_cfg(tree, store, subset="s4"), progress=False)
    fs = FeatureStore(str(store), mode="r")
    for split in ("train", "val", "test"):
        g = fs.split("s4", split)
        want = _expected_rows(tree, "s4", split)
        assert list(zip(g.index.video, g.index.frame.tolist(), strict=True)) == want
        assert sorted(e.name for e in g.encoders()) == sorted(ENCODERS)
        for e in g.encoders():
            assert e.rows_done() == len(want), (split, e.key)
            if e.name == "gt":  # the masks, bit for bit
                clips = {c.id: c for c in read_clips(tree, "s4", split)}
                masks = e.array("mask")[:]
                assert masks.dtype == np.uint8
                for m, (v, k) in zip(masks, want, strict=True):
                    np.testing.assert_array_equal(
                        m, load_mask(clips[v].mask_paths[k - 1]) if clips[v].mask_paths[k - 1] else 0
                    )
                continue
            for name, spec in e.specs.items():
                x = e.array(name)[:]
                assert x.shape == (len(want), *spec.shape) and x.dtype == np.float16
                assert np.isfinite(x).all() and np.abs(x).sum(axis=tuple(range(1, x.ndim))).min() > 0
    # Running again computes nothing: everything is done.
    assert extract(_cfg(tree, store, subset="s4"), progress=False)["computed"] == 0


def test_audio_rows_follow_their_segment(tree, reference_store):
    """CLAP rows of one video differ by frame (segment i goes with frame i+1) in MS3-like audio."""
    g = FeatureStore(str(reference_store), mode="r").split("s4", "val")
    clap = g.encoder("clap").array("clap")[:].astype(np.float32)
    rows = g.index.rows_of(g.index.videos()[0])
    assert len(rows) == 5 and np.isfinite(clap[rows]).all()


@pytest.mark.slow
def test_sigkill_mid_way_then_resume_equals_uninterrupted(tree, tmp_path, reference_store):
    store = tmp_path / "killed.zarr"
    cfg = _cfg(tree, store, frames="all", block_rows=4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    p = subprocess.Popen([sys.executable, str(HERE / "extract_runner.py"), cfg.model_dump_json()], env=env)
    total = done = 0
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
        try:
            arrays = _store_arrays(store, "s4")
        except Exception:  # the store is still being created
            continue
        dones = [v for k, v in arrays.items() if k.endswith("/done")]
        total, done = sum(len(d) for d in dones), sum(int(d.sum()) for d in dones)
        if len(dones) == 3 * len(ENCODERS) and 0 < done < total // 2:
            break
    assert p.poll() is None, "extraction finished before it could be killed; make the tree bigger"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    before = {k: v.copy() for k, v in _store_arrays(store, "s4").items() if k.endswith("/done")}
    done_before = sum(int(v.sum()) for v in before.values())
    assert 0 < done_before < total

    out = extract(cfg, progress=False)
    assert out["computed"] == total - done_before  # only the unfinished rows were recomputed
    got, want = _store_arrays(store, "s4"), _store_arrays(reference_store, "s4")
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_bad_input_stops_with_the_file_and_keeps_done_rows(tree, tmp_path):
    root = tmp_path / "tree"
    write_synthetic(root, "ms3", videos=4, seed=2)
    clip = read_clips(root, "ms3", "val")[0]
    clip.frame_paths[2].write_bytes(b"not a png")
    store = tmp_path / "bad.zarr"
    cfg = _cfg(root, store, subset="ms3", encoders=["clip"], block_rows=4)
    with pytest.raises(DataError, match=str(clip.frame_paths[2]).replace(".", r"\.")):
        extract(cfg, progress=False)
    g = FeatureStore(str(store), mode="r").split("ms3", "train")
    assert g.encoder("clip").rows_done() == g.n_rows  # train came before val: kept

    out = extract(cfg.model_copy(update={"on_error": "skip"}), progress=False)
    assert [f["path"] for f in out["failures"]] == [str(clip.frame_paths[2])]
    e = FeatureStore(str(store), mode="r").split("ms3", "val").encoder("clip")
    assert e.rows_done() == e.split.n_rows - 1
    (f,) = e.failures()
    assert (f["video"], f["frame"]) == (clip.id, 3)


def test_bad_wav_is_named(tree, tmp_path):
    root = tmp_path / "tree"
    write_synthetic(root, "s4", videos=3, seed=1)
    clip = read_clips(root, "s4", "test")[0]
    clip.audio_path.write_bytes(b"RIFF")
    cfg = _cfg(root, tmp_path / "w.zarr", encoders=["clap"], splits=["test"])
    with pytest.raises(DataError, match=clip.audio_path.name):
        extract(cfg, progress=False)


def test_changed_encoder_is_refused(tree, tmp_path):
    store = tmp_path / "fp.zarr"
    extract(_cfg(tree, store, encoders=["clip"], splits=["val"]), progress=False)
    g = FeatureStore(str(store)).split("s4", "val")
    e = g.encoder("clip")
    # Pretend the stored features came from other weights.
    e.group.attrs.update({"provenance": {**e.provenance, "weights": "0" * 16}, "fingerprint": "0" * 16})
    from cache import FingerprintMismatch

    with pytest.raises(FingerprintMismatch, match="weights"):
        extract(_cfg(tree, store, encoders=["clip"], splits=["val"]), progress=False)


def test_trunk_features_live_beside_the_plain_ones_only_when_allowed(tree, tmp_path):
    from cache import FingerprintMismatch

    store = tmp_path / "trunk.zarr"
    plain = _cfg(tree, store, encoders=["sam2"], splits=["val"])
    extract(plain, progress=False)
    trunk = plain.model_copy(update={"overrides": {"sam2": {"trunk_block": 2}}})
    with pytest.raises(FingerprintMismatch, match="trunk_block"):
        extract(trunk, progress=False)
    extract(trunk.model_copy(update={"allow_other_fingerprints": True}), progress=False)
    g = FeatureStore(str(store), mode="r").split("s4", "val")
    sam2 = [e for e in g.encoders() if e.name == "sam2"]
    assert len(sam2) == 2
    (with_trunk,) = [e for e in sam2 if "trunk_in" in e.specs]
    assert with_trunk.rows_done() == g.n_rows


def test_a_non_empty_folder_that_is_no_store_is_refused(tmp_path):
    target = tmp_path / "thesis"
    target.mkdir()
    (target / "chapter1.tex").write_text("precious")
    cfg = ExtractConfig(root=tmp_path / "data", subset="s4", store=str(target), device="cpu")
    with pytest.raises(StoreError, match="non-empty folder that is not a feature store"):
        extract(cfg, progress=False)
    assert [p.name for p in target.iterdir()] == ["chapter1.tex"]
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        extract(cfg.model_copy(update={"store": str(tmp_path / "file.zarr")}), progress=False)


# --- the pipelined stage: decode once, preprocess and cast on the device, bf16 named in the fingerprint


def test_features_equal_the_encoders_own_path_bit_for_bit(tree, reference_store):
    """What the pipelined stage stores is the encoder's preprocess + forward, cast to float16, bit for bit:
    the same batches (the preset's batch size, per block), the same thread count."""
    import torch

    from pipeline.encoders.registry import get_encoder
    from pipeline.settings import encoder_batch_size
    from stages.extract import InputCache, batch_plan, load_inputs

    cfg = _cfg(tree, reference_store, frames="all", block_rows=4)
    group = FeatureStore(str(reference_store), mode="r").split("s4", "val")
    clips = {c.id: c for c in read_clips(tree, "s4", "val")}
    for name in ("clip", "sam2", "beit3", "clap", "gt"):
        enc = get_encoder(name, "tiny", None, "cpu")
        stored = group.encoder(name)
        for b in range(group.n_blocks):
            rows = np.arange(group.n_rows)[group.block_slice(b)]
            items, _, _ = load_inputs(enc, clips, group.index, rows, InputCache.for_encoder(enc))
            for idx in batch_plan(items, encoder_batch_size(cfg, name)):
                with torch.inference_mode():
                    want = enc.encode(enc.preprocess(np.stack([items[i] for i in idx])))
                for k, v in want.items():
                    got = stored.read(k, rows[idx])
                    np.testing.assert_array_equal(got, v.numpy().astype(got.dtype), err_msg=f"{name}/{k}")


def test_frame_encoders_share_one_shard_and_one_decode(tree, tmp_path, monkeypatch):
    import stages.extract as se

    decoded = []
    real = se.load_frame
    monkeypatch.setattr(se, "load_frame", lambda p: decoded.append(p) or real(p))
    cfg = _cfg(tree, tmp_path / "once.zarr", encoders=["clip", "sam2", "beit3", "clap"], splits=["val"])
    shards = se.prepare(cfg)
    assert sorted({s.label for s in shards}) == ["clap", "clip+sam2+beit3"]
    extract(cfg, progress=False)
    g = FeatureStore(cfg.store, mode="r").split("s4", "val")
    assert len(decoded) == len(set(decoded)) == g.n_rows  # every frame decoded once, for all three
    assert all(g.encoder(n).rows_done() == g.n_rows for n in ("clip", "sam2", "beit3", "clap"))


def test_bf16_features_get_their_own_fingerprint_and_never_mix(tree, tmp_path):
    from cache import FingerprintMismatch
    from pipeline.provenance import PRECISION_KEY

    store = tmp_path / "bf16.zarr"
    fp32 = _cfg(tree, store, encoders=["sam2"], splits=["val"], precision="fp32")
    extract(fp32, progress=False)
    bf16 = fp32.model_copy(update={"precision": "bf16"})
    with pytest.raises(FingerprintMismatch, match=PRECISION_KEY):
        extract(bf16, progress=False)
    other = tmp_path / "only-bf16.zarr"
    extract(bf16.model_copy(update={"store": str(other)}), progress=False)
    a = FeatureStore(str(store), mode="r").split("s4", "val").encoder("sam2")
    b = FeatureStore(str(other), mode="r").split("s4", "val").encoder("sam2")
    assert a.fingerprint != b.fingerprint and b.provenance[PRECISION_KEY] == "bf16"
    x, y = a.read("image_embed", slice(None)), b.read("image_embed", slice(None))
    assert not np.array_equal(x, y)  # bf16 really computed in bf16 ...
    np.testing.assert_allclose(y, x, atol=0.1 * np.abs(x).max())  # ... and close to fp32
    # A head's readers find bf16 features by the encoders that made them (fp32 preferred when both exist).
    from pipeline.encoders.registry import get_encoder

    prov = get_encoder("sam2", "tiny", None, "cpu").provenance()
    assert FeatureStore(str(other), mode="r").split("s4", "val").encoder_for("sam2", prov).key == b.key
    assert FeatureStore(str(store), mode="r").split("s4", "val").encoder_for("sam2", prov).key == a.key


def test_batch_sizes_come_from_the_preset_unless_given(tmp_path):
    from pipeline.settings import encoder_batch_size

    cfg = ExtractConfig(root=tmp_path, preset="paper")
    assert encoder_batch_size(cfg, "sam2") == 16 and encoder_batch_size(cfg, "clip") == 64
    assert encoder_batch_size(cfg.model_copy(update={"batch_size": 3}), "sam2") == 3
    assert encoder_batch_size(ExtractConfig(root=tmp_path), "sam2") == 8


def test_non_finite_features_are_refused_and_earlier_blocks_kept(tree, tmp_path, monkeypatch):
    import torch

    from pipeline.encoders.registry import get_encoder

    enc = get_encoder("clip", "tiny", None, "cpu")
    real = type(enc).encode
    calls = []

    def poisoned(self, x):
        calls.append(len(x))
        out = real(self, x)
        if len(calls) == 2:  # the second forward: block 1
            out["clip"][0] = torch.inf
        return out

    monkeypatch.setattr(type(enc), "encode", poisoned)
    cfg = _cfg(tree, tmp_path / "nan.zarr", encoders=["clip"], splits=["val"], block_rows=2, batch_size=2)
    with pytest.raises(StoreError, match="non-finite features"):
        extract(cfg, progress=False)
    done = FeatureStore(cfg.store, mode="r").split("s4", "val").encoder("clip").done_mask()
    assert done[:2].all() and not done[2:].any()  # block 0 written before the refusal; nothing after
