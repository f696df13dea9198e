"""AV2T-SAM on SAM 1: cached == end to end, segment-anything's own path, adapters, what trains, the paper layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pipeline.encoders  # noqa: F401  (torchvision shim before segment_anything)
from pipeline.checkpoints import CheckpointError, read_key_listing
from pipeline.encoders import sam1_image as s1
from pipeline.encoders.registry import build_encoder
from pipeline.model.av2t_sam1 import AV2TSAM1, REFERENCE_PREFIXES_SAM1
from pipeline.model.build import build_model, head_class
from pipeline.model.config import head_config
from pipeline.official.checkpoint import to_reference
from pipeline.official.listing import listing_path
from pipeline.official.model import PRESETS, empty_model
from pipeline.presets import encoder_config

PRESET = "tiny-sam1"
D_CLIP, D_CLAP = 64, 48
N = 3
DEPTH = 4  # the tiny-sam1 ViT's blocks


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Random uint8 RGB frames, not square and not at the input size (SAM 1 resizes the longest side, pads)."""
    return np.random.default_rng(1).integers(0, 256, (N, 60, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, D_CLIP, generator=g), torch.randn(N, D_CLAP, generator=g)


@pytest.fixture(scope="module")
def beit3():
    return build_encoder("beit3", PRESET)


def model(beit3, block: int | None = None, **head) -> AV2TSAM1:
    """A tiny AV2T-SAM on SAM 1; adapters from `block` when it is set (the encoder then caches its input)."""
    if block is not None:
        head |= {"adapters": True, "adapter_start_block": block}
    overrides = {"trunk_block": block} if block is not None else None
    sam = build_encoder("sam2", PRESET, overrides=overrides)
    return AV2TSAM1(head_config(PRESET, **head), sam, beit3, D_CLIP, D_CLAP)


def cached_batch(m: AV2TSAM1, frames, clip, clap) -> dict[str, torch.Tensor]:
    """The store arrays for these frames, from the encoders' own preprocess + encode (float32)."""
    sam, beit3 = m.sam2, m.beit3
    return {
        **sam.encode(sam.preprocess(frames)),
        **beit3.encode(beit3.preprocess(frames)),
        "clip": clip,
        "clap": clap,
    }


def scale_adapters(m: AV2TSAM1, factor: float = 20.0) -> None:
    """Make the adapters' effect large, so that a misplaced adapter cannot hide in rounding."""
    with torch.no_grad():
        for p in m.audio_prompt_generator.parameters():
            p.mul_(factor)


def segment_anything_path(m: AV2TSAM1, frames, clip, clap) -> dict[str, torch.Tensor]:
    """Independent path: segment-anything's own ViT forward (adapters as pre-hooks), prompt encoder, mask
    decoder (one frame at a time: the package repeats the image per prompt), the reference's argsort
    selection and `Sam.postprocess_masks`."""
    sam = m.sam2.sam
    fused = m.projector(clip, clap)
    prompts = m.audio_prompt_generator(fused) if m.cfg.adapters else {}
    hooks = [
        sam.image_encoder.blocks[i].register_forward_pre_hook(
            lambda _, args, p=p: (p[:, None, None, :] + args[0],)
        )
        for i, p in prompts.items()
    ]
    try:
        embed = sam.image_encoder(m.sam2.preprocess(frames))
    finally:
        for h in hooks:
            h.remove()
    patches = m.beit3.encode(m.beit3.preprocess(frames))["beit3_patches"]
    text = m._prompt(patches, fused)
    _, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
    dense = m.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(dense)
    logits, iou = [], []
    for i in range(len(frames)):
        low, q = m.sam_mask_decoder(
            image_embeddings=embed[i : i + 1],
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=text[i : i + 1],
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        order = torch.argsort(q, dim=-1, descending=True)
        best = torch.take_along_dim(low, order[..., None, None], dim=1)[:, :1]
        s = m.sam2.cfg.image_size
        logits.append(sam.postprocess_masks(best, (s, s), (224, 224))[:, 0])
        iou.append(q)
    return {"logits": torch.cat(logits), "iou_preds": torch.cat(iou)}


@pytest.mark.parametrize("block", [None, 0, 2])
def test_cached_path_equals_end_to_end_path(beit3, frames, embeddings, block):
    m = model(beit3, block).eval()
    if block is not None:
        scale_adapters(m)
    clip, clap = embeddings
    with torch.no_grad():
        cached = m.forward_cached(cached_batch(m, frames, clip, clap))
        raw = m.forward_raw(frames, clip, clap)
    assert cached["logits"].shape == (N, 224, 224)
    torch.testing.assert_close(cached["logits"], raw["logits"], rtol=0, atol=1e-5)
    assert torch.equal(cached["choice"], raw["choice"])


@pytest.mark.parametrize("block", [None, 0, 2])
def test_forward_equals_segment_anythings_own_path(beit3, frames, embeddings, block):
    m = model(beit3, block).eval()
    if block is not None:
        scale_adapters(m)
    clip, clap = embeddings
    with torch.no_grad():
        ours = m.forward_raw(frames, clip, clap)
        ref = segment_anything_path(m, frames, clip, clap)
    torch.testing.assert_close(ours["iou_preds"], ref["iou_preds"], rtol=0, atol=1e-5)
    scale = ref["logits"].abs().max().item()
    assert (ours["logits"] - ref["logits"]).abs().max().item() <= 1e-5 * scale


def test_adapters_change_the_output_from_their_first_block(beit3, frames, embeddings):
    clip, clap = embeddings
    with torch.no_grad():
        plain = model(beit3).eval().forward_raw(frames, clip, clap)["logits"]
        m = model(beit3, 2).eval()
        scale_adapters(m)
        adapted = m.forward_raw(frames, clip, clap)["logits"]
    assert sorted(m.audio_prompt_generator.blocks) == [2, 3]
    assert (plain - adapted).abs().max() > 1e-3
    assert m.cached_fields()["sam2"] == ["trunk_in"] and model(beit3).cached_fields()["sam2"] == [
        "image_embed"
    ]


def test_the_mask_with_the_highest_predicted_iou_is_chosen(beit3, frames, embeddings):
    m = model(beit3).eval()
    with torch.no_grad():  # favour output 1 (of 0..2) for every frame
        m.sam_mask_decoder.iou_prediction_head.layers[-1].bias[2] += 100.0
        out = m.forward_raw(frames, *embeddings)
    assert out["choice"].tolist() == [1] * N
    assert torch.equal(out["iou_pred"], out["iou_preds"][:, 1])


def test_only_the_head_trains_and_the_encoders_stay_untouched(beit3, frames, embeddings):
    m = model(beit3, 0)
    frozen = {k: v.clone() for k, v in m.sam2.sam.state_dict().items()}
    batch = cached_batch(m, frames, *embeddings)
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1)
    m.forward_cached(batch)["logits"].mean().backward()
    got = {n.split(".")[0] for n, p in m.named_parameters() if p.grad is not None}
    assert got == {
        "projector",
        "audio_prompt_generator",
        "text_hidden_fcs",
        "sam_mask_decoder",
        "no_mask_embed",
    }
    opt.step()
    assert all(torch.equal(v, m.sam2.sam.state_dict()[k]) for k, v in frozen.items())
    assert not torch.equal(m.sam_mask_decoder.iou_token.weight, m.sam2.sam.mask_decoder.iou_token.weight)


def test_trainable_state_round_trip_and_strict_refusal(beit3, frames, embeddings):
    a, b = model(beit3, 2, seed=1), model(beit3, 2, seed=2)
    b.load_trainable_state_dict(a.trainable_state_dict())
    with torch.no_grad():
        out_a, out_b = (x.eval().forward_raw(frames, *embeddings)["logits"] for x in (a, b))
    assert torch.equal(out_a, out_b)
    sd = a.trainable_state_dict()
    del sd["audio_prompt_generator.shared_mlp.bias"]
    with pytest.raises(CheckpointError, match="shared_mlp.bias"):
        b.load_trainable_state_dict(sd, "head.pt")


def test_the_preset_picks_the_head(tmp_path):
    m = build_model(head_config(PRESET, adapters=True, adapter_start_block=1), PRESET, D_CLIP, D_CLAP)
    assert type(m) is AV2TSAM1 and head_class(m.sam2) is AV2TSAM1 and m.sam2.cfg.trunk_block == 1
    assert type(build_model(head_config("tiny"), "tiny", D_CLIP, D_CLAP)).__name__ == "AV2TSAM"
    with pytest.raises(CheckpointError, match="evf-sam-multitask"):
        build_model(head_config("paper-sam1"), "paper-sam1", 512, 512, weights_dir=tmp_path)
    assert encoder_config("paper-official-sam1", "clap") == encoder_config("paper-official", "clap")
    assert encoder_config("paper-official-sam1", "sam2") == encoder_config("paper-sam1", "sam2")


# ---------------------------------------------------------------- paper sizes (meta device)


@pytest.mark.parametrize("adapters", [False, True])
def test_paper_head_has_the_reference_keys_shapes_and_trainable_count(adapters):
    m = empty_model(adapters, preset=PRESETS["sam1"])
    assert isinstance(m, AV2TSAM1) and len(m.sam2.sam.image_encoder.blocks) == 32
    rows = read_key_listing(listing_path(adapters, "sam1"))
    ref = to_reference(m)  # check=True: exactly the listing's keys and shapes, in its order
    assert list(ref) == [k for k, _, _ in rows]
    trainable = sum(
        n for k, s, _ in rows if k.startswith(tuple(REFERENCE_PREFIXES_SAM1.values())) for n in [_numel(s)]
    )
    assert m.param_counts()["trainable"] == trainable == (17_058_276 if adapters else 7_996_644)


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


def test_sam1_encoder_widths_are_vit_h():
    cfg = s1.Config()
    assert (cfg.vit.embed_dim, cfg.vit.depth, cfg.image_size) == (1280, 32, 1024)
