"""Published AV2T-SAM weights on SAM 1 (`--evf_version evf_sam`) at full size: strict import and exact export of
both layouts, and forward parity with the reference code.

tests/reference/av2t_sam1_parity.npz holds the logits that bok-bok/AV2T-SAM's own SAM 1 forward (run outside
this repo, never copied; see tests/reference/README.md) computed for these weights and inputs. The forward
runs ViT-H at 1024 px on two frames (about two minutes on two CPU cores), so the suite checks the adapter
layout's forward (it runs every module the plain one does, and the adapters); `python bench/official_parity.py
--backbone sam1` checks both layouts and what each deliberate mistake does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from official_inputs import GOLDEN, B, T, nudge_mask_choice, parity_inputs

from pipeline.checkpoints import CheckpointError, read_key_listing
from pipeline.model.av2t_sam1 import AV2TSAM1
from pipeline.official import from_reference_state, to_reference
from pipeline.official.listing import listing_path, random_state

RTOL = 1e-4
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    """The adapter layout's full state (5.3 GB); the plain layout is the same minus the adapters."""
    return nudge_mask_choice(random_state(listing_path(True, "sam1")), "sam1")


def plain(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith("audio_prompt_generator.")}


@pytest.mark.parametrize("adapters", [True, False])
def test_strict_import_and_exact_export_of_both_layouts(state, adapters):
    sd = state if adapters else plain(state)
    rows = read_key_listing(listing_path(adapters, "sam1"))
    assert [k for k, _, _ in rows] == list(sd)
    model = from_reference_state(sd, "listing")  # the backbone and its preset come from the keys
    assert isinstance(model, AV2TSAM1) and model.cfg.adapters is adapters
    assert model.param_counts()["trainable"] == (17_058_276 if adapters else 7_996_644)
    back = to_reference(model)
    assert list(back) == list(sd)  # the reference's keys, in its module order
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert (
        model.sam_mask_decoder.iou_token.weight.data_ptr()
        != model.sam2.sam.mask_decoder.iou_token.weight.data_ptr()
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: sd.pop("audio_prompt_generator.shared_mlp.bias"), "1 missing key"),
        (
            lambda sd: sd.update({"audio_prompt_generator.lightweight_mlp_32.0.bias": torch.zeros(512)}),
            "unexpected",
        ),
        (
            lambda sd: sd.update({"model.visual_model.mask_decoder.iou_token.weight": torch.zeros(1, 255)}),
            "shape",
        ),
    ],
)
def test_import_refuses_a_state_that_does_not_match(state, change, message):
    sd = dict(state)
    change(sd)
    with pytest.raises(CheckpointError, match=f"my.pth: does not match.*{message}"):
        from_reference_state(sd, "my.pth")


def test_a_sam1_state_needs_a_sam1_preset(state):
    with pytest.raises(
        CheckpointError, match="on SAM1, but preset 'paper-official' builds SAM2.*paper-official-sam1"
    ):
        from_reference_state(plain(state), "my.pth", "paper-official")


def test_forward_parity_with_adapters(state):
    with np.load(GOLDEN["sam1"]) as z:
        golden = dict(z)
    model = from_reference_state(state, "listing")
    seen = []  # the IoU head's outputs: single-mask + 3 multimask per frame
    model.sam_mask_decoder.iou_prediction_head.register_forward_hook(lambda m, a, out: seen.append(out))
    logits = model.predict(**parity_inputs())
    ref = torch.from_numpy(golden["logits_adapter"])
    assert logits.shape == ref.shape == (B, T, 224, 224)
    err, bound = (logits - ref).abs().max().item(), RTOL * ref.abs().max().item()
    assert err <= bound, f"max |ours - reference| = {err:.3g} > {bound:.3g}"
    # The nudged IoU head makes the two frames pick different masks, and ours picks the same ones.
    iou = seen[0][:, 1:]
    assert torch.allclose(iou, torch.from_numpy(golden["iou_adapter"]), atol=1e-4)
    assert iou.argmax(1).tolist() == golden["choice_adapter"].tolist()
    assert len(set(golden["choice_adapter"].tolist())) == 2
