"""CLIP image encoder: tiny preset, open_clip-equal preprocessing, strict loading of every CLIP file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import pipeline.encoders  # noqa: F401  (torchvision shim before open_clip)

import open_clip  # isort: skip
from open_clip.transform import PreprocessCfg, image_transform_v2  # isort: skip

from pipeline.checkpoints import CheckpointError, strip_prefix
from pipeline.encoders.clip_image import OPENAI_EXTRAS, Config, build, create_clip, preprocess_frames
from pipeline.encoders.registry import build_encoder
from pipeline.presets import encoder_config

LISTING = Path(__file__).parent / "reference" / "open_clip_ViT-B-32-quickgelu_openai.keys.tsv"
PAPER_PARAMS = 151_277_313


def preset(name: str, **update) -> Config:
    """A shipped clip.json, with fields replaced."""
    return Config.model_validate(encoder_config(name, "clip") | update)


def read_listing() -> dict[str, tuple[int, ...]]:
    """key -> shape of the official ViT-B/32 checkpoint."""
    out = {}
    for line in LISTING.read_text().splitlines():
        key, shape, _ = line.split("\t")
        out[key] = () if shape == "()" else tuple(int(s) for s in shape.split("x"))
    return out


def frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 frames: smooth colour waves, a hard-edged block, a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.float32)
    for i in range(n):
        for c in range(3):
            fy, fx = rng.uniform(3, 15, 2)
            out[i, ..., c] = 127.5 + 100 * np.sin(xx / fx + yy / fy + rng.uniform(0, 6))
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        out[i, top : top + h // 3, left : left + w // 3] = rng.integers(0, 256, 3)
        out[i] += rng.normal(0, 3, (h, w, 3))
    return out.clip(0, 255).round().astype(np.uint8)


def open_clip_reference(enc, batch: np.ndarray) -> torch.Tensor:
    """open_clip's own PIL eval transform for this model, frame by frame."""
    tf = image_transform_v2(PreprocessCfg(**enc.visual.preprocess_cfg), is_train=False)
    return torch.stack([tf(Image.fromarray(f)) for f in batch])


def assert_visual_equals(enc, sd: dict[str, torch.Tensor]) -> None:
    """The encoder's tower holds exactly the file's visual.* tensors (as float32)."""
    want = strip_prefix(sd, "visual.")
    got = enc.visual.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v.float()), k


@pytest.fixture(scope="module")
def tiny():
    return build_encoder("clip", "tiny")


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    """A whole tiny CLIP state dict (text tower included) that differs from the preset's seed."""
    return {k: v.clone() for k, v in create_clip(preset("tiny", seed=123)).state_dict().items()}


# ---------------------------------------------------------------- tiny preset


def test_tiny_outputs_shapes_finite(tiny):
    out = tiny.encode(tiny.preprocess(frames(8, 224, 224, seed=1)))
    assert set(out) == set(tiny.output_shapes()) == {"clip"}
    assert tiny.output_shapes()["clip"] == (64,)
    assert out["clip"].shape == (8, *tiny.output_shapes()["clip"])
    assert out["clip"].dtype == torch.float32 and torch.isfinite(out["clip"]).all()
    assert not torch.allclose(out["clip"].norm(dim=-1), torch.ones(8))  # not normalised
    assert tiny.name == "clip" and tiny.input == "frames"


def test_tiny_is_deterministic_and_seeded(tiny):
    again = build_encoder("clip", "tiny")
    assert again.weights_digest() == tiny.weights_digest()
    assert again.provenance() == tiny.provenance()
    x = tiny.preprocess(frames(2, 224, 224))
    assert torch.equal(again.encode(x)["clip"], tiny.encode(x)["clip"])
    assert build(preset("tiny", seed=1)).weights_digest() != tiny.weights_digest()


def test_config_and_preprocessing_dicts(tiny):
    cfg = tiny.config_dict()
    assert cfg["arch"]["quick_gelu"] is True and cfg["arch"]["vision_cfg"]["width"] == 128
    pp = tiny.preprocessing_dict()
    assert pp["size"] == [224, 224] and pp["interpolation"] == "bicubic" and pp["resize_mode"] == "shortest"
    assert pp["mean"] == list(open_clip.OPENAI_DATASET_MEAN) and pp["std"] == list(
        open_clip.OPENAI_DATASET_STD
    )


def test_config_rejects_unknown_fields():
    with pytest.raises(ValueError):
        Config.model_validate({"model": "ViT-B-32", "wieghts": "x"})


# ---------------------------------------------------------------- preprocessing


def test_preprocess_224_equals_open_clip(tiny):
    batch = np.concatenate([frames(3, 224, 224), np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3))])
    batch = batch.astype(np.uint8)
    ours = tiny.preprocess(batch)
    assert ours.shape == (5, 3, 224, 224) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, open_clip_reference(tiny, batch), atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw", [(180, 320), (320, 180), (500, 500), (225, 227), (100, 150), (224, 300)])
def test_preprocess_resize_matches_open_clip(tiny, hw):
    batch = frames(2, *hw, seed=hw[0])
    ours, ref = tiny.preprocess(batch), open_clip_reference(tiny, batch)
    assert ours.shape == ref.shape == (2, 3, 224, 224)
    diff = (ours - ref).abs()
    # torch's uint8 antialiased bicubic and PIL's differ only by rounding: at most 2 grey levels, rarely.
    level = 1 / 255 / min(open_clip.OPENAI_DATASET_STD)
    assert diff.max() <= 2.01 * level
    assert diff.mean() < 1e-3
    assert (diff > 0.5 * level).float().mean() < 0.02


def test_preprocess_rejects_wrong_input(tiny):
    with pytest.raises(ValueError, match="uint8"):
        tiny.preprocess(frames(1, 224, 224).astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        tiny.preprocess(frames(1, 224, 224)[..., :2])
    with pytest.raises(NotImplementedError):
        preprocess_frames(frames(1, 224, 224), {**tiny.preprocess_cfg, "resize_mode": "squash"})


# ---------------------------------------------------------------- file formats (tiny architecture)


def write_format(fmt: str, sd: dict[str, torch.Tensor], tmp_path: Path) -> Path:
    """Save sd as one of the CLIP files a user may hold."""
    if fmt == "hf_safetensors":
        path = tmp_path / "open_clip_model.safetensors"
        save_file(sd, str(path))
    elif fmt == "hf_bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(sd, path)
    elif fmt == "openai_state_dict":  # partly fp16, plus the three 0-dim hyper-parameters
        path = tmp_path / "ViT-B-32.pt"
        half = {k: v.half() if v.ndim >= 2 else v for k, v in sd.items()}
        torch.save(half | openai_extras(), path)
    elif fmt == "open_clip_training":
        path = tmp_path / "epoch_32.pt"
        torch.save(
            {"epoch": 32, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path
        )
    else:
        raise ValueError(fmt)
    return path


def openai_extras(resolution: int = 224) -> dict[str, torch.Tensor]:
    """OpenAI's 0-dim entries for the tiny architecture."""
    return {
        "input_resolution": torch.tensor(resolution),
        "context_length": torch.tensor(16),
        "vocab_size": torch.tensor(1000),
    }


@pytest.mark.parametrize("fmt", ["hf_safetensors", "hf_bin", "openai_state_dict", "open_clip_training"])
def test_tiny_loads_every_format(tiny_sd, tmp_path, fmt):
    path = write_format(fmt, tiny_sd, tmp_path)
    enc = build(preset("tiny", weights=path.name), weights_dir=tmp_path)
    ref = (
        {k: v.half() if v.ndim >= 2 else v for k, v in tiny_sd.items()}
        if fmt == "openai_state_dict"
        else tiny_sd
    )
    assert_visual_equals(enc, ref)


def test_encode_equals_open_clip_encode_image(tiny_sd, tmp_path):
    path = write_format("hf_safetensors", tiny_sd, tmp_path)
    enc = build(preset("tiny", weights=str(path)))  # absolute path: no weights folder needed
    cfg = preset("tiny")
    # open_clip's own loader (strict) reads the same file into its whole CLIP.
    ref = open_clip.create_model(cfg.model, pretrained=str(path), **cfg.model_cfg).eval()
    x = enc.preprocess(frames(3, 200, 260))
    with torch.no_grad():
        want = ref.encode_image(x)
    torch.testing.assert_close(enc.encode(x)["clip"], want, atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:'torch.load' received a zip file")
def test_torchscript_archive_loads(tiny_sd, tmp_path):
    """A TorchScript archive of a CLIP (like OpenAI's ViT-B-32.pt): torch.load refuses it, build reads it."""
    model = create_clip(preset("tiny", seed=123)).eval()
    # OpenAI's archive holds the hyper-parameters as 0-dim tensors and no attention-mask tensor.
    model.attn_mask = model._buffers.pop("attn_mask")
    for key, value in openai_extras().items():
        model.__dict__.pop(key, None)
        model.register_buffer(key, value)
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    with pytest.raises(RuntimeError, match="TorchScript"):
        torch.load(path, map_location="cpu", weights_only=True)
    enc = build(preset("tiny", weights=path.name), weights_dir=tmp_path)
    assert_visual_equals(enc, tiny_sd)


def test_strict_load_names_file_missing_and_unexpected_keys(tiny_sd, tmp_path):
    bad = {k: v for k, v in tiny_sd.items() if k != "visual.ln_post.bias"} | {
        "visual.extra.weight": torch.zeros(2)
    }
    path = write_format("hf_safetensors", bad, tmp_path)
    with pytest.raises(CheckpointError) as e:
        build(preset("tiny", weights=path.name), weights_dir=tmp_path)
    msg = str(e.value)
    assert str(path) in msg and "visual.ln_post.bias" in msg and "visual.extra.weight" in msg


def test_text_tower_keys_are_required(tiny_sd, tmp_path):
    vision_only = {k: v for k, v in tiny_sd.items() if k.startswith("visual.")}
    path = write_format("hf_safetensors", vision_only, tmp_path)
    with pytest.raises(CheckpointError, match="token_embedding.weight"):
        build(preset("tiny", weights=path.name), weights_dir=tmp_path)


def test_openai_extras_must_describe_the_model(tiny_sd, tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.save(tiny_sd | openai_extras(resolution=336), path)
    with pytest.raises(CheckpointError, match="input_resolution = 336"):
        build(preset("tiny", weights=path.name), weights_dir=tmp_path)
    assert set(OPENAI_EXTRAS) == set(openai_extras())


# ---------------------------------------------------------------- paper preset


def test_paper_missing_file_names_place_and_sources(tmp_path):
    with pytest.raises(CheckpointError) as e:
        build_encoder("clip", "paper", weights_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / preset("paper").weights) in msg
    assert "timm/vit_base_patch32_clip_224.openai" in msg and "ViT-B-32.pt" in msg


def test_paper_architecture_matches_listing():
    cfg = preset("paper")
    assert cfg.pretrained == "openai" and cfg.weights
    with torch.device("meta"):
        clip = open_clip.create_model(cfg.model, device="meta", force_quick_gelu=True, **cfg.model_cfg)
    got = {k: tuple(v.shape) for k, v in clip.state_dict().items()}
    assert got == read_listing()
    assert sum(v.numel() for v in clip.state_dict().values()) == PAPER_PARAMS
    act = clip.visual.transformer.resblocks[0].mlp.gelu
    assert type(act).__name__ == "QuickGELU"


def listing_state_dict() -> dict[str, torch.Tensor]:
    """Full-size random tensors with exactly the official names and shapes (values exact in fp16)."""
    g = torch.Generator().manual_seed(0)
    return {
        k: (torch.randn(s, generator=g, dtype=torch.float16) * 0.02).float()
        for k, s in read_listing().items()
    }


@pytest.mark.slow
def test_paper_loads_official_formats(tmp_path):
    sd = listing_state_dict()
    assert sum(v.numel() for v in sd.values()) == PAPER_PARAMS
    hf = tmp_path / "timm" / "open_clip_model.safetensors"
    hf.parent.mkdir()
    save_file(sd, str(hf))
    openai = tmp_path / "openai" / "ViT-B-32.pt"
    openai.parent.mkdir()
    extras = {
        "input_resolution": torch.tensor(224),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(49408),
    }
    torch.save({k: v.half() if v.ndim >= 2 else v for k, v in sd.items()} | extras, openai)
    for path in (hf, openai):
        enc = build(preset("paper", weights=str(path.relative_to(tmp_path))), weights_dir=tmp_path)
        assert_visual_equals(enc, sd)
        assert enc.output_shapes() == {"clip": (512,)}
        x = enc.encode(enc.preprocess(frames(2, 224, 224)))["clip"]
        assert x.shape == (2, 512) and torch.isfinite(x).all()
        del enc
