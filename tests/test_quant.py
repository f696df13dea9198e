"""int8 feature maps (cache.quant): extraction stores int8 + float32 scales, every reader dequantises them."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from synthetic_run import train_head

from cache import ArraySpec, FeatureStore
from cache.batches import Source, sources, to_device
from cache.errors import StoreError
from cache.feed import open_reader
from cache.info import info_text, store_info
from cache.quant import QMAX, dequantize, quantize_int8, to_storage
from cache.shards import object_key
from cache.specs import scale_name, storage_specs
from cache.verify import repair, verify_store
from flows.store_hints import fix_commands
from pipeline.data.synth import write_synthetic
from pipeline.settings import ExtractConfig
from stages.evaluate import EvalConfig, evaluate
from stages.extract import extract

SUBSET = "ms3"
BLOCK_ROWS = 5  # one video per block: no half-empty shard hides the byte saving
MAPS = ("image_embed", "high_res_0", "high_res_1")


def _within_half_scale(
    deq: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor, slack: torch.Tensor
) -> None:
    """|deq - ref| <= scale / 2 (+ slack) element-wise; scale per (row, channel)."""
    s = scale.reshape(*scale.shape, *([1] * (deq.ndim - scale.ndim)))
    err = (deq.float() - ref.float()).abs()
    assert (err <= s / 2 * (1 + 1e-5) + slack + 1e-7).all(), float((err - s / 2).max())


def test_round_trip_error_is_at_most_half_a_step_and_zero_channels_stay_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 6, generator=g) * torch.logspace(-3, 2, 5).reshape(1, 5, 1, 1)
    x[1, 2] = 0.0  # an all-zero channel
    q, s = quantize_int8(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (3, 5)
    assert int(q.abs().max()) == QMAX
    torch.testing.assert_close(s, x.abs().flatten(2).amax(2) / QMAX)
    deq = dequantize({"f": q, scale_name("f"): s, "mask": torch.ones(3, 2, dtype=torch.uint8)})
    assert set(deq) == {"f", "mask"} and deq["f"].dtype == torch.float32 and deq["mask"].dtype == torch.uint8
    _within_half_scale(deq["f"], x, s, torch.tensor(0.0))
    assert s[1, 2] == 0 and (q[1, 2] == 0).all() and (deq["f"][1, 2] == 0).all()


def test_storage_specs_quantise_only_feature_maps():
    shapes = {"image_embed": (256, 8, 8), "clip": (64,), "beit3_patches": (17, 192), "mask": (224, 224, 1)}
    specs = storage_specs(shapes, {"mask": "uint8"}, "float16", "int8", "none")
    assert specs == {
        "image_embed": ArraySpec((256, 8, 8), "int8", "none"),
        "image_embed_scale": ArraySpec((256,), "float32", "none"),
        "clip": ArraySpec((64,), "float16", "none"),
        "beit3_patches": ArraySpec((17, 192), "float16", "none"),
        "mask": ArraySpec((224, 224, 1), "uint8", "none"),  # a fixed dtype is never quantised
    }
    plain = storage_specs(shapes, {"mask": "uint8"}, "float16", "none", "none")
    assert {k: s.dtype for k, s in plain.items()} == {
        "image_embed": "float16",
        "clip": "float16",
        "beit3_patches": "float16",
        "mask": "uint8",
    }
    stored = to_storage({"image_embed": torch.randn(2, 256, 8, 8), "clip": torch.randn(2, 64)}, specs)
    assert {k: v.dtype for k, v in stored.items()} == {
        "image_embed": torch.int8,
        "image_embed_scale": torch.float32,
        "clip": torch.float16,
    }
    with pytest.raises(ValueError, match="quantize"):
        storage_specs(shapes, {}, "float16", "fp8", "none")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    """One synthetic MS3 tree, extracted twice: a float16 store and an int8 store (same encoders)."""
    tmp = tmp_path_factory.mktemp("quant")
    root = tmp / "data"
    write_synthetic(root, SUBSET, videos=4, seed=5)
    out = {"tmp": tmp, "root": root}
    for q in ("none", "int8"):
        store = str(tmp / f"{q}.zarr")
        cfg = ExtractConfig(
            root=root, subset=SUBSET, store=store, device="cpu", quantize=q, block_rows=BLOCK_ROWS
        )
        extract(cfg, progress=False)
        out[q] = store
    return out


def _sam2(store: str, split: str = "train"):
    return FeatureStore(store, mode="r").split(SUBSET, split).encoder("sam2")


@pytest.mark.slow
def test_int8_extraction_halves_the_bytes_within_half_a_step(stores):
    fp, q8 = _sam2(stores["none"]), _sam2(stores["int8"])
    assert fp.fingerprint == q8.fingerprint  # the same features, stored smaller
    assert {k: s.dtype for k, s in q8.specs.items()} == {
        **{m: "int8" for m in MAPS},
        **{scale_name(m): "float32" for m in MAPS},
    }
    assert q8.nbytes_stored() <= 0.55 * fp.nbytes_stored()
    assert q8.nbytes() <= 0.55 * fp.nbytes()
    assert ("quantize", "int8") in q8.extract_settings() and "dtype" not in dict(q8.extract_settings())
    assert ("quantize", "int8") not in fp.extract_settings()
    for m in MAPS:
        ref = torch.from_numpy(fp.array(m)[:]).float()
        q, s = torch.from_numpy(q8.array(m)[:]), torch.from_numpy(q8.array(scale_name(m))[:])
        deq = dequantize({m: q, scale_name(m): s})[m]
        # the float16 store rounds the same float32 features: allow its rounding on top of half a step
        _within_half_scale(deq, ref, s, ref.abs() * 2.0**-10)


def _reader(store: str, mode: str, srcs: dict[str, Source]):
    return open_reader(store, SUBSET, "train", srcs, mode=mode, batch_size=3, shuffle=True, seed=1, threads=2)


def _srcs(store: str) -> dict[str, Source]:
    enc = _sam2(store)
    return {m: Source(enc.key, m) for m in enc.specs}


def test_readers_carry_int8_and_scales_and_to_device_dequantises(stores):
    srcs = _srcs(stores["int8"])
    assert set(srcs) == {*MAPS, *(scale_name(m) for m in MAPS)}
    res, st = _reader(stores["int8"], "resident", srcs), _reader(stores["int8"], "streaming", srcs)
    assert (res.mode, st.mode) == ("resident", "streaming")
    fp = _reader(stores["none"], "resident", _srcs(stores["none"]))
    for a, b, f in zip(res.epoch(0), st.epoch(0), fp.epoch(0), strict=True):
        assert a.keys() == b.keys() == {"row", *srcs}
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])
        assert a["image_embed"].dtype == torch.int8 and a["image_embed_scale"].dtype == torch.float32
        torch.testing.assert_close(a["row"], f["row"])
        dev, ref = to_device(a, torch.device("cpu")), to_device(f, torch.device("cpu"))
        assert dev.keys() == ref.keys() == set(MAPS)
        for m in MAPS:
            assert dev[m].dtype == torch.float32
            _within_half_scale(dev[m], ref[m], a[scale_name(m)], ref[m].abs() * 2.0**-10)


def test_sources_add_the_scales_of_int8_arrays(stores):
    class Model:
        def cached_fields(self) -> dict[str, list[str]]:
            return {"sam2": ["image_embed"], "clip": ["clip"]}

    for q, extra in (("none", set()), ("int8", {"image_embed_scale"})):
        g = FeatureStore(stores[q], mode="r").split(SUBSET, "train")
        groups = {n: g.encoder(n) for n in ("sam2", "clip", "gt")}
        assert set(sources([Model()], groups)) == {"mask", "image_embed", "clip", *extra}


def test_quantising_a_float16_store_is_refused_never_mixed(stores, tmp_path):
    store = tmp_path / "mixed.zarr"
    shutil.copytree(stores["none"], store)
    cfg = ExtractConfig(
        root=stores["root"],
        subset=SUBSET,
        store=str(store),
        device="cpu",
        quantize="int8",
        block_rows=BLOCK_ROWS,
    )
    with pytest.raises(StoreError, match="image_embed") as e:
        extract(cfg, progress=False)
    assert "int8" in str(e.value) and "float16" in str(e.value)
    assert {s.dtype for s in _sam2(str(store)).specs.values()} == {"float16"}


@pytest.mark.slow
def test_a_head_trains_and_evaluates_cached_on_an_int8_store(stores):
    run = {"store": stores["int8"], "subset": SUBSET}
    best = train_head(run, stores["tmp"] / "head", epochs=2)
    report = evaluate(
        EvalConfig(
            checkpoint=best,
            root=stores["root"],
            subset=SUBSET,
            store=stores["int8"],
            device="cpu",
            out=stores["tmp"] / "eval",
            progress=False,
            overlays=0,
        )
    )
    assert math.isfinite(report["M_J"]) and 0 <= report["M_J"] <= 1


def test_info_names_the_int8_arrays(stores):
    for q, want in (("none", []), ("int8", sorted(MAPS))):
        info = store_info(FeatureStore(stores[q], mode="r"))
        enc = next(e for e in info["groups"][0]["encoders"].values() if e["name"] == "sam2")
        assert enc["quantized"] == want
        assert ("int8 with a float32 scale" in info_text(info)) == bool(want)


def test_verify_finds_damage_in_an_int8_chunk_and_repair_remakes_it_quantised(stores, tmp_path):
    assert verify_store(FeatureStore(stores["int8"], mode="r")).ok
    store = tmp_path / "damaged.zarr"
    shutil.copytree(stores["int8"], store)
    arr = _sam2(str(store)).group["high_res_0"]
    path = Path(store) / object_key(arr, 0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify_store(FeatureStore(str(store), mode="r"))
    assert [(d.split, d.array) for d in report.damage] == [("train", "high_res_0")]
    assert any("--quantize int8" in c for c in fix_commands(report))
    repair(FeatureStore(str(store)), report)
    extract(
        ExtractConfig(
            root=stores["root"],
            subset=SUBSET,
            store=str(store),
            device="cpu",
            quantize="int8",
            block_rows=BLOCK_ROWS,
            splits=["train"],
            encoders=["sam2"],
        ),
        progress=False,
    )
    assert verify_store(FeatureStore(str(store), mode="r")).ok
