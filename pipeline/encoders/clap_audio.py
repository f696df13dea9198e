"""CLAP audio encoder (laion-clap 1.1.7): the audio half of `CLAP_Module.get_audio_embedding_from_data`.

Per one-second 48 kHz segment, exactly as laion-clap does for `enable_fusion=False`: int16 round trip,
repeat-pad to `clip_samples` (10 s), HTSAT audio branch (its own STFT + log-mel front end), `audio_projection`,
L2 normalisation. Only the audio side of `CLAP` is built; the RoBERTa text tower (a hub download) never is.
The `paper` preset is laion-clap's HTSAT-tiny with `630k-audioset-best.pt`; the `tiny` preset is the same
`HTSAT_Swin_Transformer` class at small sizes with seeded random weights and the same mel front end.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from pipeline.checkpoints import CheckpointError, load_strict, require_file
from pipeline.data.audio import Stereo
from pipeline.encoders.base import check_audio, seeded
from pipeline.encoders.clap_common import (
    ClapEncoder,
    HtsatSizes,
    built_sizes,
    import_from,
    package_dir,
    read_training_checkpoint,
    tensors_only,
)
from pipeline.presets import resolve_weights

OUTPUT = "clap"
SAMPLE_RATE = 48_000
SOURCE = (
    "the LAION CLAP release, HF lukewys/laion_clap (630k-audioset-best.pt; "
    "music_audioset_epoch_15_esc_90.14.pt for HTSAT-base)"
)
# Keys of the full CLAP checkpoint that belong to the text tower: the only ones left unused.
TEXT_PREFIXES = ("text_branch.", "text_projection.", "text_transform.")
TEXT_KEYS = frozenset({"logit_scale_t"})
# Keys only a feature-fusion checkpoint (enable_fusion=True) has: named in the error for a clear hint.
FUSION_MARKERS = ("fusion_model.", "mel_conv2d.", "mel_conv1d.")


def laion_clap_dir() -> Path:
    """The installed laion_clap package folder (found without importing it)."""
    return package_dir("laion_clap", "laion-clap==1.1.7")


def clap_module(sub: str) -> ModuleType:
    """laion-clap's `clap_module.<sub>`, the same module objects `CLAP_Module` itself uses.

    `import laion_clap` appends its folder to sys.path and imports the top-level `clap_module`, which is
    a different module object from `laion_clap.clap_module`. Importing laion_clap would also import its
    training code (needs `wget`, and loads three hub tokenizers at import time), so we add the folder
    the same way and import the top-level `clap_module` only.
    """
    folder = laion_clap_dir()
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    return import_from(f"clap_module.{sub}", folder)


class AudioCfg(BaseModel):
    """laion-clap's `audio_cfg` (its `CLAPAudioCfp`) for an HTSAT model; defaults = HTSAT-tiny.json."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: Literal[48000] = 48000
    audio_length: int = 1024  # kept for CLAPAudioCfp; HTSAT does not read it
    clip_samples: int = Field(480_000, gt=0)  # segments are repeat-padded to this length (10 s)
    mel_bins: int = Field(64, gt=0)
    window_size: int = Field(1024, gt=0)
    hop_size: int = Field(480, gt=0)
    fmin: int = Field(50, ge=0)
    fmax: int = Field(14_000, gt=0)
    class_num: int = Field(527, gt=0)  # sizes tscam_conv/head, which the embedding does not use


class Config(BaseModel):
    """CLAP audio architecture (a laion-clap `amodel`, or custom HTSAT sizes), weights and seed."""

    model_config = ConfigDict(extra="forbid")

    # laion-clap's named model: its model_configs/<amodel>.json and `create_htsat_model` decide everything.
    amodel: Literal["HTSAT-tiny", "HTSAT-base", "HTSAT-large"] | None = None
    # Or custom sizes of the same class (then audio_cfg applies; with amodel it must stay unset).
    htsat: HtsatSizes | None = None
    audio_cfg: AudioCfg | None = None
    joint_embed_shape: int = Field(512, gt=0)  # CLAP's joint space: the output width
    weights: str | None = None  # relative to the weights folder; None = seeded random init
    seed: int = 0  # random init only
    # How the extract stage mixes a stereo WAV for this encoder (pipeline.data.audio.load_segments).
    stereo: Stereo = "mean"

    @model_validator(mode="after")
    def _check(self) -> Config:
        """Exactly one way to size the model; laion's named models bring their own audio_cfg."""
        if (self.amodel is None) == (self.htsat is None):
            raise ValueError(
                "set exactly one of `amodel` (a laion-clap HTSAT model) or `htsat` (custom sizes)"
            )
        if self.amodel is not None and self.audio_cfg is not None:
            raise ValueError(
                f"audio_cfg comes from laion-clap's {self.amodel}.json; do not set it with amodel"
            )
        return self


def laion_model_config(amodel: str) -> dict[str, Any]:
    """laion-clap's model_configs/<amodel>.json (embed_dim, audio_cfg, text_cfg)."""
    return json.loads((laion_clap_dir() / "clap_module" / "model_configs" / f"{amodel}.json").read_text())


def resolved_audio_cfg(cfg: Config) -> AudioCfg:
    """The audio_cfg the model is built with."""
    if cfg.amodel is not None:
        raw = {
            k: v for k, v in laion_model_config(cfg.amodel)["audio_cfg"].items() if k in AudioCfg.model_fields
        }
        return AudioCfg.model_validate(raw)
    return cfg.audio_cfg or AudioCfg()


def make_audio_branch(cfg: Config) -> nn.Module:
    """laion-clap's HTSAT_Swin_Transformer (enable_fusion=False), default-initialised."""
    htsat = clap_module("htsat")
    audio = resolved_audio_cfg(cfg)
    if cfg.amodel is not None:
        name = cfg.amodel.removeprefix("HTSAT-")
        a = clap_module("model").CLAPAudioCfp(model_type="HTSAT", model_name=name, **audio.model_dump())
        branch = htsat.create_htsat_model(a, enable_fusion=False, fusion_type="None")
        width = laion_model_config(cfg.amodel)["embed_dim"]
        if branch.num_features != width:
            raise RuntimeError(f"{cfg.amodel}: HTSAT width {branch.num_features} != config embed_dim {width}")
        return branch
    a = clap_module("model").CLAPAudioCfp(model_type="HTSAT", model_name="custom", **audio.model_dump())
    return htsat.HTSAT_Swin_Transformer(
        **cfg.htsat.htsat_kwargs(),
        num_classes=audio.class_num,
        config=a,
        enable_fusion=False,
        fusion_type="None",
    )


def quantize_int16(batch: np.ndarray) -> np.ndarray:
    """laion-clap's `int16_to_float32(float32_to_int16(x))`: clip to [-1, 1], truncate to int16, rescale."""
    q = (np.clip(batch, -1.0, 1.0) * 32767.0).astype(np.int16)
    return (q / 32767.0).astype(np.float32)


def repeat_pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """laion-clap's 'repeatpad' filling of (B, T) rows: whole repeats, then zeros up to length."""
    t = x.shape[-1]
    if not 0 < t <= length:
        # Longer input would be randomly cropped by laion-clap ('rand_trunc'): not deterministic.
        raise ValueError(f"segments of {t} samples: expected 1..{length}")
    x = x.repeat(1, length // t)
    return F.pad(x, (0, length - x.shape[-1]), mode="constant", value=0.0)


class ClapAudioEncoder(ClapEncoder):
    """Frozen CLAP audio tower: HTSAT audio branch + audio projection, L2-normalised embedding."""

    sample_rate = SAMPLE_RATE

    def __init__(self, cfg: Config, audio_branch: nn.Module):
        super().__init__(cfg)
        self.audio_cfg = resolved_audio_cfg(cfg)
        joint = cfg.joint_embed_shape
        # Same modules and key names as laion-clap's CLAP (audio half, mlp_act="relu" as released).
        self.audio_branch = audio_branch
        self.audio_projection = nn.Sequential(
            nn.Linear(audio_branch.num_features, joint), nn.ReLU(), nn.Linear(joint, joint)
        )
        # Not on the embedding path (CLAP.get_audio_embedding skips it), but part of the audio side of
        # every checkpoint: kept so the strict load checks and uses those keys too.
        self.audio_transform = clap_module("model").MLPLayers(units=[joint, joint, joint], dropout=0.1)
        self.logit_scale_a = nn.Parameter(torch.full((), math.log(1 / 0.07)))

    def host_input(self, batch: np.ndarray) -> torch.Tensor:
        """(B, 48000) float32 mono segments to (B, clip_samples): int16 round trip, then repeat-pad."""
        a = check_audio(batch)
        q = quantize_int16(a.astype(np.float32, copy=False))
        return repeat_pad(torch.from_numpy(q), self.audio_cfg.clip_samples)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What CLAP.get_audio_embedding returns: normalize(audio_projection(HTSAT embedding))."""
        x = x.to(self.device, torch.float32)
        emb = self.audio_branch({"waveform": x}, mixup_lambda=None, device=x.device)["embedding"]
        return {OUTPUT: F.normalize(self.audio_projection(emb), dim=-1)}

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """One joint-space vector per segment (512 for the laion-clap models)."""
        return {OUTPUT: (self.cfg.joint_embed_shape,)}

    def config_dict(self) -> dict[str, Any]:
        """The resolved architecture (laion's hard-coded sizes for a named amodel included)."""
        return {
            "amodel": self.cfg.amodel,
            "enable_fusion": False,
            "htsat": built_sizes(self.audio_branch),
            "audio_cfg": self.audio_cfg.model_dump(),
            "joint_embed_shape": self.cfg.joint_embed_shape,
            "normalized": True,
        }

    def preprocessing_dict(self) -> dict[str, Any]:
        """Sample rate, quantisation and padding (the mel front end is part of the model config)."""
        return {
            "sample_rate": SAMPLE_RATE,
            "mono": self.stereo == "mean",
            # Only when not the default, so that existing stores keep their fingerprints.
            **({"stereo": self.stereo} if self.stereo != "mean" else {}),
            "quantize": "int16 round trip (laion-clap float32_to_int16 -> int16_to_float32)",
            "data_filling": "repeatpad",
            "clip_samples": self.audio_cfg.clip_samples,
        }


def _is_text_key(key: str) -> bool:
    """Whether a CLAP checkpoint key belongs to the text tower."""
    return key.startswith(TEXT_PREFIXES) or key in TEXT_KEYS


def read_clap_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The model state of a laion-clap checkpoint, as `clap_module.factory.load_state_dict` finds it.

    Accepts the training container `{'epoch', 'name', 'state_dict', 'optimizer'[, 'scaler']}` or a bare
    state dict, with or without DDP's `module.` prefix; read with weights_only=True.
    """
    obj = read_training_checkpoint(path)
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: no state dict in the checkpoint")
    if next(iter(sd)).startswith("module"):  # laion-clap's own test: the first key decides
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return tensors_only(sd, path, "state dict")


def load_clap_audio(enc: ClapAudioEncoder, path: Path) -> None:
    """Load the audio side of a CLAP checkpoint strictly; only text-tower keys may go unused."""
    sd = read_clap_checkpoint(path)
    audio = {k: v for k, v in sd.items() if not _is_text_key(k)}
    fusion = [k for k in audio if any(m in k for m in FUSION_MARKERS)]
    if fusion:
        raise CheckpointError(
            f"{path}: a feature-fusion CLAP checkpoint (enable_fusion=True, e.g. {fusion[0]}); "
            "this encoder is the non-fusion model: use 630k-audioset-best.pt / 630k-best.pt"
        )
    load_strict(enc, audio, path)


def build(cfg: Config, weights_dir: str | Path | None = None) -> ClapAudioEncoder:
    """The CLAP audio encoder: seeded random when cfg.weights is None, else strictly loaded."""
    path = resolve_weights(cfg.weights, weights_dir)
    if path is not None:
        path = require_file(path, f"CLAP {cfg.amodel or 'HTSAT'}", SOURCE)  # fail before building
    with seeded(cfg.seed):  # default init, the caller's RNG untouched
        enc = ClapAudioEncoder(cfg, make_audio_branch(cfg))
    if path is not None:
        load_clap_audio(enc, path)
    return enc.eval().requires_grad_(False)
