"""The CUDA paths against the CPU on the same inputs: feed, precision, compile, metrics, extraction, evaluation.

Run first on any machine with a GPU (scripts/gpu_check.sh). Each test states its tolerance; metrics computed
from the same logits must be equal exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from store_helpers import block_data, open_encoder

from bench.bench_extract import host_inputs
from cache import FeatureStore
from cache.batches import Source, to_device
from cache.feed import open_reader
from pipeline.metrics import MetricAccumulator
from pipeline.model.precision import as_fp32, autocast
from pipeline.settings import EvalConfig, ExtractConfig, OptimConfig, TrainConfig
from stages.evaluate import evaluate
from stages.extract import cfg_encoder, extract
from stages.train import train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available() is False)"
    ),
]

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
FP32_LOGITS = 1e-4  # max |cuda - cpu| / max |cpu| of an fp32 forward (TF32 off): summation order only
BF16_LOGITS = 0.03  # bf16 keeps 8 mantissa bits: the CPU bf16 test's bound (tests/test_precision.py)
FEATURES = 1e-2  # stored float16 features, fp32 forward (TF32 off): max |cuda - cpu| / max |cpu| per array
PREPROCESS = 1e-3  # device resize + normalisation of uint8 frames: max |cuda - cpu| (inputs are ~N(0, 1))
SCORES = 0.01  # |M_J cuda - M_J cpu| (and M_F) of a whole evaluation: a few pixels may flip at 0


@pytest.fixture
def no_tf32():
    """fp32 on CUDA without TF32 (an earlier bf16 run turns it on for the process), restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max() / b.float().abs().max())


# ---------------------------------------------------------------- the training reader


@pytest.fixture
def feed_store(tmp_path):
    url = str(tmp_path / "f.zarr")
    enc = open_encoder(url)  # 65 rows, blocks of 4
    for b in range(enc.split.n_blocks):
        enc.write_block(b, block_data(enc, b))
    return url, {"emb": Source(enc.key, "emb"), "fmap": Source(enc.key, "fmap")}


def _epochs(url, srcs, mode, device):
    r = open_reader(url, "s4", "test", srcs, batch_size=8, shuffle=True, seed=5, mode=mode, device=device)
    return [b for e in (0, 1) for b in r.epoch(e)]


def test_resident_feed_on_the_device_serves_the_cpu_batches_exactly(feed_store):
    want = _epochs(*feed_store, "resident", None)
    got = _epochs(*feed_store, "resident", CUDA)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["fmap"].device.type == "cuda"
        for k in w:
            assert g[k].dtype == w[k].dtype and torch.equal(g[k].cpu(), w[k]), k


def test_streaming_feed_pins_and_copies_asynchronously_the_cpu_batches_exactly(feed_store):
    want = _epochs(*feed_store, "streaming", None)
    got = _epochs(*feed_store, "streaming", CUDA)
    for g, w in zip(got, want, strict=True):
        assert g["fmap"].is_pinned()  # page-locked: to_device's non_blocking copy is asynchronous
        moved = to_device(g, CUDA)
        torch.cuda.synchronize()
        for k in ("emb", "fmap"):
            assert moved[k].device.type == "cuda" and torch.equal(moved[k].cpu(), w[k]), k


# ---------------------------------------------------------------- the head: fp32, bf16 + TF32, compile


def _model_and_batch(run: dict, device: torch.device):
    """The fixture's trained head on the device and one batch of its test rows there."""
    from cache.batches import FeatureBatches, sources
    from pipeline.model.build import build_model, frozen_encoders
    from pipeline.model.head_checkpoint import load_head, read_head

    ck = read_head(run["checkpoint"])
    frozen = frozen_encoders(ck.head, ck.preset, None, device)
    group = FeatureStore(run["store"], mode="r").split("s4", "test")
    groups = {n: group.encoder(n, ck.features.get(n)) for n in ("clip", "clap", "sam2", "beit3", "gt")}
    model = build_model(ck.head, ck.preset, **ck.widths(), encoders=frozen)
    load_head(ck, model)
    ds = FeatureBatches(run["store"], "s4", "test", sources([model], groups), batch_size=8)
    return model.to(device).eval(), to_device(ds[0], device)


@torch.no_grad()
def test_fp32_head_on_cuda_matches_the_cpu(s4_run, no_tf32):
    cpu_model, cpu_batch = _model_and_batch(s4_run, CPU)
    gpu_model, gpu_batch = _model_and_batch(s4_run, CUDA)
    ref = cpu_model.forward_cached(cpu_batch)["logits"]
    out = gpu_model.forward_cached(gpu_batch)["logits"]
    assert out.device.type == "cuda"
    assert _rel(out, ref) < FP32_LOGITS


@torch.no_grad()
def test_bf16_autocast_with_tf32_on_cuda_is_close_to_cpu_fp32(s4_run, no_tf32):
    cpu_model, cpu_batch = _model_and_batch(s4_run, CPU)
    gpu_model, gpu_batch = _model_and_batch(s4_run, CUDA)
    ref = cpu_model.forward_cached(cpu_batch)["logits"]
    with autocast("bf16", CUDA):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        out = as_fp32(gpu_model.forward_cached(gpu_batch))["logits"]
    assert out.dtype == torch.float32
    err = _rel(out, ref)
    assert 0 < err < BF16_LOGITS, err  # > 0: bf16 did run
    assert ((out.cpu() > 0) == (ref > 0)).float().mean() > 0.99


def _train(run: dict, out, device: str, **kw) -> pd.DataFrame:
    cfg = TrainConfig(
        store=run["store"],
        subset="s4",
        device=device,
        out=out,
        progress=False,
        optim=OptimConfig(epochs=1, batch_size=1),  # 3 train rows: compile drops a short last batch
        max_steps=2,
        **kw,
    )
    train(cfg)
    return pd.read_csv(out / "metrics.csv")


def test_fp32_training_step_on_cuda_matches_the_cpu(s4_run, tmp_path, no_tf32):
    cpu = _train(s4_run, tmp_path / "cpu", "cpu", precision="fp32")
    gpu = _train(s4_run, tmp_path / "cuda", "cuda", precision="fp32")
    assert gpu["train_loss"][0] == pytest.approx(cpu["train_loss"][0], rel=1e-4)
    assert abs(gpu["val_M_J"][0] - cpu["val_M_J"][0]) < SCORES


def test_compiled_step_on_cuda_trains_like_eager(s4_run, tmp_path):
    eager = _train(s4_run, tmp_path / "eager", "cuda")
    compiled = _train(s4_run, tmp_path / "compiled", "cuda", compile=True)
    assert compiled["precision"][0] == eager["precision"][0] == "bf16"  # auto on CUDA
    assert compiled["train_loss"][0] == pytest.approx(eager["train_loss"][0], rel=1e-2)  # bf16 kernels differ
    assert abs(compiled["val_M_J"][0] - eager["val_M_J"][0]) < SCORES


# ---------------------------------------------------------------- metrics on the device


def test_metrics_of_cuda_tensors_equal_the_cpu_exactly():
    g = torch.Generator().manual_seed(3)
    videos = []
    for i in range(6):
        logits = torch.randn(5, 64, 64, generator=g) * 3
        gt = (torch.rand(5, 64, 64, generator=g) > 0.6).float()
        if i == 2:
            gt[:] = 0  # an all-empty video
        videos.append((f"v{i}", logits, gt))
    for batching in ("video", "all"):
        host, dev = MetricAccumulator(batching), MetricAccumulator(batching)
        for name, logits, gt in videos:
            host.add(name, logits.clone(), gt.clone())
            dev.add(name, logits.to(CUDA), gt.to(CUDA, torch.uint8))
        assert dev.summary() == host.summary()
        pd.testing.assert_frame_equal(dev.frame_table(), host.frame_table())
        pd.testing.assert_frame_equal(dev.video_table(), host.video_table())


# ---------------------------------------------------------------- extraction and evaluation


def test_device_preprocessing_of_frames_on_cuda_matches_the_cpu(s4_run):
    for name in ("clip", "sam2", "beit3"):
        cfgs = {
            d: ExtractConfig(root=s4_run["root"], subset="s4", device=d, encoders=[name])
            for d in ("cpu", "cuda")
        }
        encs = {d: cfg_encoder(c, name) for d, c in cfgs.items()}
        with torch.inference_mode():
            for xc, xg in zip(host_inputs(cfgs["cpu"], name), host_inputs(cfgs["cuda"], name), strict=True):
                assert xg.device.type == "cuda" and torch.equal(xc, xg.cpu())  # the same uint8 frames
                pc, pg = encs["cpu"].device_input(xc), encs["cuda"].device_input(xg)
                assert pg.device.type == "cuda"
                assert float((pg.float().cpu() - pc.float()).abs().max()) < PREPROCESS, name


def test_extraction_on_cuda_stores_what_the_cpu_stores(s4_run, tmp_path, no_tf32):
    stores = {}
    for d in ("cpu", "cuda"):
        stores[d] = str(tmp_path / f"{d}.zarr")
        cfg = ExtractConfig(root=s4_run["root"], subset="s4", store=stores[d], device=d, precision="fp32")
        extract(cfg, progress=False)
    for split in ("train", "test"):
        groups = {d: FeatureStore(u, mode="r").split("s4", split) for d, u in stores.items()}
        for enc in groups["cpu"].encoders():
            other = groups["cuda"].encoder(enc.name)
            for k in enc.specs:
                a, b = enc.array(k)[:], other.array(k)[:]
                if enc.name == "gt":
                    np.testing.assert_array_equal(b, a)  # masks are read, not computed
                else:
                    ref = torch.from_numpy(np.asarray(a, np.float32))
                    assert _rel(torch.from_numpy(np.asarray(b, np.float32)), ref) < FEATURES, (enc.name, k)


@pytest.mark.parametrize("mode", ["cached", "end-to-end"])
def test_evaluation_on_cuda_scores_like_the_cpu(s4_run, tmp_path, mode, no_tf32):
    reports = {}
    for d in ("cpu", "cuda"):
        cfg = EvalConfig(
            checkpoint=s4_run["checkpoint"],
            root=s4_run["root"],
            store=s4_run["store"] if mode == "cached" else None,
            mode=mode,
            device=d,
            precision="fp32",
            out=tmp_path / d,
            progress=False,
            overlays=0,
        )
        reports[d] = evaluate(cfg)
    assert reports["cuda"]["frames"] == reports["cpu"]["frames"]
    for m in ("M_J", "M_F"):
        assert abs(reports["cuda"][m] - reports["cpu"][m]) < SCORES, (
            m,
            reports["cuda"][m],
            reports["cpu"][m],
        )
