"""The SAM 1 image encoder (EVF-SAM1's backbone): segment-anything's own classes, SAM 1's preprocessing,
strict loads of Meta's and EVF-SAM1's files, the full-size architecture against the shipped key listings.

`python tests/test_encoder_sam1.py` (re)writes the listings from the classes: Meta's sam_vit_h_4b8939.pth
is segment-anything's `Sam` (ViT-H) state dict; EVF-SAM1's model.safetensors is that under `visual_model.`
plus the same `mm_extractor.beit3.*` and `text_hidden_fcs.*` as EVF-SAM2's (EVF-SAM's model code builds
both the same way), taken from tests/reference/evf-sam2-multitask.keys.tsv.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

import pipeline.encoders  # noqa: E402, F401  (torchvision shim before segment_anything)
from pipeline.checkpoints import CheckpointError, read_key_listing  # noqa: E402
from pipeline.encoders import sam1_image as s1  # noqa: E402
from pipeline.encoders.registry import build_encoder  # noqa: E402

REF = HERE / "reference"
META_LISTING = REF / "sam_vit_h_4b8939.keys.tsv"
EVF1_LISTING = REF / "evf-sam-multitask.keys.tsv"
EVF2_LISTING = REF / "evf-sam2-multitask.keys.tsv"
TINY = {
    "impl": "sam1_image",
    "vit": {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "window_size": 4},
    "image_size": 128,
}


def listing_lines(sd: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """`key<TAB>shape<TAB>dtype` lines of a state dict."""
    return [
        f"{prefix}{k}\t{'x'.join(map(str, v.shape)) if v.dim() else '()'}\t{str(v.dtype).removeprefix('torch.')}"
        for k, v in sd.items()
    ]


def write_listings() -> None:
    """(Re)write the two listings from segment-anything's ViT-H `Sam` (on meta: no memory)."""
    sam = s1.build_sam(s1.Config(), empty=True)
    META_LISTING.write_text("\n".join(listing_lines(sam.state_dict())) + "\n")
    others = [line for line in EVF2_LISTING.read_text().splitlines() if not line.startswith("visual_model.")]
    EVF1_LISTING.write_text("\n".join(listing_lines(sam.state_dict(), "visual_model.") + others) + "\n")


def preset(tmp_path: Path, **sam: object) -> Path:
    """A tiny preset folder whose SAM slot is SAM 1."""
    folder = tmp_path / "tiny-sam1"
    folder.mkdir(exist_ok=True)
    (folder / "preset.json").write_text(json.dumps({"extends": "tiny"}))
    (folder / "sam2.json").write_text(json.dumps({**TINY, **sam}))
    return folder


def frames(n: int, h: int = 224, w: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> s1.Sam1ImageEncoder:
    return build_encoder("sam2", preset(tmp_path_factory.mktemp("p")), None, "cpu")


@pytest.mark.parametrize("shape", [(224, 224), (200, 260)])
def test_preprocessing_and_forward_are_segment_anythings(tiny, shape):
    """ResizeLongestSide (torchvision on a PIL image) + Sam.preprocess + image_encoder, from the package."""
    resize = importlib.import_module("segment_anything.utils.transforms").ResizeLongestSide(128)
    x = frames(2, *shape)
    theirs = torch.stack([torch.as_tensor(resize.apply_image(f)).permute(2, 0, 1) for f in x]).float()
    theirs = torch.stack([tiny.sam.preprocess(t) for t in theirs])  # normalise, pad bottom/right
    ours = tiny.preprocess(x)
    assert torch.equal(ours, theirs)
    with torch.inference_mode():
        assert torch.equal(tiny.encode(ours)["image_embed"], tiny.sam.image_encoder(theirs))


def test_outputs_provenance_and_trunk_block(tiny, tmp_path):
    x = tiny.preprocess(frames(3))
    y = tiny.encode(x)
    assert (
        {k: tuple(v.shape[1:]) for k, v in y.items()} == tiny.output_shapes() == {"image_embed": (256, 8, 8)}
    )
    assert torch.isfinite(y["image_embed"]).all()
    prov = tiny.provenance()
    assert prov["encoder"] == "sam2" and prov["config"]["implementation"] == s1.IMPLEMENTATION
    assert prov["preprocessing"]["resize"].startswith("SAM-1 ResizeLongestSide")
    sam2 = build_encoder("sam2", "tiny", None, "cpu")
    assert sam2.provenance()["config"] != prov["config"]  # SAM 1 features never pass for SAM 2 ones
    k = build_encoder("sam2", preset(tmp_path, trunk_block=1), None, "cpu")
    yk = k.encode(x)
    assert torch.equal(yk["image_embed"], y["image_embed"]) and tuple(yk["trunk_in"].shape) == (3, 32, 8, 8)
    with pytest.raises(ValueError, match="trunk_block 2"):
        build_encoder("sam2", preset(tmp_path, trunk_block=2), None, "cpu")


def test_meta_checkpoint_loads_strictly_and_refusals_name_keys(tiny, tmp_path):
    sd = tiny.sam.state_dict()
    torch.save(sd, tmp_path / "sam_tiny.pth")
    folder = preset(tmp_path, weights="sam_tiny.pth", weights_format="sam")
    loaded = build_encoder("sam2", folder, tmp_path, "cpu")
    assert loaded.weights_digest() == tiny.weights_digest()
    missing = dict(sd)
    missing.pop("mask_decoder.iou_token.weight")
    torch.save(missing, tmp_path / "sam_tiny.pth")
    with pytest.raises(CheckpointError, match="mask_decoder.iou_token.weight"):
        build_encoder("sam2", folder, tmp_path, "cpu", {"seed": 1})  # a new key: not the cached instance
    torch.save({"model": sd}, tmp_path / "sam_tiny.pth")
    with pytest.raises(CheckpointError, match="SAM 2 releases"):
        build_encoder("sam2", folder, tmp_path, "cpu", {"seed": 2})
    with pytest.raises(CheckpointError, match="sam_vit_h_4b8939.pth"):
        build_encoder("sam2", preset(tmp_path, weights="absent.pth", weights_format="sam"), tmp_path, "cpu")


def test_evf_sam1_checkpoint_loads_strictly(tiny, tmp_path):
    sd = {f"visual_model.{k}": v.clone() for k, v in tiny.sam.state_dict().items()}
    sd |= {"mm_extractor.beit3.x": torch.zeros(2), "text_hidden_fcs.0.0.weight": torch.zeros(2, 2)}
    save_file(sd, tmp_path / "model.safetensors")
    folder = preset(tmp_path, weights="model.safetensors", weights_format="evf-sam1")
    assert build_encoder("sam2", folder, tmp_path, "cpu").weights_digest() == tiny.weights_digest()
    save_file({**sd, "lm_head.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        build_encoder("sam2", folder, tmp_path, "cpu", {"seed": 3})


def test_full_size_vit_h_matches_the_listings():
    """segment-anything's ViT-H `Sam` (on meta) is exactly what Meta's and EVF-SAM1's files hold."""
    sam = s1.build_sam(s1.Config(), empty=True)
    own = {k: tuple(v.shape) for k, v in sam.state_dict().items()}
    meta = {k: s for k, s, _ in read_key_listing(META_LISTING)}
    assert own == meta and len(own) > 400
    evf = {k: s for k, s, _ in read_key_listing(EVF1_LISTING)}
    assert {
        k.removeprefix("visual_model."): s for k, s in evf.items() if k.startswith("visual_model.")
    } == own
    evf2 = {k: s for k, s, _ in read_key_listing(EVF2_LISTING)}
    for part in ("mm_extractor.beit3.", "text_hidden_fcs."):
        assert {k: s for k, s in evf.items() if k.startswith(part)} == {
            k: s for k, s in evf2.items() if k.startswith(part)
        }
    assert (
        own["image_encoder.pos_embed"] == (1, 64, 64, 1280) and own["image_encoder.neck.0.weight"][0] == 256
    )


def test_extracted_into_the_sam_slot_under_its_own_fingerprint(tmp_path):
    from cache import FeatureStore
    from pipeline.data.synth import write_synthetic
    from stages.extract import ExtractConfig, extract

    write_synthetic(tmp_path / "data", "ms3", videos=3, seed=0)
    store = tmp_path / "s.zarr"
    cfg = ExtractConfig(
        root=tmp_path / "data",
        subset="ms3",
        splits=["val"],
        encoders=["sam2"],
        store=str(store),
        device="cpu",
    )
    extract(cfg.model_copy(update={"preset": str(preset(tmp_path))}), progress=False)
    g = FeatureStore(str(store), mode="r").split("ms3", "val")
    (e,) = g.encoders()
    assert e.rows_done() == g.n_rows and set(e.specs) == {"image_embed"}
    assert e.provenance["config"]["implementation"] == s1.IMPLEMENTATION


if __name__ == "__main__":
    write_listings()
