"""AV2T-SAM: cached == end to end, the reference's semantics, what trains, selection, fusions, state, loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pipeline.encoders  # noqa: F401  (torchvision fix before sam2 imports it)
from pipeline.checkpoints import CheckpointError, read_key_listing
from pipeline.encoders import beit3 as B
from pipeline.encoders import sam2_image as S
from pipeline.encoders.registry import build_encoder
from pipeline.model import AV2TSAM, HeadConfig, head_config, segmentation_loss
from pipeline.model.av2t_sam import REFERENCE_PREFIXES, upsample_masks
from pipeline.model.build import build_model, read_text_hidden_fcs
from pipeline.model.loss import hard_iou, soft_iou_loss
from pipeline.official.listing import listing_path
from pipeline.presets import encoder_config

D_CLIP, D_CLAP = 64, 48  # different widths, so a swapped projection cannot pass
N = 4
LATE = 5  # the tiny trunk's last block (stages 0-2 are cached before it)


def sam2_cfg(**changes) -> S.Config:
    """The tiny SAM 2 preset with some fields changed (same seed, so the same weights)."""
    return S.Config.model_validate(encoder_config("tiny", "sam2") | changes)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Random uint8 RGB frames, not at either encoder's input size (both resize)."""
    return np.random.default_rng(0).integers(0, 256, (N, 72, 72, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def embeddings() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLIP, CLAP and a second CLAP batch."""
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(N, D_CLIP, generator=g),
        torch.randn(N, D_CLAP, generator=g),
        torch.randn(N, D_CLAP, generator=g),
    )


@pytest.fixture(scope="module")
def beit3() -> B.Beit3Encoder:
    return build_encoder("beit3", "tiny")


@pytest.fixture(scope="module")
def sam2s() -> dict:
    """Tiny SAM 2 encoders by (highres, trunk_block)."""
    keys = [
        ("after_conv", None),
        ("before_conv", None),
        ("after_conv", 0),
        ("before_conv", LATE),
        ("after_conv", 3),
    ]
    return {(h, k): S.build(sam2_cfg(highres=h, trunk_block=k)) for h, k in keys}


def model(sam2s, beit3, highres="after_conv", block=None, **head) -> AV2TSAM:
    """A tiny AV2T-SAM; adapters from `block` when it is set."""
    if block is not None:
        head |= {"adapters": True, "adapter_start_block": block}
    return AV2TSAM(head_config("tiny", **head), sam2s[(highres, block)], beit3, D_CLIP, D_CLAP)


def cached_batch(m: AV2TSAM, frames, clip, clap) -> dict[str, torch.Tensor]:
    """The store arrays for these frames, made by the encoders' own encode (float32)."""
    sam2, beit3 = m.sam2, m.beit3
    batch = {**sam2.encode(sam2.preprocess(frames)), **beit3.encode(beit3.preprocess(frames))}
    return {**batch, "clip": clip, "clap": clap}


def scale_adapters(m: AV2TSAM, factor: float = 20.0) -> None:
    """Make the adapters' effect large, so that a misplaced adapter cannot hide in rounding."""
    with torch.no_grad():
        for p in m.audio_prompt_generator.parameters():
            p.mul_(factor)


def sam2_reference(m: AV2TSAM, frames, clip, clap) -> dict[str, torch.Tensor]:
    """Independent path: sam2's own forward_image + _prepare_backbone_features, adapters as pre-hooks."""
    sam = m.sam2.sam
    fused = m.projector(clip, clap)
    prompts = m.audio_prompt_generator(fused) if m.cfg.adapters else {}
    hooks = [
        sam.image_encoder.trunk.blocks[i].register_forward_pre_hook(
            lambda _, args, p=p: (args[0] + p[:, None, None, :],)
        )
        for i, p in prompts.items()
    ]
    try:
        backbone_out = sam.forward_image(m.sam2.preprocess(frames))
    finally:
        for h in hooks:
            h.remove()
    _, feats, _, sizes = sam._prepare_backbone_features(backbone_out)
    feats[-1] = feats[-1] + sam.no_mem_embed
    maps = [f.permute(1, 2, 0).reshape(len(frames), -1, h, w) for f, (h, w) in zip(feats, sizes, strict=True)]
    patches = m.beit3.encode(m.beit3.preprocess(frames))["beit3_patches"]
    return m._decode(maps[2], maps[:2], m._prompt(patches, fused))


# ---------------------------------------------------------------- (a) cached == end to end


@pytest.mark.parametrize(
    ("highres", "block"),
    [
        ("after_conv", None),
        ("before_conv", None),
        ("after_conv", 0),
        ("before_conv", LATE),
        ("after_conv", 3),
    ],
)
def test_cached_path_equals_end_to_end_path(sam2s, beit3, frames, embeddings, highres, block):
    clip, clap, _ = embeddings
    m = model(sam2s, beit3, highres, block)
    if block is not None:
        scale_adapters(m)
    batch = cached_batch(m, frames, clip, clap)
    assert set(m.cached_fields()["sam2"]) <= set(batch)
    with torch.no_grad():
        a, b, r = (
            m.forward_cached(batch),
            m.forward_raw(frames, clip, clap),
            sam2_reference(m, frames, clip, clap),
        )
    for out in (b, r):
        assert (a["logits"] - out["logits"]).abs().max() < 1e-4
        assert (a["iou_preds"] - out["iou_preds"]).abs().max() < 1e-5
        assert torch.equal(a["choice"], out["choice"])


def test_cached_fields_name_the_encoders_arrays(sam2s, beit3):
    assert model(sam2s, beit3).cached_fields() == {
        "clip": ["clip"],
        "clap": ["clap"],
        "beit3": ["beit3_patches"],
        "sam2": ["image_embed", "high_res_0", "high_res_1"],
    }
    assert model(sam2s, beit3, "before_conv").cached_fields()["sam2"][1:] == [
        "high_res_0_pre_conv",
        "high_res_1_pre_conv",
    ]
    assert model(sam2s, beit3, block=0).cached_fields()["sam2"] == ["trunk_in"]
    late = model(sam2s, beit3, "before_conv", LATE).cached_fields()["sam2"]
    assert late == ["trunk_in", "stage_out_0", "stage_out_1", "stage_out_2"]
    assert set(late) <= set(sam2s[("before_conv", LATE)].output_shapes())


def test_missing_trunk_arrays_say_how_to_extract_them(sam2s, beit3, frames, embeddings):
    m = model(sam2s, beit3, block=0)
    batch = cached_batch(m, frames, *embeddings[:2])
    del batch["trunk_in"]
    with pytest.raises(KeyError, match="trunk_block=0"):
        m.forward_cached(batch)


def test_adapters_change_the_output_and_are_added_before_their_block(sam2s, beit3, frames, embeddings):
    clip, clap, clap2 = embeddings
    m = model(sam2s, beit3, "after_conv", 3)
    scale_adapters(m)
    with torch.no_grad():
        a = m.forward_raw(frames, clip, clap)
        pre = sam2_reference(m, frames, clip, clap)
        bias = m.audio_prompt_generator.lightweight_mlp_3[2].bias
        # only block 3's input moves; not by a constant, which the block's LayerNorms would remove
        bias.add_(5 * torch.randn(len(bias), generator=torch.Generator().manual_seed(0)))
        moved = m.forward_raw(frames, clip, clap)
    assert (a["logits"] - pre["logits"]).abs().max() < 1e-6  # the same arithmetic: equal to rounding
    assert (a["logits"] - moved["logits"]).abs().max() > 1e-5
    assert sorted(m.audio_prompt_generator.blocks) == [3, 4, 5]
    trunk = m.sam2.sam.image_encoder.trunk
    widths = [
        m.audio_prompt_generator.get_submodule(f"lightweight_mlp_{i}")[2].out_features for i in (3, 4, 5)
    ]
    assert widths == [trunk.blocks[i].dim for i in (3, 4, 5)]


# ---------------------------------------------------------------- (b) what trains


NEVER_USED = ("sam_mask_decoder.output_hypernetworks_mlps.0.", "sam_mask_decoder.pred_obj_score_head.")


def _force_choice(m: AV2TSAM, mask: int) -> None:
    """Make the IoU head prefer multimask output `mask` (0..2) for every input."""
    with torch.no_grad():
        last = m.sam_mask_decoder.iou_prediction_head.layers[-1]
        last.bias.zero_()
        last.bias[1 + mask] = 50.0  # output 0 belongs to the single-mask token, which multimask drops


@pytest.mark.parametrize(("highres", "block"), [("before_conv", None), ("after_conv", 0)])
def test_only_trainable_parameters_get_gradients(sam2s, beit3, frames, embeddings, highres, block):
    clip, clap, _ = embeddings
    m = model(sam2s, beit3, highres, block, iou_loss_weight=1.0, iou_pred_target="all")
    batch = cached_batch(m, frames, clip, clap)
    gt = torch.rand(N, 224, 224, generator=torch.Generator().manual_seed(1)) > 0.5
    for mask in range(3):  # each multimask output's hypernetwork trains only when its mask is chosen
        _force_choice(m, mask)
        out = m.forward_cached(batch)
        assert (out["choice"] == mask).all()
        segmentation_loss(out, gt, m.cfg)["loss"].backward()
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert all(n.startswith(("sam2.", "beit3.")) for n in frozen)
    assert all(m.get_parameter(n).grad is None for n in frozen)
    silent = {n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())}
    # As in the reference: multimask output drops mask token 0, and the object score is never used.
    assert silent and all(n.startswith(NEVER_USED) for n in silent)
    trained = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    want = {"projector", "text_hidden_fcs", "sam_mask_decoder", "no_mask_embed"}
    assert trained == want | ({"audio_prompt_generator"} if block is not None else set())


def test_after_conv_cache_freezes_the_two_convs_only_without_adapters(sam2s, beit3):
    plain, before, adapted = (
        model(sam2s, beit3),
        model(sam2s, beit3, "before_conv"),
        model(sam2s, beit3, block=0),
    )
    for m, frozen in ((plain, True), (before, False), (adapted, False)):
        convs = [
            p.requires_grad
            for c in ("conv_s0", "conv_s1")
            for p in getattr(m.sam_mask_decoder, c).parameters()
        ]
        assert convs == [not frozen] * 4
    n_convs = sum(
        p.numel() for c in ("conv_s0", "conv_s1") for p in getattr(plain.sam_mask_decoder, c).parameters()
    )
    assert before.param_counts()["trainable"] - plain.param_counts()["trainable"] == n_convs


def test_training_leaves_the_encoders_untouched(sam2s, beit3, frames, embeddings):
    enc = sam2s[("before_conv", None)]
    digest = enc.weights_digest()
    m = model(sam2s, beit3, "before_conv")
    assert m.frozen_fingerprints() == {"sam2": digest, "beit3": beit3.weights_digest()}
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.add_(0.5)
    from pipeline.checkpoints import state_digest

    assert state_digest(enc) == digest and not m.sam2.training and not m.beit3.training
    m.train()
    assert m.training and not m.sam2.training and not m.beit3.training


# ---------------------------------------------------------------- (c) multimask selection


def test_the_mask_with_the_highest_predicted_iou_is_chosen(sam2s, beit3, frames, embeddings, monkeypatch):
    m = model(sam2s, beit3)
    batch = cached_batch(m, frames, *embeddings[:2])
    h = m.sam2.output_shapes()["high_res_0"][-1]
    masks = torch.randn(N, 3, h, h, generator=torch.Generator().manual_seed(3))
    iou = torch.tensor([[0.1, 0.9, 0.2], [0.7, 0.3, 0.1], [0.2, 0.3, 0.8], [0.5, 0.6, 0.4]])

    def fake(**kw):
        assert kw["multimask_output"] is True and kw["repeat_image"] is False
        assert kw["sparse_prompt_embeddings"].shape == (N, 1, 256)  # ONE sparse token: the text embedding
        return masks, iou, None, None

    monkeypatch.setattr(m.sam_mask_decoder, "forward", fake)
    out = m.forward_cached(batch)
    assert out["choice"].tolist() == [1, 0, 2, 1]
    assert torch.equal(out["iou_pred"], torch.tensor([0.9, 0.7, 0.8, 0.6]))
    # the reference: argsort descending, take the first, then bilinear to 224
    ids = torch.argsort(iou, dim=-1, descending=True)
    ref = torch.take_along_dim(masks, ids[..., None, None], dim=1)[:, :1]
    ref = F.interpolate(ref, (224, 224), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out["logits"], ref, rtol=0, atol=0)
    # Upsampling 3 channels vs 1 may round differently in the last bit under another thread count.
    torch.testing.assert_close(
        upsample_masks(masks, 224)[torch.arange(N), out["choice"]], out["logits"], rtol=0, atol=1e-6
    )


def test_dense_prompt_is_no_mask_embed_and_sparse_is_the_fcs_output(
    sam2s, beit3, frames, embeddings, monkeypatch
):
    m = model(sam2s, beit3)
    batch = cached_batch(m, frames, *embeddings[:2])
    seen = {}
    real = m.sam_mask_decoder.forward

    def spy(**kw):
        seen.update(kw)
        return real(**kw)

    monkeypatch.setattr(m.sam_mask_decoder, "forward", spy)
    with torch.no_grad():
        m.forward_cached(batch)
        cls = m.beit3.forward_tokens(batch["beit3_patches"], m.projector.tokens(m.projector(*embeddings[:2])))
        want_sparse = m.text_hidden_fcs[0](cls)[:, None]
    torch.testing.assert_close(seen["sparse_prompt_embeddings"], want_sparse, rtol=0, atol=1e-6)
    dense = seen["dense_prompt_embeddings"]
    assert dense.shape == (N, 256, 8, 8)
    assert torch.equal(dense, m.no_mask_embed.weight.view(1, -1, 1, 1).expand_as(dense))
    assert torch.equal(seen["image_pe"], m.sam2.sam.sam_prompt_encoder.get_dense_pe())


# ---------------------------------------------------------------- (d) shapes, fusions, init


@pytest.mark.parametrize("fusion", ["mul", "clip", "clap", "sum", "concat", "gated"])
def test_fusions_shapes_and_which_input_matters(sam2s, beit3, frames, embeddings, fusion):
    clip, clap, clap2 = embeddings
    m = model(sam2s, beit3, fusion=fusion)
    batch = cached_batch(m, frames, clip, clap)
    with torch.no_grad():
        out = m.forward_cached(batch)
        other_audio = m.forward_cached(batch | {"clap": clap2})
        other_image = m.forward_cached(batch | {"clip": torch.flip(clip, [0])})
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {
        "logits": (N, 224, 224),
        "iou_pred": (N,),
        "low_res_masks": (N, 3, 32, 32),
        "iou_preds": (N, 3),
        "choice": (N,),
    }
    assert all(v.isfinite().all() for v in out.values())
    audio_moves = (out["logits"] - other_audio["logits"]).abs().max().item()
    image_moves = (out["logits"] - other_image["logits"]).abs().max().item()
    assert (audio_moves == 0) == (fusion == "clip")
    assert (image_moves == 0) == (fusion == "clap")
    if fusion != "clip":
        assert audio_moves > 1e-4


def test_projector_follows_the_reference(sam2s, beit3, embeddings):
    clip, clap, _ = embeddings
    m = model(sam2s, beit3, fused_scale=1.0)
    p = m.projector
    want = p.audio_proj(F.normalize(clap, dim=-1)) * p.vision_proj(F.normalize(clip, dim=-1))
    torch.testing.assert_close(p(clip, clap), want, rtol=0, atol=0)
    assert [type(x).__name__ for x in p.to_text_space] == ["Linear", "ReLU", "Linear"]
    assert p.to_text_space[2].out_features == 3 * beit3.cfg.embed_dim
    assert torch.equal(
        p.tokens(want)[:, 1], p.to_text_space(want)[:, beit3.cfg.embed_dim : 2 * beit3.cfg.embed_dim]
    )
    linears = (p.audio_proj, p.vision_proj, p.to_text_space[0], p.to_text_space[2])
    for layer in linears:  # kaiming normal: std sqrt(2 / fan_in)
        assert layer.weight.std().item() == pytest.approx((2 / layer.in_features) ** 0.5, rel=0.1)
    adapter = model(sam2s, beit3, block=0).audio_prompt_generator.lightweight_mlp_0
    assert [type(x).__name__ for x in adapter] == ["Linear", "GELU", "Linear"] and adapter[
        1
    ].approximate == "none"
    assert (
        adapter[0].weight.std().item() == pytest.approx(0.02, rel=0.1) and not adapter[2].bias.detach().any()
    )
    assert not any(layer.bias.detach().any() for layer in linears)  # the reference zeroes every bias
    fcs = m.text_hidden_fcs[0]
    assert [type(x).__name__ for x in fcs] == ["Linear", "ReLU", "Linear"]
    assert (fcs[0].in_features, fcs[0].out_features, fcs[2].out_features) == (192, 192, 256)
    assert "projector.fused_scale" not in m.trainable_state_dict()


def test_tiny_init_starts_the_fused_feature_at_unit_scale(sam2s, beit3, embeddings):
    clip, clap, _ = embeddings
    auto, plain = model(sam2s, beit3), model(sam2s, beit3, fused_scale=1.0)
    with torch.no_grad():
        rms = auto.projector(clip, clap).pow(2).mean().sqrt().item()
        raw = plain.projector(clip, clap).pow(2).mean().sqrt().item()
    assert 0.5 < rms < 2 and raw < 0.1  # kaiming x kaiming on unit vectors: 2 / sqrt(d_clip d_clap) per dim
    assert float(auto.trainable_state_dict()["projector.fused_scale"]) > 5
    again = model(sam2s, beit3)  # seeded: the same head twice
    assert all(
        torch.equal(v, again.trainable_state_dict()[k]) for k, v in auto.trainable_state_dict().items()
    )


def test_config_rejects_unknown_fields_and_bad_blocks(sam2s, beit3):
    with pytest.raises(ValueError):
        HeadConfig(fusion="mul", projector="mul")
    with pytest.raises(ValueError, match="adapter_start_block 6"):
        AV2TSAM(
            head_config("tiny", adapters=True, adapter_start_block=6), sam2s[("after_conv", 0)], beit3, 4, 4
        )


# ---------------------------------------------------------------- (e) trainable state


def test_trainable_state_round_trip_and_strict_refusal(sam2s, beit3, frames, embeddings, tmp_path):
    clip, clap, _ = embeddings
    a, b = model(sam2s, beit3, "before_conv"), model(sam2s, beit3, "before_conv", seed=1)
    with torch.no_grad():
        a.sam_mask_decoder.conv_s0.weight.add_(0.1)  # trained convs travel with the state
    batch = cached_batch(a, frames, clip, clap)
    sd = a.trainable_state_dict()
    assert all(
        k.split(".")[0] in {"projector", "text_hidden_fcs", "sam_mask_decoder", "no_mask_embed"} for k in sd
    )
    torch.save(sd, tmp_path / "head.pt")
    b.load_trainable_state_dict(torch.load(tmp_path / "head.pt", weights_only=True), tmp_path / "head.pt")
    with torch.no_grad():
        torch.testing.assert_close(
            b.forward_cached(batch)["logits"], a.forward_cached(batch)["logits"], rtol=0, atol=0
        )

    broken = {k: v for k, v in sd.items() if k != "no_mask_embed.weight"} | {
        "projector.extra.weight": torch.zeros(1)
    }
    with pytest.raises(CheckpointError) as e:
        b.load_trainable_state_dict(broken, "broken.pt")
    assert "broken.pt" in str(e.value) and "no_mask_embed.weight" in str(e.value)
    assert "projector.extra.weight" in str(e.value)
    adapters = model(sam2s, beit3, block=0)
    with pytest.raises(CheckpointError, match="audio_prompt_generator"):
        adapters.load_trainable_state_dict(model(sam2s, beit3, "after_conv", 3).trainable_state_dict())


def test_after_conv_model_refuses_trained_convs(sam2s, beit3):
    trained = model(sam2s, beit3, "before_conv")
    with torch.no_grad():
        trained.sam_mask_decoder.conv_s1.bias.add_(1.0)
    with pytest.raises(CheckpointError, match="conv_s1"):
        model(sam2s, beit3).load_trainable_state_dict(trained.trainable_state_dict())


# ---------------------------------------------------------------- paper sizes (meta device)


def _listing(adapters: bool) -> dict[str, tuple[int, ...]]:
    return {k: shape for k, shape, _ in read_key_listing(listing_path(adapters))}


@pytest.fixture(scope="module")
def paper_encoders() -> tuple[S.Sam2ImageEncoder, B.Beit3Encoder]:
    """Paper SAM 2 and BEiT-3 with their parameters on the meta device."""
    scfg = S.Config.model_validate(encoder_config("paper", "sam2"))
    bcfg = B.Config.model_validate(encoder_config("paper", "beit3"))
    return S.Sam2ImageEncoder(S.build_sam(scfg, empty=True), scfg), B.Beit3Encoder(
        bcfg, B.make_beit3(bcfg, "meta")
    )


@pytest.mark.parametrize("adapters", [False, True])
def test_paper_head_has_the_reference_keys_shapes_and_trainable_count(paper_encoders, adapters):
    sam2, beit3 = paper_encoders
    sam2 = S.Sam2ImageEncoder(sam2.sam, sam2.cfg.model_copy(update={"highres": "before_conv"}))
    # the reference's MS-CLAP is 1024-d; with it, the head is the reference's parameter for parameter
    with torch.device("meta"):
        m = AV2TSAM(head_config("paper", adapters=adapters), sam2, beit3, d_clip=512, d_clap=1024)
    ref = _listing(adapters)
    ours = {}
    for k, v in m.trainable_state_dict().items():
        prefix = next(p for p in REFERENCE_PREFIXES if k.startswith(p))
        ours[REFERENCE_PREFIXES[prefix] + k[len(prefix) :]] = tuple(v.shape)
    assert all(ref[k] == s for k, s in ours.items())
    trainable_in_ref = {k for k in ref if k.startswith(tuple(REFERENCE_PREFIXES.values()))}
    assert set(ours) == trainable_in_ref
    assert m.param_counts()["trainable"] == (34_279_477 if adapters else 8_153_413)  # reference README


def test_build_model_reads_the_preset(tmp_path):
    m = build_model(head_config("tiny", adapters=True, adapter_start_block=2), "tiny", D_CLIP, D_CLAP)
    assert m.sam2.cfg.trunk_block == 2 and m.cached_fields()["sam2"] == ["trunk_in", "stage_out_0"]
    with pytest.raises(CheckpointError, match="evf-sam2-multitask"):
        build_model(head_config("paper"), "paper", 512, 512, weights_dir=tmp_path)


def test_text_hidden_fcs_load_strictly_from_an_evf_sam2_file(sam2s, beit3, tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    shapes = {"0.0.weight": (192, 192), "0.0.bias": (192,), "0.2.weight": (256, 192), "0.2.bias": (256,)}
    fcs = {
        k: torch.randn(s, generator=g).half() for k, s in shapes.items()
    }  # EVF stores some tensors in fp16
    path = tmp_path / "model.safetensors"
    save_file(
        {"text_hidden_fcs." + k: v for k, v in fcs.items()} | {"visual_model.no_mem_embed": torch.zeros(1)},
        path,
    )
    sd = read_text_hidden_fcs(tmp_path)  # the HF save_pretrained folder works too
    m = AV2TSAM(head_config("tiny"), sam2s[("after_conv", None)], beit3, D_CLIP, D_CLAP, sd, path)
    got = m.text_hidden_fcs.state_dict()
    assert all(torch.equal(got[k], v.float()) for k, v in fcs.items())

    save_file({"text_hidden_fcs." + k: v for k, v in fcs.items() if k != "0.2.bias"}, path)
    with pytest.raises(CheckpointError) as e:
        AV2TSAM(
            head_config("tiny"),
            sam2s[("after_conv", None)],
            beit3,
            D_CLIP,
            D_CLAP,
            read_text_hidden_fcs(path),
            path,
        )
    assert str(path) in str(e.value) and "0.2.bias" in str(e.value)
    save_file({"text_hidden_fcs.0.0.bias": torch.zeros(2), "lm_head.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        read_text_hidden_fcs(path)
    with pytest.raises(CheckpointError, match="YxZhang/evf-sam2-multitask"):
        read_text_hidden_fcs(tmp_path / "nowhere")


# ---------------------------------------------------------------- (f) loss


def _reference_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """train_avs.compute_loss on (B, 1, H, W)."""
    bce = torch.nn.BCEWithLogitsLoss()(pred, target)
    p = torch.sigmoid(pred)
    inter = (p * target).sum(dim=(2, 3))
    union = (p + target).sum(dim=(2, 3)) - inter
    return bce + (1 - inter / union).mean()


def _out(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """A model output whose single best mask is `logits` (the other two are empty) with IoU guess 1."""
    low = torch.stack([logits, torch.full_like(logits, -20), torch.full_like(logits, -20)], 1)
    b = len(logits)
    return {
        "logits": logits,
        "iou_pred": torch.ones(b),
        "low_res_masks": low,
        "iou_preds": torch.tensor([[1.0, 0.0, 0.0]] * b),
        "choice": torch.zeros(b, dtype=torch.long),
    }


def test_loss_on_hand_made_cases():
    cfg = HeadConfig()
    gt = torch.zeros(2, 224, 224)
    gt[0, 50:150, 60:120] = 1
    gt[1, :112] = 1
    perfect = segmentation_loss(_out(torch.where(gt > 0, 20.0, -20.0)), gt, cfg)
    assert perfect["loss"] < 1e-6 and perfect["iou_pred"] == 0
    wrong = segmentation_loss(_out(torch.where(gt > 0, -20.0, 20.0)), gt, cfg)
    assert wrong["bce"] > 19 and wrong["iou"] > 0.999 and wrong["iou_pred"] == 1
    half = segmentation_loss(_out(torch.zeros(2, 224, 224)), gt, cfg)
    n, g = 224 * 224, gt.flatten(1).sum(1)
    torch.testing.assert_close(half["bce"], torch.tensor(np.log(2), dtype=torch.float32))
    torch.testing.assert_close(half["iou"], (1 - g / (n + g)).mean())  # p = 1/2: I = g/2, U = n/2 + g/2
    logits = torch.randn(2, 224, 224, generator=torch.Generator().manual_seed(0)) * 3
    got = segmentation_loss(_out(logits), gt, cfg)
    torch.testing.assert_close(got["loss"], _reference_loss(logits[:, None], gt[:, None]))


def test_loss_weights_and_iou_prediction_targets():
    gt = torch.zeros(1, 224, 224)
    gt[0, :100] = 1
    out = _out(torch.where(gt > 0, 5.0, -5.0)) | {"iou_pred": torch.tensor([0.25], requires_grad=True)}
    plain = segmentation_loss(out, gt[:, None], HeadConfig())  # (B, 1, H, W) masks are accepted too
    weighted = segmentation_loss(out, gt, HeadConfig(iou_loss_weight=2.0, bce_weight=0.5))
    assert plain["iou_pred"].item() == pytest.approx(0.75**2)
    assert not plain["iou_pred"].requires_grad and weighted["iou_pred"].requires_grad  # weight 0: logged only
    want = 0.5 * plain["bce"] + plain["iou"] + 2 * 0.75**2
    assert weighted["loss"].item() == pytest.approx(want.item())
    every = segmentation_loss(out, gt, HeadConfig(iou_pred_target="all"))
    assert every["iou_pred"].item() == pytest.approx(0.0, abs=1e-7)  # predicted [1, 0, 0] = actual [1, 0, 0]
    assert hard_iou(torch.full((1, 4, 4), -1.0), torch.zeros(1, 4, 4)).item() == 1.0
    assert soft_iou_loss(torch.full((1, 4, 4), -200.0), torch.zeros(1, 4, 4)).isfinite()
    with pytest.raises(ValueError, match="do not match"):
        segmentation_loss(out, torch.zeros(1, 112, 112), HeadConfig())
