"""Head checkpoints (best.pt / last.pt / head.pt): the format, atomic save, read, load, fingerprint checks.

A head checkpoint holds only what trains (`AV2TSAM.trainable_state_dict`) plus what it must be used with:
the preset, the head config, the digests of the frozen weights (`frozen`) and the fingerprints of the
cached features it was trained on (`features`). Train, evaluate and `official import/export` all use
this module; nothing else writes or reads the format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from pipeline.checkpoints import CheckpointError, state_digest
from pipeline.files import save_torch
from pipeline.model.av2t_sam import AV2TSAM
from pipeline.model.config import HeadConfig
from pipeline.provenance import fingerprint, precision_variants

FORMAT = "av2t-head/1"
REQUIRED = ("preset", "head", "trainable", "frozen", "features")


def head_payload(
    model: AV2TSAM,
    *,
    name: str,
    preset: str,
    subset: str | None,
    features: dict[str, str],
    epoch: int | None = None,
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What a head checkpoint holds: trainable weights and the fingerprints of everything frozen it expects."""
    return {
        "format": FORMAT,
        "name": name,
        "preset": str(preset),
        "subset": subset,
        "backbone": model.backbone,
        "head": model.cfg.model_dump(mode="json"),
        "trainable": model.trainable_state_dict(),
        "frozen": model.frozen_fingerprints(),
        "features": dict(features),
        "widths": {"d_clip": model.d_clip, "d_clap": model.d_clap},
        "epoch": epoch,
        "metrics": dict(metrics or {}),
        **extra,
    }


def save_head(payload: dict[str, Any], path: str | Path) -> Path:
    """Write a head checkpoint atomically."""
    if payload.get("format") != FORMAT:
        raise ValueError(f"not a head checkpoint payload (format {FORMAT}); build it with head_payload")
    return save_torch(payload, path)


@dataclass(frozen=True)
class HeadCheckpoint:
    """A read head checkpoint: its file, its raw dict and its validated head config."""

    path: Path
    data: dict[str, Any]
    head: HeadConfig

    @property
    def preset(self) -> str:
        """The encoder preset the head was trained with."""
        return self.data["preset"]

    @property
    def features(self) -> dict[str, str]:
        """Encoder name -> fingerprint of the cached features it was trained on ({} = any)."""
        return self.data["features"]

    def widths(self) -> dict[str, int]:
        """d_clip / d_clap the head was built for (older files: read off the projector's input widths)."""
        if "widths" in self.data:
            return {k: int(v) for k, v in self.data["widths"].items()}
        sd = self.data["trainable"]
        keys = {"d_clip": "projector.vision_proj.weight", "d_clap": "projector.audio_proj.weight"}
        missing = [k for k in keys.values() if k not in sd]
        if missing:
            raise CheckpointError(
                f"{self.path}: records no embedding widths and lacks {missing} to infer them"
            )
        return {name: int(sd[key].shape[1]) for name, key in keys.items()}

    def digest(self) -> str:
        """sha256 (16 hex) of the trainable weights: tells one head from another whatever the file name."""
        return state_digest(self.data["trainable"])

    @property
    def subset(self) -> str | None:
        """The AVSBench subset it was trained on (None: unknown, e.g. imported)."""
        return self.data.get("subset")


def read_head(path: str | Path) -> HeadCheckpoint:
    """A head checkpoint, read with weights_only; clear errors naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: head checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # pickle / zip errors have no common base
        raise CheckpointError(f"{path}: cannot read head checkpoint: {e}") from e
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an av2t head checkpoint (format {FORMAT})")
    missing = [k for k in REQUIRED if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: head checkpoint lacks {missing}")
    try:
        head = HeadConfig.model_validate(ck["head"])
    except ValidationError as e:
        raise CheckpointError(f"{path}: invalid head config: {e}") from e
    return HeadCheckpoint(path, ck, head)


def check_frozen(ck: HeadCheckpoint, model: AV2TSAM) -> None:
    """The model's frozen weights must be those the head was trained on (named both ways if not)."""
    have = model.frozen_fingerprints()
    diff = {k: (v, have.get(k)) for k, v in ck.data["frozen"].items() if have.get(k) != v}
    if diff:
        parts = ", ".join(f"{k}: trained on {a}, now {b}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"{ck.path}: was trained against other frozen weights ({parts}); build the same preset/weights"
        )


def check_features(ck: HeadCheckpoint, have: dict[str, dict[str, Any]], where: str) -> None:
    """Features from `where` (encoder name -> provenance) must be those the head was trained on: the same
    encoders, whether the training features were computed in fp32 or bf16."""
    bad = [
        f"{name}: checkpoint {ck.features[name]}, {where} {fingerprint(prov)}"
        for name, prov in have.items()
        if name in ck.features and ck.features[name] not in precision_variants(prov)
    ]
    if bad:
        raise CheckpointError(
            f"{ck.path}: was trained on features of other encoders than {where} gives "
            f"({'; '.join(bad)}); use the same preset {ck.preset!r}, weights and preprocessing"
        )


def load_head(ck: HeadCheckpoint | str | Path, model: AV2TSAM) -> HeadCheckpoint:
    """Load a head's trainable weights into model, refusing frozen weights other than those it was trained on."""
    ck = ck if isinstance(ck, HeadCheckpoint) else read_head(ck)
    check_frozen(ck, model)
    model.load_trainable_state_dict(ck.data["trainable"], ck.path)
    return ck
