"""BEiT-3 encoder: torchscale parity of the cached-patch path, preprocessing, presets, strict EVF loading."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.checkpoints import CheckpointError
from pipeline.encoders.beit3 import OUTPUT, PREFIX, Config, build, make_beit3, preprocess_frames
from pipeline.encoders.registry import build_encoder
from pipeline.presets import encoder_config

LISTING = Path(__file__).parent / "reference" / "evf-sam2-multitask.keys.tsv"
HF_REPO = "YxZhang/evf-sam2-multitask"


def listing() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every entry of the EVF-SAM2 checkpoint, in state_dict order."""
    rows = []
    for line in LISTING.read_text().splitlines():
        key, shape, _ = line.split("\t")
        rows.append((key, () if shape == "()" else tuple(int(s) for s in shape.split("x"))))
    return rows


def tiny_cfg(**kw) -> Config:
    """The tiny preset's config, with overrides."""
    return Config.model_validate({**encoder_config("tiny", "beit3"), **kw})


def frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB frames (n, h, w, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny():
    """The tiny-preset encoder, built once."""
    return build_encoder("beit3", "tiny")


# --- architecture -----------------------------------------------------------------------------


def test_paper_architecture_matches_evf_listing():
    """torchscale's BEiT3 at the paper config has exactly EVF's mm_extractor.beit3.* keys and shapes, in order."""
    cfg = Config.model_validate(encoder_config("paper", "beit3"))
    own = [(k, tuple(v.shape)) for k, v in make_beit3(cfg, device="meta").state_dict().items()]
    ref = [(k[len(PREFIX) :], s) for k, s in listing() if k.startswith(PREFIX)]
    assert len(ref) == 971
    assert own == ref
    assert dict(own)["encoder.embed_positions.A.weight"] == (199, 1024)
    assert dict(own)["encoder.embed_positions.B.weight"] == (1024, 1024)


# --- tiny preset --------------------------------------------------------------------------------


def test_tiny_shapes_finite_deterministic(tiny):
    """Same config, same weights, same features; shapes follow output_shapes()."""
    other = build_encoder("beit3", "tiny")
    assert tiny.weights_digest() == other.weights_digest()
    x = tiny.preprocess(frames(8, 64, 64))
    out, again = tiny.encode(x), other.encode(x)
    assert set(out) == set(tiny.output_shapes()) == {OUTPUT}
    assert tuple(out[OUTPUT].shape[1:]) == tiny.output_shapes()[OUTPUT] == (17, 192)
    assert torch.isfinite(out[OUTPUT]).all()
    assert torch.equal(out[OUTPUT], again[OUTPUT])
    assert all(not p.requires_grad for p in tiny.parameters())
    prov = json.loads(json.dumps(tiny.provenance()))
    assert prov["encoder"] == "beit3" and prov["config"]["position_init_scale"] == 0.02
    assert prov["preprocessing"]["resize"] == [64, 64] and prov["preprocessing"]["interpolation"] == "bicubic"


def test_tiny_position_init_scale():
    """position_init_scale shrinks torchscale's N(0, 1) position tables and nothing else."""
    base, scaled = build(tiny_cfg(position_init_scale=1.0)), build(tiny_cfg())
    for name in ("A", "B"):
        ref = getattr(base.beit3.encoder.embed_positions, name).weight
        assert 0.8 < ref.std() < 1.2  # torchscale's default init
        assert torch.allclose(getattr(scaled.beit3.encoder.embed_positions, name).weight, ref * 0.02)
    assert torch.equal(base.beit3.text_embed.weight, scaled.beit3.text_embed.weight)
    with pytest.raises(ValueError, match="position_init_scale"):
        tiny_cfg(weights="x.safetensors")


def test_forward_tokens_matches_torchscale(tiny):
    """Cached patches + text embeddings through forward_tokens == torchscale's own BEiT3 forward."""
    x = tiny.preprocess(frames(4, 64, 64, seed=1))
    ids = torch.randint(0, tiny.cfg.vocab_size, (4, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny.beit3(visual_tokens=x, textual_tokens=ids, text_padding_position=torch.zeros_like(ids))
        ours = tiny.forward_tokens(tiny.encode(x)[OUTPUT], tiny.beit3.text_embed(ids))
    assert ours.shape == (4, 192)
    torch.testing.assert_close(ours, ref["encoder_out"][:, 0], atol=1e-5, rtol=0)


def test_forward_tokens_uses_text_positions_2_to_t_plus_1():
    """Text tokens read rows 2..T+1 of embed_positions.B (fairseq offset); other rows do not matter."""
    enc = build(tiny_cfg())
    patches = enc.encode(enc.preprocess(frames(2, 64, 64)))[OUTPUT]
    tokens = torch.randn(2, 3, 192, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = enc.forward_tokens(patches, tokens)
        table = enc.beit3.encoder.embed_positions.B.weight
        table[:2] += 5.0
        table[5:] += 5.0
        assert torch.equal(enc.forward_tokens(patches, tokens), ref)
        table[3] += 5.0
        assert not torch.allclose(enc.forward_tokens(patches, tokens), ref)


def test_forward_tokens_gradients_reach_tokens_only(tiny):
    """Gradients flow from the output into the pseudo-tokens; the frozen BEiT-3 gets none."""
    patches = tiny.encode(tiny.preprocess(frames(2, 64, 64)))[OUTPUT].half()  # as cached
    tokens = torch.randn(2, 3, 192, requires_grad=True)
    tiny.forward_tokens(patches, tokens).pow(2).sum().backward()
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all()
    assert tokens.grad.abs().sum(-1).gt(0).all()  # every token of every row matters
    assert all(p.grad is None for p in tiny.parameters())


def test_forward_tokens_rejects_bad_shapes(tiny):
    """Wrong vision length or too many text tokens fail with a clear message."""
    with pytest.raises(ValueError, match="vision_patches"):
        tiny.forward_tokens(torch.zeros(1, 16, 192), torch.zeros(1, 3, 192))
    with pytest.raises(ValueError, match="T=31"):
        tiny.forward_tokens(torch.zeros(1, 17, 192), torch.zeros(1, 31, 192))


# --- preprocessing ------------------------------------------------------------------------------


def reference_transform(antialias):
    """AV2T-SAM's `image_preprocessor` (EVF-SAM's, with its explicit antialias)."""
    # torchvision imports after pipeline.encoders (above) has run pipeline.compat's CPU fix
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Resize((224, 224), interpolation=3, antialias=antialias),
            transforms.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        ]
    )


@pytest.mark.parametrize("antialias", [False, True])
def test_preprocess_matches_torchvision(antialias):
    """Batched preprocessing equals the reference transform frame by frame, resized or not."""
    ref = reference_transform(None if not antialias else True)
    for h, w in [(224, 224), (180, 320)]:
        batch = frames(2, h, w, seed=h)
        ours = preprocess_frames(batch, 224, antialias)
        assert ours.shape == (2, 3, 224, 224)
        for i in range(2):
            torch.testing.assert_close(ours[i], ref(batch[i]), atol=1e-6, rtol=0)


def test_preprocess_224_frame_matches_pil_path():
    """For AVSBench's 224 frames every variant (PIL bicubic included) is just (x/255 - .5)/.5."""
    from PIL import Image
    from torchvision import transforms

    frame = frames(1, 224, 224, seed=3)
    pil = transforms.Compose(
        [
            transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize((0.5,) * 3, (0.5,) * 3),
        ]
    )(Image.fromarray(frame[0]))
    ours = preprocess_frames(frame, 224)[0]
    torch.testing.assert_close(ours, pil, atol=1e-6, rtol=0)
    assert ours.min() >= -1 and ours.max() <= 1


def test_preprocess_rejects_non_uint8():
    """Float or channel-first input is refused, not silently rescaled."""
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(np.zeros((1, 224, 224, 3), np.float32), 224)


# --- checkpoints --------------------------------------------------------------------------------


def save_evf_like(path: Path, beit3_sd: dict[str, torch.Tensor]) -> None:
    """An EVF-SAM2-style safetensors: the BEiT-3 entries under their prefix plus the other components."""
    from safetensors.torch import save_file

    sd = {PREFIX + k: v.half().contiguous() for k, v in beit3_sd.items()}
    sd["visual_model.no_mem_embed"] = torch.zeros(1, 1, 256, dtype=torch.float16)
    sd["text_hidden_fcs.0.0.bias"] = torch.zeros(1024, dtype=torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt"})


def random_state(cfg: Config) -> dict[str, torch.Tensor]:
    """A tiny BEiT3 state with random values (distinct from any seeded init)."""
    g = torch.Generator().manual_seed(123)
    return {
        k: torch.randn(v.shape, generator=g) for k, v in make_beit3(cfg, device="meta").state_dict().items()
    }


def test_strict_load_from_evf_format(tmp_path):
    """A tiny EVF-format file loads strictly through build(); every parameter equals the file's tensor."""
    cfg = tiny_cfg(weights="evf/model.safetensors", position_init_scale=1.0)
    sd = random_state(cfg)
    save_evf_like(tmp_path / "evf" / "model.safetensors", sd)
    enc = build(cfg, weights_dir=tmp_path)
    got = enc.beit3.state_dict()
    assert list(got) == list(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v.half().float()), k
    assert all(not p.requires_grad for p in enc.parameters())


def test_strict_load_names_missing_and_unexpected_keys(tmp_path):
    """One key removed and one added: CheckpointError naming the file and both keys."""
    cfg = tiny_cfg(weights="evf/model.safetensors", position_init_scale=1.0)
    sd = random_state(cfg)
    del sd["encoder.layers.1.ffn.B.fc2.weight"]
    sd["encoder.layers.1.ffn.B.extra"] = torch.zeros(3)
    path = tmp_path / "evf" / "model.safetensors"
    save_evf_like(path, sd)
    with pytest.raises(CheckpointError) as e:
        build(cfg, weights_dir=tmp_path)
    msg = str(e.value)
    assert (
        str(path) in msg
        and "encoder.layers.1.ffn.B.fc2.weight" in msg
        and "encoder.layers.1.ffn.B.extra" in msg
    )


def test_missing_weights_file_message(tmp_path):
    """The paper preset without its file says where to put it and where it comes from."""
    with pytest.raises(CheckpointError) as e:
        build_encoder("beit3", "paper", weights_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "evf-sam2-multitask" / "model.safetensors") in msg and HF_REPO in msg


def fill(index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Cheap deterministic float16 content, different for every entry index."""
    period = 4099  # prime, so tensors of different sizes do not line up
    pattern = ((torch.arange(period, dtype=torch.int32) * 37 + index * 101) % period).half() / period - 0.5
    n = int(np.prod(shape, dtype=np.int64))
    return pattern.repeat(n // period + 1)[:n].view(shape)


def write_listing_safetensors(path: Path, rows: list[tuple[str, tuple[int, ...]]]) -> None:
    """Stream a float16 safetensors file entry by entry (never the whole model in memory)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape in rows:
        size = 2 * int(np.prod(shape, dtype=np.int64))
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for i, (_, shape) in enumerate(rows):
            f.write(fill(i, shape).view(torch.uint8).numpy().data)


@pytest.mark.slow
def test_paper_strict_load_full_size(tmp_path):
    """A full-size EVF-SAM2 file (all 1875 entries, float16) loads strictly into the paper BEiT-3-L."""
    rows = listing()
    path = tmp_path / "evf-sam2-multitask" / "model.safetensors"
    path.parent.mkdir()
    write_listing_safetensors(path, rows)
    try:
        enc = build_encoder("beit3", "paper", weights_dir=tmp_path)
    finally:
        path.unlink()  # 1.8 GB: do not leave it in pytest's kept tmp folders
    got = enc.beit3.state_dict()
    beit3_rows = [(i, k[len(PREFIX) :], s) for i, (k, s) in enumerate(rows) if k.startswith(PREFIX)]
    assert len(got) == len(beit3_rows) == 971
    for i, key, shape in beit3_rows:
        assert torch.equal(got[key], fill(i, shape).float()), key
    assert enc.output_shapes() == {OUTPUT: (197, 1024)}
    assert sum(p.numel() for p in enc.parameters()) == 672_702_464
