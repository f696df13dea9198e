"""Microsoft CLAP 2023 audio encoder (msclap 1.3.4): the audio half of the reference's MS-CLAP embeddings.

AV2T-SAM computes its audio embeddings with MS-CLAP 2023 (`CLAPWrapper.get_audio_embeddings_single`). Per
one-second segment at 44.1 kHz (no repeat-padding, no int16 round trip, no L2 normalisation), exactly as
`CLAPWrapper._get_audio_embeddings` does: `clap.audio_encoder(x)[0]`, i.e. msclap's `AudioEncoder`: the
HTSAT (its own STFT + log-mel front end, Swin-T body, token-semantic pooling -> 768-d `latent_output`), then
`Projection` (linear 768->1024, GELU, linear, residual, LayerNorm) -> 1024-d. The GPT-2 text tower (a hub
download) is never built. Segmenting, stereo handling and resampling happen in the extract stage
(`pipeline.data.audio.load_segments`) with this encoder's `sample_rate`, `stereo` and `resampler`.

msclap's HTSAT ignores the audio settings CLAP passes it: `HTSATWrapper` builds `HTSAT_Swin_Transformer`
from `msclap/models/config.py` (mel filterbank for 32 kHz, fmax 14 kHz, hop 320, 64 mels), not from
config_2023.yml (44.1 kHz, fmax 8 kHz). The audio is still resampled to 44.1 kHz (config_2023's
`sampling_rate`), so a one-second segment gives 138 STFT frames, stretched bicubically to HTSAT's 1024.
Building from msclap's own classes keeps all of that as the reference has it.

The `paper-official` preset is msclap's 2023 audio encoder with `CLAP_weights_2023.pth`. A tiny variant (`htsat`
sizes set; tests use one) is the same `HTSAT_Swin_Transformer` class at small sizes, same mel front end,
with seeded random weights.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from pipeline.checkpoints import CheckpointError, load_strict, require_file
from pipeline.data.audio import Resampler, Stereo
from pipeline.encoders.base import check_audio, seeded
from pipeline.encoders.clap_common import (
    ClapEncoder,
    built_sizes,
    import_from,
    package_dir,
    read_training_checkpoint,
    tensors_only,
)
from pipeline.encoders.clap_common import HtsatSizes as ClapHtsatSizes
from pipeline.presets import resolve_weights
from pipeline.provenance import package_versions

OUTPUT = "clap"  # the store and the head see an encoder called "clap", whatever implements it
IMPLEMENTATION = "msclap_audio"
SAMPLE_RATE = 44_100
SOURCE = "Microsoft CLAP, HF microsoft/msclap (CLAP_weights_2023.pth)"

# msclap's configs/config_2023.yml, the arguments CLAPWrapper.load_clap gives CLAP -> AudioEncoder (the test
# checks them against the installed file). HTSATWrapper ignores all but out_emb/d_proj (see the docstring).
CONFIG_2023 = {
    "audioenc_name": "HTSAT",
    "out_emb": 768,
    "sampling_rate": SAMPLE_RATE,
    "window_size": 1024,
    "hop_size": 320,
    "mel_bins": 64,
    "fmin": 50,
    "fmax": 8000,
    "num_classes": 527,
    "d_proj": 1024,
}

# Keys of CLAP_weights_2023.pth's 'model' state dict that are not the audio encoder: the only ones left unused.
# caption_encoder.* is the GPT-2 text tower and its projection (the released file also holds GPT-2's old
# attn.bias / attn.masked_bias buffers, which is why msclap loads with strict=False); logit_scale is the
# contrastive temperature between the two towers, which no embedding uses.
AUDIO_PREFIX = "audio_encoder."
TEXT_PREFIX = "caption_encoder."
UNUSED_KEYS = frozenset({"logit_scale"})


def msclap_dir() -> Path:
    """The installed msclap package folder (found without importing it)."""
    return package_dir("msclap", "msclap==1.3.4")


def _no_wrapper(name: str):
    raise AttributeError(
        f"msclap.{name}: av2t loaded only msclap.models, without msclap's package __init__, because its "
        "CLAPWrapper imports torchaudio, which is not installed"
    )


def msclap_models(sub: str) -> ModuleType:
    """msclap's `msclap.models.<sub>`: the very module objects msclap's own CLAP uses.

    `import msclap` runs its package __init__, which imports CLAPWrapper, which imports torchaudio at module
    level (for reading and resampling files) and transformers' tokenizers. There is no torchaudio for our
    torch, and the model code in msclap.models needs none of it. So, only when torchaudio is missing and
    msclap is not imported yet, the `msclap` package is registered from its spec without running its
    __init__, and `msclap.models.<sub>` is imported under its real name (msclap.models' own __init__ imports
    only model code). Where torchaudio exists, msclap is imported the ordinary way and left untouched.
    """
    if "msclap" not in sys.modules and importlib.util.find_spec("torchaudio") is None:
        spec = importlib.util.find_spec("msclap")
        if spec is None:
            msclap_dir()  # raises the install hint
        pkg = importlib.util.module_from_spec(spec)
        pkg.__getattr__ = _no_wrapper  # a clear error for msclap.CLAP and friends
        sys.modules["msclap"] = pkg
    return import_from(f"msclap.models.{sub}", msclap_dir())


class HtsatSizes(ClapHtsatSizes):
    """Arguments of msclap's `HTSAT_Swin_Transformer` for custom (non-2023) sizes, e.g. the tiny variant.

    The sizes both CLAP encoders take, plus the class count. HTSAT stretches the log-mel to spec_size *
    (spec_size // 64) frames; longer inputs take msclap's hard-coded crop path (sized for 10-s clips), and
    256 (1024 frames) holds up to ~7.4 s at 44.1 kHz.
    """

    num_classes: int = Field(527, gt=0)  # sizes tscam_conv/head, which the embedding does not use


class Config(BaseModel):
    """MS-CLAP audio encoder: the 2023 model (htsat=None) or custom HTSAT sizes; weights, seed, audio loading."""

    model_config = ConfigDict(extra="forbid")

    version: Literal["2023"] = "2023"
    # None: msclap's HTSATWrapper as CLAP builds it (HTSAT-tiny sizes hard-coded in msclap/models/config.py).
    htsat: HtsatSizes | None = None
    d_proj: int = Field(CONFIG_2023["d_proj"], gt=0)  # the projection's width: the output width
    weights: str | None = None  # relative to the weights folder; None = seeded random init
    seed: int = 0  # random init only
    # How the extract stage turns a WAV into segments for this encoder (pipeline.data.audio.load_segments).
    stereo: Stereo = "mean"
    resampler: Resampler = "polyphase"


def make_audio_encoder(cfg: Config) -> nn.Module:
    """msclap's `AudioEncoder` (HTSATWrapper `base` + `projection`), default-initialised."""
    clap = msclap_models("clap")
    if cfg.htsat is None:  # exactly what CLAP.__init__ builds from config_2023.yml
        c = CONFIG_2023
        return clap.AudioEncoder(
            c["audioenc_name"],
            c["out_emb"],
            cfg.d_proj,
            c["sampling_rate"],
            c["window_size"],
            c["hop_size"],
            c["mel_bins"],
            c["fmin"],
            c["fmax"],
            c["num_classes"],
        )
    htsat_mod, s = msclap_models("htsat"), cfg.htsat
    htsat = htsat_mod.HTSAT_Swin_Transformer(
        **s.htsat_kwargs(),
        num_classes=s.num_classes,
        config=msclap_models("config"),  # the same mel front end as the 2023 model
    )
    # HTSATWrapper.__init__ and AudioEncoder.__init__ hard-code the full-size HTSAT: assemble the same two
    # classes (same forward, same key names) around the small one instead.
    base = htsat_mod.HTSATWrapper.__new__(htsat_mod.HTSATWrapper)
    nn.Module.__init__(base)
    base.htsat = htsat
    enc = clap.AudioEncoder.__new__(clap.AudioEncoder)
    nn.Module.__init__(enc)
    enc.base = base
    enc.projection = clap.Projection(htsat.num_features, cfg.d_proj)
    return enc


class MsclapAudioEncoder(ClapEncoder):
    """Frozen MS-CLAP 2023 audio encoder: HTSAT + projection, the un-normalised 1024-d embedding."""

    sample_rate = SAMPLE_RATE

    def __init__(self, cfg: Config, audio_encoder: nn.Module):
        super().__init__(cfg)
        self.audio_encoder = audio_encoder  # same key names as CLAP's `audio_encoder.*`
        self.resampler = cfg.resampler

    def host_input(self, batch: np.ndarray) -> torch.Tensor:
        """(B, samples) float32 segments as they are: msclap feeds the raw waveform (no padding, no quantising)."""
        return torch.from_numpy(np.ascontiguousarray(check_audio(batch), dtype=np.float32))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What CLAPWrapper._get_audio_embeddings returns: clap.audio_encoder(x)[0] (not normalised)."""
        x = x.to(self.device, torch.float32)
        return {OUTPUT: self.audio_encoder(x)[0]}

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """One projected vector per segment (1024 for the 2023 model)."""
        return {OUTPUT: (self.cfg.d_proj,)}

    def config_dict(self) -> dict[str, Any]:
        """The resolved architecture, including the mel front end HTSAT really uses."""
        h = self.audio_encoder.base.htsat
        c = h.config
        return {
            "implementation": IMPLEMENTATION,
            "version": self.cfg.version,
            "htsat": built_sizes(h) | {"num_classes": h.num_classes},
            "mel_frontend": {
                k: getattr(c, k)
                for k in ("sample_rate", "window_size", "hop_size", "mel_bins", "fmin", "fmax")
            },
            "d_proj": self.cfg.d_proj,
            "normalized": False,
        }

    def preprocessing_dict(self) -> dict[str, Any]:
        """Sample rate, channel handling, resampler and segmenting (the mel front end is in the config)."""
        return {
            "sample_rate": SAMPLE_RATE,
            "stereo": self.stereo,
            "resampler": self.resampler,
            "segment": "1 s from t=0, zero-padded, fed as is (no repeat-padding to a duration, no quantising)",
        }

    def _make_provenance(self) -> dict[str, Any]:
        prov = super()._make_provenance()
        prov["implementation"] = IMPLEMENTATION
        prov["versions"] = {**prov["versions"], **package_versions("msclap", "torchlibrosa")}
        return prov


def read_msclap_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The 'model' state dict of an msclap checkpoint (msclap reads `torch.load(path)['model']`).

    Read with weights_only=True; other top-level entries (none are known in the released file) are ignored
    as msclap ignores them, as long as they are plain data.
    """
    obj = read_training_checkpoint(path)
    sd = obj.get("model")
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(
            f"{path}: not an msclap checkpoint: expected a dict holding a 'model' state dict, "
            f"found top-level entries {sorted(map(str, obj))[:8]}"
        )
    return tensors_only(sd, path, "'model' state dict")


def _is_unused_key(key: str) -> bool:
    """Whether a CLAP_weights_2023.pth key belongs to the text side (left unused on purpose)."""
    return key.startswith(TEXT_PREFIX) or key in UNUSED_KEYS


def audio_state(path: Path) -> dict[str, torch.Tensor]:
    """The audio encoder's entries of an msclap checkpoint; only the text side may be left out."""
    sd = read_msclap_checkpoint(path)
    stray = sorted(k for k in sd if not k.startswith(AUDIO_PREFIX) and not _is_unused_key(k))
    if stray:
        more = f" ... (+{len(stray) - 8} more)" if len(stray) > 8 else ""
        raise CheckpointError(
            f"{path}: {len(stray)} key(s) belong to neither msclap's audio encoder ({AUDIO_PREFIX}*) nor "
            f"its text side ({TEXT_PREFIX}*, {', '.join(sorted(UNUSED_KEYS))}): {', '.join(stray[:8])}{more}"
        )
    return {k: v for k, v in sd.items() if k.startswith(AUDIO_PREFIX)}


def build(cfg: Config, weights_dir: str | Path | None = None) -> MsclapAudioEncoder:
    """The MS-CLAP audio encoder: seeded random when cfg.weights is None, else strictly loaded."""
    path = resolve_weights(cfg.weights, weights_dir)
    sd = None
    if path is not None:  # a missing or foreign file fails before the model is built
        sd = audio_state(require_file(path, f"MS-CLAP {cfg.version}", SOURCE))
    with seeded(cfg.seed):  # default init, the caller's RNG untouched
        enc = MsclapAudioEncoder(cfg, make_audio_encoder(cfg))
    if sd is not None:
        load_strict(enc, sd, path)  # every audio key used, none missing, shapes equal
    return enc.eval().requires_grad_(False)
