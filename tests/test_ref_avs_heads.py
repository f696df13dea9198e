"""Ref-AVS heads: what enters BEiT-3's text stream per `text` mode, padding ignored, AVSBench heads unchanged; and
train + evaluate through the stages on a small synthetic Ref-AVS store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pipeline.encoders  # noqa: F401  (torchvision fix before sam2 imports it)
from pipeline.encoders import sam2_image as S
from pipeline.encoders.registry import build_encoder
from pipeline.encoders.text_tokens import PAD
from pipeline.model import AV2TSAM, head_config
from pipeline.model.av2t_sam import TEXT_IDS, TEXT_LENGTH
from pipeline.presets import encoder_config

D_CLIP, D_CLAP, N = 64, 48, 3


@pytest.fixture(scope="module")
def parts():
    sam2 = S.build(S.Config.model_validate(encoder_config("tiny", "sam2")))
    beit3 = build_encoder("beit3", "tiny")
    frames = np.random.default_rng(0).integers(0, 256, (N, 64, 64, 3), dtype=np.uint8)
    batch = {**sam2.encode(sam2.preprocess(frames)), **beit3.encode(beit3.preprocess(frames))}
    g = torch.Generator().manual_seed(0)
    batch |= {"clip": torch.randn(N, D_CLIP, generator=g), "clap": torch.randn(N, D_CLAP, generator=g)}
    ids = torch.full((N, 8), PAD, dtype=torch.long)
    length = torch.tensor([5, 3, 8])
    for i, n in enumerate(length.tolist()):
        ids[i, :n] = torch.arange(n) + 4 + i
    batch |= {TEXT_IDS: ids, TEXT_LENGTH: length}
    return sam2, beit3, batch


def head(parts, text: str) -> AV2TSAM:
    sam2, beit3, _ = parts
    return AV2TSAM(head_config("tiny", text=text), sam2, beit3, D_CLIP, D_CLAP).eval()


def logits(m: AV2TSAM, batch) -> torch.Tensor:
    with torch.no_grad():
        return m.forward_cached(batch)["logits"]


def test_default_head_is_unchanged_and_reads_no_text(parts):
    _, _, batch = parts
    m = head(parts, "none")
    assert "text_gate" not in m.head_modules()
    assert not any(k.startswith("text_gate.") for k in m.trainable_state_dict())
    no_text = {k: v for k, v in batch.items() if k not in (TEXT_IDS, TEXT_LENGTH)}
    assert torch.equal(logits(m, batch), logits(m, no_text))


@pytest.mark.parametrize("text", ["only", "concat", "gated"])
def test_text_heads_read_the_tokens_and_ignore_padding(parts, text):
    _, _, batch = parts
    m = head(parts, text)
    with pytest.raises(KeyError, match=TEXT_IDS):
        m.forward_cached({k: v for k, v in batch.items() if k != TEXT_IDS})
    base = logits(m, batch)
    other = batch[TEXT_IDS].clone()
    other[:, 1] = 30  # a different word in every row
    assert not torch.allclose(base, logits(m, {**batch, TEXT_IDS: other}))
    padded = batch[TEXT_IDS].clone()
    padded[padded == PAD] = 17  # what stands at padded positions must not matter
    assert torch.allclose(base, logits(m, {**batch, TEXT_IDS: padded}), atol=1e-5)
    audio = logits(m, {**batch, "clap": batch["clap"].flip(0)})
    if text == "only":
        assert torch.equal(base, audio)  # the AV tokens are not used
    else:
        assert not torch.allclose(base, audio)
    assert ("text_gate" in m.head_modules()) == (text == "gated")


def test_gated_round_trip_is_strict(parts):
    m = head(parts, "gated")
    sd = m.trainable_state_dict()
    head(parts, "gated").load_trainable_state_dict(sd)
    with pytest.raises(Exception, match="text_gate"):
        head(parts, "concat").load_trainable_state_dict(sd)


@pytest.mark.slow
def test_train_and_evaluate_on_ref_avs(tmp_path):
    """extract -> train (two heads, one epoch) -> evaluate test_s and test_n with their metrics."""
    from pipeline.data.synth import write_synthetic
    from pipeline.settings import EvalConfig, ExtractConfig, TrainConfig
    from stages.evaluate import evaluate
    from stages.extract import extract
    from stages.train import sweep

    root, store = tmp_path / "ra", str(tmp_path / "s.zarr")
    write_synthetic(root, "ref-avs", videos=6, seed=0)
    splits = ["train", "val", "test_s", "test_n"]
    extract(
        ExtractConfig(root=root, subset="ref-avs", store=store, splits=splits, device="cpu", threads=2),
        progress=False,
    )
    cfg = TrainConfig.model_validate(
        {
            "store": store,
            "subset": "ref-avs",
            "out": tmp_path / "heads",
            "device": "cpu",
            "progress": False,
            "optim": {"epochs": 1, "batch_size": 8},
        }
    )
    heads = {n: head_config("tiny", text=t) for n, t in {"av": "none", "both": "concat"}.items()}
    table = sweep(cfg, heads)
    assert (
        list(table["head"]) == ["av", "both"] and table["val_M_J"].between(0, 1).all()
    )  # Ref-AVS J under the column name
    for split in ("test_s", "test_n"):
        rep = evaluate(
            EvalConfig(
                checkpoint=tmp_path / "heads" / "both" / "best.pt",
                root=root,
                subset="ref-avs",
                split=split,
                mode="cached",
                store=store,
                device="cpu",
                out=tmp_path / split,
                progress=False,
            )  # fmt: skip
        )
        saved = json.loads((tmp_path / split / "report.json").read_text())
        assert saved["J"] == rep["J"] and 0 <= rep["J"] <= 1 and 0 <= rep["F"] <= 1
        assert ("S" in saved) == (split == "test_n")
        assert saved["model"]["head"]["text"] == "concat" and "0.4" in saved["conventions"]
