"""Our AV2T-SAM with the weights of a published reference checkpoint (bok-bok/AV2T-SAM, HF Kyungbok/AV2T-SAM)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from pipeline.checkpoints import CheckpointError, require_materialised, to_empty_keeping_buffers
from pipeline.encoders import beit3 as B
from pipeline.encoders.registry import IMPL_KEY, encoder_module
from pipeline.model.av2t_sam import AV2TSAM
from pipeline.model.build import head_class
from pipeline.model.config import head_config
from pipeline.official.checkpoint import backbone_of, has_adapters, load_reference_state, read_reference
from pipeline.presets import encoder_config

PRESET = "paper-official"
# The preset whose encoders a reference checkpoint was trained on, per backbone (--evf_version).
PRESETS = {"sam2": PRESET, "sam1": "paper-official-sam1"}
PROJECTIONS = {"d_clip": "projector.vision_proj.weight", "d_clap": "projector.audio_proj.weight"}


def embedding_widths(sd: Mapping[str, torch.Tensor], source: str | Path) -> dict[str, int]:
    """d_clip and d_clap: the input widths of the `mul` projector (its keys are the same in both layouts)."""
    missing = [k for k in PROJECTIONS.values() if k not in sd]
    if missing:
        raise CheckpointError(
            f"{source}: lacks {missing} (only the `mul` projector has the reference layout)"
        )
    return {name: int(sd[key].shape[1]) for name, key in PROJECTIONS.items()}


def empty_sam_encoder(preset: str | Path):
    """The preset's SAM-slot encoder (SAM 2 or SAM 1) with every tensor on meta, its weights file ignored."""
    raw = encoder_config(preset, "sam2") | {"weights": None}
    mod = encoder_module("sam2", raw.pop(IMPL_KEY, None))
    if mod.__name__.endswith("sam2_image"):
        raw["highres"] = "before_conv"  # the reference's conv_s0/conv_s1 train
    cfg = mod.Config.model_validate(raw)
    return mod.build_empty(cfg)


def empty_model(
    adapters: bool, d_clip: int = 512, d_clap: int = 1024, preset: str | Path = PRESET
) -> AV2TSAM:
    """The reference architecture (the preset's SAM and BEiT-3, its head) with every tensor on meta."""
    sam = empty_sam_encoder(preset)
    bcfg = B.Config.model_validate(encoder_config(preset, "beit3") | {"weights": None})
    beit3 = B.Beit3Encoder(bcfg, B.make_beit3(bcfg, "meta"))
    # The reference head whatever the preset's defaults: `mul`, no extra scale, adapters on every block.
    head = head_config(preset, fusion="mul", fused_scale=1.0, adapters=adapters, adapter_start_block=0)
    with torch.device("meta"):
        model = head_class(sam)(head, sam, beit3, d_clip, d_clap)
    # The SAM's few real buffers go to meta too, so that a strict assign replaces every tensor; those no
    # state dict holds (SAM 1's pixel_mean / pixel_std) keep their values, or nothing would ever fill them.
    return to_empty_keeping_buffers(model, "meta")


def from_reference_state(
    sd: dict[str, torch.Tensor], source: str | Path = "state", preset: str | Path | None = None
) -> AV2TSAM:
    """Our model holding a reference state's tensors (shared, not copied), in eval mode on the CPU.

    preset None: the official preset of the state's backbone (paper-official / paper-official-sam1).
    """
    backbone = backbone_of(sd)
    preset = PRESETS[backbone] if preset is None else preset
    model = empty_model(has_adapters(sd), preset=preset, **embedding_widths(sd, source))
    if model.backbone != backbone:
        raise CheckpointError(
            f"{source}: a reference checkpoint on {backbone.upper()}, but preset {str(preset)!r} builds "
            f"{model.backbone.upper()}; use --preset {PRESETS[backbone]}"
        )
    load_reference_state(model, sd, source)
    require_materialised(model, source)
    return model.eval()


def load_av2t_sam(
    path: str | Path, device: str | torch.device = "cpu", preset: str | Path | None = None
) -> AV2TSAM:
    """A published AV2T-SAM checkpoint (SAM 2 or SAM 1, with or without adapters) loaded strictly into our model.

    `model.predict(images_sam, images_beit, clip_embeddings, clap_embeddings)` then gives logits
    (B, T, 224, 224) for the reference data loader's inputs (see pipeline.official.preprocess).
    """
    return from_reference_state(read_reference(path), path, preset).to(device)
