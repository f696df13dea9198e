"""SAM 2 image encoder: official key listings, strict loads of both checkpoint formats, tiny features, preprocessing."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.encoders  # noqa: F401  (torchvision fix before sam2 imports it)
from pipeline.checkpoints import CheckpointError
from pipeline.encoders import sam2_image as S
from pipeline.encoders import sam_common as SC
from pipeline.encoders.registry import build_encoder
from pipeline.presets import encoder_config

REF = Path(__file__).parent / "reference"
SAM2_KEYS = REF / "sam2_hiera_large.keys.tsv"
EVF_KEYS = REF / "evf-sam2-multitask.keys.tsv"
MIB = 2**20


def listing(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) rows of a reference key listing."""
    rows = []
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, () if shape == "()" else tuple(int(n) for n in shape.split("x")), dtype))
    return rows


def evf_to_sam2(key: str) -> str:
    """EVF's CXBlock `weight` back to sam2's `gamma` (the only naming difference)."""
    parts = key.split(".")
    if parts[:3] == ["memory_encoder", "fuser", "layers"] and len(parts) == 5 and parts[4] == "weight":
        return ".".join(parts[:4] + ["gamma"])
    return key


def fill(i: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A cheap tensor unique to key i: a constant plus a ramp over the first 1024 values (exact in fp16)."""
    t = torch.full(shape, (i % 2047 + 1) / 2048, dtype=dtype)
    n = min(t.numel(), 1024)
    t.view(-1)[:n] = ((torch.arange(n) + i) % 2048 / 2048).to(dtype)
    return t


def paper_cfg(**changes) -> S.Config:
    """The shipped paper preset with some fields changed."""
    return S.Config.model_validate(encoder_config("paper", "sam2") | changes)


def tiny_cfg(**changes) -> S.Config:
    """The shipped tiny preset with some fields changed."""
    return S.Config.model_validate(encoder_config("tiny", "sam2") | changes)


def frames(n: int, h: int = 224, w: int = 224, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB frames."""
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def assert_state_equals(sam: torch.nn.Module, rows, dtype: torch.dtype, prefix: str = "") -> None:
    """Every model tensor equals fill(i) of its file row i (written in dtype, cast to the model's dtype)."""
    state = sam.state_dict()
    mine = [
        (i, evf_to_sam2(k.removeprefix(prefix)), s)
        for i, (k, s, _) in enumerate(rows)
        if k.startswith(prefix)
    ]
    assert sorted(k for _, k, _ in mine) == sorted(state)
    for i, key, shape in mine:
        assert torch.equal(state[key], fill(i, shape, dtype).to(state[key].dtype)), key


@pytest.fixture(scope="module")
def paper_meta() -> S.SAM2Base:
    """The paper SAM2Base with its parameters on the meta device (shapes only)."""
    return S.build_sam(paper_cfg(), empty=True)


@pytest.fixture(scope="module")
def tiny() -> S.Sam2ImageEncoder:
    """The tiny preset (after_conv), built through the registry."""
    return build_encoder("sam2", "tiny")


@pytest.fixture(scope="module")
def tiny_before() -> S.Sam2ImageEncoder:
    """The tiny preset with highres=before_conv (same seed, so the same weights)."""
    return S.build(tiny_cfg(highres="before_conv"))


# ---------------------------------------------------------------- key listings (meta device)


def test_paper_model_matches_the_sam2_listing(paper_meta):
    rows = listing(SAM2_KEYS)
    state = paper_meta.state_dict()
    assert list(state) == [k for k, _, _ in rows]
    for key, shape, dtype in rows:
        assert tuple(state[key].shape) == shape, key
        assert str(state[key].dtype).removeprefix("torch.") == dtype, key
    assert sum(v.numel() for v in state.values()) == 224_430_386


def test_evf_listing_is_the_same_model_after_the_rename(paper_meta):
    rows = [
        (k.removeprefix("visual_model."), s) for k, s, _ in listing(EVF_KEYS) if k.startswith("visual_model.")
    ]
    renamed = [(evf_to_sam2(k), s) for k, s in rows]
    assert renamed == [(k, tuple(v.shape)) for k, v in paper_meta.state_dict().items()]
    assert sum(k != evf_to_sam2(k) for k, _ in rows) == 2  # fuser.layers.{0,1}.weight


def test_paper_uses_the_package_yaml_unchanged():
    mcfg = S.model_config(paper_cfg())
    yaml = S._package_yaml("configs/sam2/sam2_hiera_l.yaml").model
    assert mcfg.image_encoder == yaml.image_encoder and mcfg.image_size == 1024
    assert mcfg.memory_attention.layer.self_attention.feat_sizes == [64, 64]


def test_paper_output_shapes_and_bytes_per_frame(paper_meta):
    after = S.Sam2ImageEncoder(paper_meta, paper_cfg()).output_shapes()
    before = S.Sam2ImageEncoder(paper_meta, paper_cfg(highres="before_conv")).output_shapes()
    assert after == {"image_embed": (256, 64, 64), "high_res_0": (32, 256, 256), "high_res_1": (64, 128, 128)}
    assert before == {
        "image_embed": (256, 64, 64),
        "high_res_0_pre_conv": (256, 256, 256),
        "high_res_1_pre_conv": (256, 128, 128),
    }
    fp16 = {
        name: 2 * sum(int(np.prod(s)) for s in shapes.values())
        for name, shapes in (("a", after), ("b", before))
    }
    assert fp16 == {"a": 8 * MIB, "b": 42 * MIB}


# ---------------------------------------------------------------- full-size strict loads


@pytest.mark.slow
def test_paper_loads_a_full_size_meta_sam2_pt(tmp_path):
    rows = listing(SAM2_KEYS)
    path = tmp_path / "sam2_hiera_large.pt"
    torch.save({"model": {k: fill(i, s, torch.float32) for i, (k, s, _) in enumerate(rows)}}, path)
    gc.collect()
    enc = S.build(paper_cfg(weights="sam2_hiera_large.pt", weights_format="sam2"), tmp_path)
    path.unlink()  # 0.9 GB: do not leave it in pytest's kept tmp dirs
    assert_state_equals(enc.sam, rows, torch.float32)
    assert not enc.sam.training and not any(p.requires_grad for p in enc.parameters())


def _write_full_evf(path: Path, rows) -> None:
    """A full-size EVF-SAM2 model.safetensors (all three prefixes, 898M values) in float16."""
    from safetensors.torch import save_file

    save_file({k: fill(i, s, torch.float16) for i, (k, s, _) in enumerate(rows)}, str(path), {"format": "pt"})


@pytest.mark.slow
def test_paper_preset_loads_a_full_size_evf_sam2_safetensors(tmp_path):
    rows = listing(EVF_KEYS)
    assert sum(int(np.prod(s)) for _, s, _ in rows) == 898_444_850
    (tmp_path / "evf-sam2-multitask").mkdir()
    _write_full_evf(tmp_path / "evf-sam2-multitask" / "model.safetensors", rows)
    gc.collect()
    enc = build_encoder("sam2", "paper", weights_dir=tmp_path)
    (tmp_path / "evf-sam2-multitask" / "model.safetensors").unlink()  # 1.8 GB
    assert_state_equals(enc.sam, rows, torch.float16, prefix="visual_model.")
    gamma = enc.sam.memory_encoder.fuser.layers[1].gamma
    i = next(
        i for i, (k, _, _) in enumerate(rows) if k == "visual_model.memory_encoder.fuser.layers.1.weight"
    )
    assert torch.equal(gamma, fill(i, (256,), torch.float16).float())


def test_missing_paper_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(CheckpointError) as e:
        build_encoder("sam2", "paper", weights_dir=tmp_path)
    msg = str(e.value)
    assert (
        str(tmp_path / "evf-sam2-multitask" / "model.safetensors") in msg
        and "YxZhang/evf-sam2-multitask" in msg
    )


# ---------------------------------------------------------------- both formats on the tiny model


def _save(sd: dict[str, torch.Tensor], path: Path, fmt: str) -> None:
    """A SAM2Base state dict in EVF-SAM2 (prefixed, `weight` for gamma) or Meta's {"model": sd} format."""
    if fmt == "sam2":
        torch.save({"model": sd}, path)
        return
    from safetensors.torch import save_file

    evf = {"visual_model." + k.replace(".gamma", ".weight"): v.half() for k, v in sd.items()}
    evf["text_hidden_fcs.0.0.bias"] = torch.zeros(4)
    save_file(evf, str(path), {"format": "pt"})


@pytest.mark.parametrize("fmt", ["sam2", "evf-sam2"])
def test_tiny_checkpoint_loads_and_a_broken_one_names_file_and_keys(tmp_path, fmt):
    name = "tiny.pt" if fmt == "sam2" else "tiny.safetensors"
    sd = {
        k: torch.randn(v.shape).half().float()
        for k, v in S.build_sam(tiny_cfg(), empty=True).state_dict().items()
    }
    _save(sd, tmp_path / name, fmt)
    enc = S.build(tiny_cfg(weights=name, weights_format=fmt), tmp_path)
    state = enc.sam.state_dict()
    assert all(torch.equal(state[k], v) for k, v in sd.items())

    broken = {k: v for k, v in sd.items() if k != "no_mem_embed"} | {"extra_head.weight": torch.zeros(2)}
    _save(broken, tmp_path / name, fmt)
    with pytest.raises(CheckpointError) as e:
        S.build(tiny_cfg(weights=name, weights_format=fmt), tmp_path)
    msg = str(e.value)
    assert str(tmp_path / name) in msg and "no_mem_embed" in msg and "extra_head.weight" in msg


def test_wrong_container_is_a_clear_error(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="'model'"):
        S.build(tiny_cfg(weights="x.pt", weights_format="sam2"), tmp_path)


# ---------------------------------------------------------------- tiny features


@pytest.mark.parametrize("highres", ["after_conv", "before_conv"])
def test_tiny_features_have_the_documented_shapes(highres, request):
    enc = request.getfixturevalue("tiny" if highres == "after_conv" else "tiny_before")
    out = enc.encode(enc.preprocess(frames(3)))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == enc.output_shapes()
    assert all(v.shape[0] == 3 and v.dtype == torch.float32 and v.isfinite().all() for v in out.values())
    hr = (32, 64) if highres == "after_conv" else (256, 256)
    assert list(enc.output_shapes().values()) == [(256, 8, 8), (hr[0], 32, 32), (hr[1], 16, 16)]


def test_feature_sizes_follow_the_image_size():
    enc = S.build(tiny_cfg(image_size=256))
    out = enc.encode(enc.preprocess(frames(1)))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == enc.output_shapes()
    assert enc.output_shapes()["image_embed"] == (256, 16, 16)
    with pytest.raises(ValueError, match="multiple of 32"):
        S.model_config(tiny_cfg(image_size=200))


def test_tiny_is_deterministic(tiny):
    a, b = tiny, build_encoder("sam2", "tiny")
    assert a.weights_digest() == b.weights_digest()
    x = a.preprocess(frames(2))
    for k, v in a.encode(x).items():
        assert torch.equal(v, b.encode(x)[k]), k
    assert S.build(tiny_cfg(seed=1)).weights_digest() != a.weights_digest()


def test_after_conv_features_are_conv_s0_s1_of_before_conv_features(tiny, tiny_before):
    after, before = tiny, tiny_before
    assert after.weights_digest() == before.weights_digest()
    x = after.preprocess(frames(2))
    fa, fb = after.encode(x), before.encode(x)
    assert torch.equal(fa["image_embed"], fb["image_embed"])
    dec = before.sam.sam_mask_decoder
    with torch.no_grad():
        torch.testing.assert_close(
            dec.conv_s0(fb["high_res_0_pre_conv"]), fa["high_res_0"], rtol=0, atol=1e-6
        )
        torch.testing.assert_close(
            dec.conv_s1(fb["high_res_1_pre_conv"]), fa["high_res_1"], rtol=0, atol=1e-6
        )
        for got, want in zip(S.decoder_high_res(fb, dec), S.decoder_high_res(fa, dec), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_image_embed_is_the_fpn_level_plus_no_mem_embed(tiny):
    enc = tiny
    x = enc.preprocess(frames(1))
    with torch.no_grad():
        level = enc.sam.image_encoder(x)["vision_features"]
    want = level + enc.sam.no_mem_embed.view(1, -1, 1, 1)
    torch.testing.assert_close(enc.encode(x)["image_embed"], want, rtol=0, atol=1e-6)


def test_tiny_provenance_names_the_config(tiny):
    enc = tiny
    p = enc.provenance()
    assert p["encoder"] == "sam2" and p["config"]["image_size"] == 128
    assert p["config"]["image_encoder"]["trunk"]["embed_dim"] == 16
    assert p["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


# ---------------------------------------------------------------- preprocessing


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    ("hw", "size"), [((224, 224), 128), ((180, 320), 128), ((224, 224), 1024), ((128, 128), 128)]
)
def test_preprocessing_matches_sam2_transforms(hw, size):
    from sam2.utils.transforms import SAM2Transforms

    batch = frames(2, *hw, seed=size)
    want = SAM2Transforms(resolution=size, mask_threshold=0.0).forward_batch(list(batch))
    got = S.preprocess_frames(batch, size)
    assert got.shape == (2, 3, size, size) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_preprocessing_rejects_non_uint8_frames():
    with pytest.raises(ValueError, match="uint8"):
        S.preprocess_frames(frames(1).astype(np.float32), 128)


# ---------------------------------------------------------------- trunk activations (adapters from block k)


@pytest.mark.parametrize("block", [0, 1, 3, 5])
def test_trunk_block_outputs_add_to_the_usual_ones(tiny, block):
    enc = S.build(tiny_cfg(trunk_block=block))
    x = enc.preprocess(frames(2))
    out, plain = enc.encode(x), tiny.encode(x)
    for k, v in plain.items():  # the same features, computed in two halves
        assert torch.equal(out[k], v), k
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == enc.output_shapes()
    trunk = enc.sam.image_encoder.trunk
    n_early = sum(e < block for e in trunk.stage_ends)
    assert list(out)[len(plain) :] == ["trunk_in"] + [f"stage_out_{j}" for j in range(n_early)]
    with torch.no_grad():
        stages = trunk(x)
        if block == 0:  # the patch embedding plus the position embedding, channels first
            first = S.trunk_embed(trunk, x).permute(0, 3, 1, 2)
            torch.testing.assert_close(out["trunk_in"], first, rtol=0, atol=0)
        _, late = S.run_trunk_blocks(trunk, out["trunk_in"].permute(0, 2, 3, 1), block)
    for j in range(n_early):
        assert torch.equal(out[f"stage_out_{j}"], stages[j])
    for got, want in zip(late, stages[n_early:], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_trunk_block_config_and_range():
    assert "trunk_block" not in S.build(tiny_cfg()).config_dict()  # old stores keep their fingerprint
    enc = S.build(tiny_cfg(trunk_block=3))
    assert enc.config_dict()["trunk_block"] == 3 and "trunk_in" in enc.config_dict()["outputs"]
    with pytest.raises(ValueError, match="blocks 0..5"):
        S.build(tiny_cfg(trunk_block=6))
    with pytest.raises(ValueError):
        tiny_cfg(trunk_block=-1)


def test_paper_trunk_outputs_and_bytes_per_frame(paper_meta):
    first = S.Sam2ImageEncoder(paper_meta, paper_cfg(trunk_block=0)).output_shapes()
    late = S.Sam2ImageEncoder(paper_meta, paper_cfg(trunk_block=44)).output_shapes()
    assert first["trunk_in"] == (144, 256, 256) and not any(k.startswith("stage_out") for k in first)
    assert late["trunk_in"] == (576, 64, 64)
    assert [late[f"stage_out_{j}"] for j in range(3)] == [(144, 256, 256), (288, 128, 128), (576, 64, 64)]
    assert "stage_out_3" not in late
    extra = 2 * sum(int(np.prod(s)) for k, s in late.items() if k.startswith(("trunk", "stage")))
    assert (2 * int(np.prod(first["trunk_in"])), extra) == (18 * MIB, 36 * MIB)


def test_sam1_resize_is_av2t_data_loader_preprocessing():
    """resize="sam1" = SAM-1's ResizeLongestSide through torchvision on PIL + 0-255 mean/std (AV2T's loader)."""
    from torchvision.transforms.functional import resize, to_pil_image

    batch = frames(2, 224, 224, seed=3)
    ours = SC.preprocess_frames_sam1(batch, 1024)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    for i, frame in enumerate(batch):
        up = np.array(resize(to_pil_image(frame), [1024, 1024]))  # what ResizeLongestSide.apply_image returns
        ref = (torch.from_numpy(up).permute(2, 0, 1).float() - mean) / std
        assert torch.allclose(ours[i], ref, atol=1e-5, rtol=0)
    # differs from SAM2Transforms by the uint8 rounding of the resized image: about one grey level
    plain = S.preprocess_frames(batch, 1024)
    assert 0 < (ours - plain).abs().max() * 58 < 3
    # a non-square frame keeps its aspect (long side 1024) and is zero-padded at the bottom
    wide = SC.preprocess_frames_sam1(frames(1, 112, 224, seed=4), 1024)
    assert SC.longest_side_shape(112, 224, 1024) == (512, 1024)
    assert wide.shape == (1, 3, 1024, 1024) and wide[:, :, 512:].abs().max() == 0


def test_paper_official_preset_runs_the_reference_preprocessing():
    enc = S.Sam2ImageEncoder(S.build_sam(tiny_cfg(resize="sam1"), empty=False), tiny_cfg(resize="sam1"))
    x = frames(1, 224, 224)
    assert torch.equal(enc.preprocess(x), SC.preprocess_frames_sam1(x, enc.cfg.image_size))
    assert enc.preprocessing_dict()["resize"].startswith("SAM-1")
    assert paper_cfg().resize == "sam2"
    assert S.Config.model_validate(encoder_config("paper-official", "sam2")).resize == "sam1"
