"""The tiny SAM 1 preset through the stages: extract, train, evaluate cached and end to end (same masks), and
`official export / import` of a head on SAM 1 in the reference's SAM 1 layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_run import synthetic_store, train_head

from pipeline.checkpoints import CheckpointError
from pipeline.encoders.registry import build_encoder
from pipeline.model.av2t_sam1 import REFERENCE_PREFIXES_SAM1
from pipeline.model.config import head_config
from pipeline.model.head_checkpoint import read_head
from pipeline.official import read_reference
from pipeline.official.checkpoint import head_to_reference
from pipeline.presets import preset_dir
from stages.evaluate import EvalConfig, evaluate
from stages.official import export_reference, import_reference

PRESET = "tiny-sam1"
EVF1 = "evf-sam-multitask/model.safetensors"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[bool, dict]:
    """Per adapters (False / True): a synthetic MS3 store of the tiny SAM 1 preset and a head trained on it."""
    out = {}
    for adapters in (False, True):
        tmp = tmp_path_factory.mktemp(f"sam1-{'adapters' if adapters else 'plain'}")
        overrides = {"sam2": {"trunk_block": 0}} if adapters else {}
        run = synthetic_store(tmp, subset="ms3", videos=4, preset=PRESET, overrides=overrides)
        head = head_config(PRESET, adapters=adapters, fused_scale=1.0)
        out[adapters] = {**run, "checkpoint": train_head(run, tmp / "head", head=head, preset=PRESET)}
    return out


def _evaluate(run: dict, checkpoint: Path, out: Path, mode: str, weights_dir: Path | None = None) -> dict:
    cfg = EvalConfig(
        checkpoint=checkpoint,
        root=run["root"],
        subset="ms3",
        store=run["store"] if mode == "cached" else None,
        mode=mode,
        device="cpu",
        out=out,
        weights_dir=weights_dir,
        progress=False,
        save_masks=True,
    )
    return evaluate(cfg)


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {
        p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))
    }


def _same_masks(a: Path, b: Path, frames: int) -> None:
    ma, mb = _masks(a / "masks"), _masks(b / "masks")
    assert ma.keys() == mb.keys() and len(ma) == frames
    agree = [np.mean((ma[k] > 127) == (mb[k] > 127)) for k in ma]
    assert min(agree) >= 0.999, agree


@pytest.mark.parametrize("adapters", [False, True])
def test_tiny_sam1_cached_equals_end_to_end(runs, tmp_path, adapters):
    run = runs[adapters]
    cached = _evaluate(run, run["checkpoint"], tmp_path / "cached", "cached")
    e2e = _evaluate(run, run["checkpoint"], tmp_path / "e2e", "end-to-end")
    assert cached["frames"] == e2e["frames"] > 0
    assert cached["M_J"] == pytest.approx(e2e["M_J"], abs=1e-3)
    assert cached["M_F"] == pytest.approx(e2e["M_F"], abs=1e-3)
    assert cached["model"]["backbone"] == e2e["model"]["backbone"] == "sam1"
    assert cached["model"]["head"]["adapters"] is adapters
    _same_masks(tmp_path / "cached", tmp_path / "e2e", cached["frames"])


def test_official_export_then_import_of_a_sam1_head(runs, tmp_path):
    run = runs[True]
    ours = read_head(run["checkpoint"]).data
    path = export_reference(run["checkpoint"], tmp_path / "avs_best.pth", check=False)
    ref = read_reference(path)
    assert any(k.startswith("model.visual_model.image_encoder.blocks.") for k in ref)
    assert "audio_prompt_generator.shared_mlp.weight" in ref
    for k, v in ours["trainable"].items():  # the trained head under the reference's SAM 1 names
        assert torch.equal(ref[head_to_reference(k, REFERENCE_PREFIXES_SAM1)], v), k
    assert "model.visual_model.mask_decoder.iou_token.weight" in ref

    # The tiny SAM 1 architecture, SAM 1 / BEiT-3 read from an EVF-SAM1 file, as paper-official-sam1 does.
    preset = tmp_path / "tiny-sam1-from-evf"
    shutil.copytree(preset_dir(PRESET), preset)
    (preset / "preset.json").write_text(json.dumps({"extends": "tiny"}))
    for name, extra in (("sam2", {"weights_format": "evf-sam1"}), ("beit3", {"position_init_scale": 1.0})):
        src = preset_dir(PRESET if name == "sam2" else "tiny") / f"{name}.json"
        cfg = json.loads(src.read_text()) | {"weights": EVF1, **extra}
        (preset / f"{name}.json").write_text(json.dumps(cfg))

    with pytest.raises(CheckpointError, match="on SAM1, but preset 'tiny' builds SAM2; use --preset"):
        import_reference(path, tmp_path / "wrong", preset="tiny")
    written = import_reference(path, tmp_path / "imported", preset=str(preset))
    assert written["evf"] == tmp_path / "imported" / "weights" / EVF1
    back = read_head(written["head"]).data
    assert back["head"] == ours["head"] and back["backbone"] == "sam1"
    assert all(torch.equal(back["trainable"][k], v) for k, v in ours["trainable"].items())
    sam = build_encoder("sam2", preset, written["weights"], overrides={"trunk_block": 0})
    # The EVF-SAM1 file holds the frozen weights the imported head records (its SAM's decoder is the trained
    # one, as in the reference file; the head runs its own copy), the image encoder unchanged.
    assert back["frozen"]["sam2"] == sam.weights_digest()
    trained_on = build_encoder("sam2", PRESET, overrides={"trunk_block": 0})
    vit_a, vit_b = trained_on.sam.image_encoder.state_dict(), sam.sam.image_encoder.state_dict()
    assert all(torch.equal(vit_a[k], vit_b[k]) for k in vit_a)

    before = _evaluate(run, run["checkpoint"], tmp_path / "eval-ours", "end-to-end")
    after = _evaluate(run, written["head"], tmp_path / "eval-imported", "end-to-end", written["weights"])
    assert after["M_J"] == before["M_J"] and after["M_F"] == before["M_F"]
    _same_masks(tmp_path / "eval-ours", tmp_path / "eval-imported", before["frames"])
