"""The public loader on both backbones: a reference-layout file loads through `load_av2t_sam` and predicts,
and no built model keeps a tensor on the meta device (a tensor without values).

Tiny presets, so it runs in seconds; the full-size forward parity lives in test_official*.py.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.checkpoints import meta_tensors, nonpersistent_buffers
from pipeline.encoders import sam1_image as S1
from pipeline.encoders.sam1_image import PIXEL_MEAN, PIXEL_STD
from pipeline.model.build import build_model
from pipeline.model.config import head_config
from pipeline.official import empty_model, from_reference_state, load_av2t_sam, to_reference
from pipeline.presets import encoder_config

D_CLIP, D_CLAP = 24, 40


def random_reference_state(preset: str, adapters: bool) -> dict[str, torch.Tensor]:
    """A reference-layout state of the preset's sizes with small random values (seeded)."""
    gen = torch.Generator().manual_seed(0)
    shapes = to_reference(empty_model(adapters, D_CLIP, D_CLAP, preset=preset), check=False)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in shapes.items()}


def inputs(model, b: int = 1, t: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    s, i = model.sam2.cfg.image_size, model.beit3.cfg.img_size
    return {
        "images_sam": torch.randn(b, t, 3, s, s, generator=gen),
        "images_beit": torch.randn(b, t, 3, i, i, generator=gen),
        "clip_embeddings": torch.randn(b, t, D_CLIP, generator=gen),
        "clap_embeddings": torch.randn(b, t, D_CLAP, generator=gen),
    }


@pytest.mark.parametrize("adapters", [False, True], ids=["plain", "adapters"])
@pytest.mark.parametrize("preset", ["tiny-sam1", "tiny"])
def test_load_av2t_sam_loads_a_reference_file_and_predicts(preset, adapters, tmp_path):
    sd = random_reference_state(preset, adapters)
    path = tmp_path / "avs_best.pth"
    torch.save(sd, path)
    model = load_av2t_sam(path, preset=preset)  # SAM 1 used to fail here: meta pixel_mean / pixel_std
    assert meta_tensors(model) == []
    assert model.cfg.adapters is adapters
    logits = model.predict(**inputs(model))
    assert logits.shape == (1, 2, 224, 224) and torch.isfinite(logits).all()
    # The same as the in-memory import, and the file's tensors are the model's.
    assert torch.equal(logits, from_reference_state(sd, "state", preset).predict(**inputs(model)))
    back = to_reference(model, check=False)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_sam1_pixel_statistics_keep_segment_anythings_values(tmp_path):
    sd = random_reference_state("tiny-sam1", False)
    torch.save(sd, tmp_path / "avs_best.pth")
    sam = load_av2t_sam(tmp_path / "avs_best.pth", preset="tiny-sam1").sam2.sam
    assert set(nonpersistent_buffers(sam)) == {"pixel_mean", "pixel_std"}
    assert torch.equal(sam.pixel_mean.flatten(), torch.tensor(PIXEL_MEAN))
    assert torch.equal(sam.pixel_std.flatten(), torch.tensor(PIXEL_STD))


@pytest.mark.parametrize("adapters", [False, True], ids=["plain", "adapters"])
@pytest.mark.parametrize("preset", ["tiny", "tiny-sam1"])
def test_no_built_model_keeps_a_meta_tensor(preset, adapters):
    model = build_model(head_config(preset, adapters=adapters), preset, D_CLIP, D_CLAP)
    assert meta_tensors(model) == []
    for name, buf in nonpersistent_buffers(model).items():
        assert torch.isfinite(buf.float()).all(), name


def test_a_strictly_loaded_sam1_file_keeps_its_pixel_statistics(tmp_path):
    raw = encoder_config("tiny-sam1", "sam2") | {"weights": None}
    cfg = S1.Config.model_validate({k: v for k, v in raw.items() if k != "impl"})
    torch.save(S1.build(cfg).sam.state_dict(), tmp_path / "sam_vit_tiny.pth")
    loaded = S1.build(
        cfg.model_copy(update={"weights": str(tmp_path / "sam_vit_tiny.pth"), "weights_format": "sam"})
    )
    assert meta_tensors(loaded) == []
    # to_empty left these two as uninitialised memory before: no checkpoint holds them.
    assert torch.equal(loaded.sam.pixel_mean.flatten(), torch.tensor(PIXEL_MEAN))
    assert torch.equal(loaded.sam.pixel_std.flatten(), torch.tensor(PIXEL_STD))
