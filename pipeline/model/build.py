"""The one builder of AV2T-SAM: a head on the preset's frozen SAM (2 or 1) and BEiT-3 (or on encoders given)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from pipeline.checkpoints import EVF_PREFIXES, CheckpointError, read_evf_sam2, require_file
from pipeline.encoders.base import Encoder
from pipeline.encoders.registry import get_encoder
from pipeline.model.av2t_sam import AV2TSAM, FCS_PREFIX, TEXT_FCS_SOURCE
from pipeline.model.config import HeadConfig
from pipeline.presets import resolve_weights

# The frozen encoders a head runs in every step (CLIP / CLAP run only at extraction or end to end).
FROZEN = ("sam2", "beit3")
# The head class per implementation of the SAM slot (the encoder's module), as module:class.
HEADS = {
    "sam2_image": "pipeline.model.av2t_sam:AV2TSAM",
    "sam1_image": "pipeline.model.av2t_sam1:AV2TSAM1",
}


def head_class(sam: Encoder) -> type[AV2TSAM]:
    """AV2TSAM on a SAM 2 encoder, AV2TSAM1 on a SAM 1 encoder."""
    impl = type(sam).__module__.rsplit(".", 1)[-1]
    if impl not in HEADS:
        raise ValueError(f"no AV2T-SAM head for SAM implementation {impl!r}; known: {sorted(HEADS)}")
    module, name = HEADS[impl].split(":")
    return getattr(importlib.import_module(module), name)


def sam2_overrides(head: HeadConfig) -> dict[str, Any] | None:
    """SAM 2 must also cache the trunk activation where the adapters start."""
    return {"trunk_block": head.adapter_start_block} if head.adapters else None


def frozen_encoders(
    head: HeadConfig,
    preset: str | Path,
    weights_dir: str | Path | None = None,
    device: str | torch.device = "auto",
) -> dict[str, Encoder]:
    """The SAM encoder (configured for the head's adapters) and BEiT-3, built as extraction built them."""
    return {
        "sam2": get_encoder("sam2", preset, weights_dir, device, sam2_overrides(head)),
        "beit3": get_encoder("beit3", preset, weights_dir, device),
    }


def encoder_widths(encoders: dict[str, Encoder]) -> dict[str, int]:
    """d_clip / d_clap from built CLIP and CLAP encoders (end to end has no store to read them from)."""
    return {f"d_{n}": int(encoders[n].output_shapes()[n][0]) for n in ("clip", "clap")}


def build_model(
    head: HeadConfig,
    preset: str | Path,
    d_clip: int,
    d_clap: int,
    weights_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    encoders: dict[str, Encoder] | None = None,
) -> AV2TSAM:
    """AV2T-SAM on the preset's SAM and BEiT-3; text_hidden_fcs from its EVF-SAM file when it has one.

    The SAM slot's implementation picks the head class (SAM 2: AV2TSAM, SAM 1: AV2TSAM1). d_clip / d_clap
    are the embeddings' widths (the store's, the encoders' or a checkpoint's). `encoders` gives built SAM /
    BEiT-3 to use instead (they must match the head: see `frozen_encoders`).
    """
    enc = encoders or frozen_encoders(head, preset, weights_dir, device)
    beit3 = enc["beit3"]
    fcs, source = None, "text_hidden_fcs"
    if beit3.cfg.weights is not None:  # the same EVF-SAM file holds BEiT-3 and the fcs
        source = resolve_weights(beit3.cfg.weights, weights_dir)
        fcs = read_text_hidden_fcs(source)
    return head_class(enc["sam2"])(head, enc["sam2"], beit3, d_clip, d_clap, fcs, source).to(device)


def read_text_hidden_fcs(path: str | Path) -> dict[str, torch.Tensor]:
    """EVF's `text_hidden_fcs.*` from an EVF-SAM2 checkpoint, keys relative to the ModuleList.

    A .safetensors file is read selectively (the fcs are 5 MB of a 3 GB file); other formats in full.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    path = require_file(path, "EVF-SAM2 text_hidden_fcs", TEXT_FCS_SOURCE)
    safetensors = path.suffix == ".safetensors"
    sd = _read_prefix(path, FCS_PREFIX) if safetensors else read_evf_sam2(path)[FCS_PREFIX]
    if not sd:
        raise CheckpointError(f"{path}: EVF-SAM2 checkpoint holds no text_hidden_fcs.* keys")
    return sd


def _read_prefix(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under prefix (prefix removed) of an EVF-SAM2 safetensors file, reading only those."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            stray = [k for k in keys if not k.startswith(EVF_PREFIXES)]
            if stray:
                raise CheckpointError(
                    f"{path}: not an EVF-SAM2 checkpoint: keys outside {EVF_PREFIXES}: {stray[:5]}"
                )
            return {k[len(prefix) :]: f.get_tensor(k) for k in keys if k.startswith(prefix)}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read checkpoint: {e}") from e
