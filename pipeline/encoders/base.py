"""What every encoder offers the extract stage: preprocessing, a forward, output shapes, provenance."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from pipeline.checkpoints import state_digest
from pipeline.data.audio import Resampler, Stereo
from pipeline.provenance import package_versions

VERSIONED_PACKAGES = (
    "torch",
    "numpy",
    "open_clip_torch",
    "laion-clap",
    "sam2",
    "torchscale",
    "scipy",
    "pillow",
)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch seeded to `seed` (for a reproducible random init); the caller's CPU RNG
    state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_frames(batch: np.ndarray) -> np.ndarray:
    """The input of a frame encoder: uint8 RGB frames (B, H, W, 3), else a ValueError."""
    a = np.asarray(batch)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB frames (B, H, W, 3), got {a.dtype} {a.shape}")
    return a


def frames_tensor(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB frames (B, H, W, 3) as a tensor (numpy shared, not copied), else a ValueError."""
    if torch.is_tensor(batch):
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 RGB frames (B, H, W, 3), got {batch.dtype} {tuple(batch.shape)}"
            )
        return batch
    return torch.from_numpy(np.ascontiguousarray(check_frames(batch)))


def check_audio(batch: np.ndarray) -> np.ndarray:
    """The input of an audio encoder: float segments (B, samples), samples > 0, else a ValueError."""
    a = np.asarray(batch)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating) or a.shape[1] == 0:
        raise ValueError(f"expected float32 audio (B, samples), got {a.dtype} {a.shape}")
    return a


class Encoder(nn.Module, ABC):
    """A frozen feature encoder. Frame encoders take uint8 RGB (B, H, W, 3) frames; audio encoders take
    float32 one-second segments (B, sample_rate) at `sample_rate` Hz: mono, or with stereo="flatten" the
    channels' pieces one after the other (B, channels * sample_rate)."""

    name: ClassVar[str]
    input: ClassVar[Literal["frames", "audio", "masks"]]
    sample_rate: int | None = None
    # Audio encoders: how the extract stage turns a WAV into segments (pipeline.data.audio.load_segments).
    stereo: Stereo = "mean"
    resampler: Resampler = "polyphase"

    def host_input(self, batch: np.ndarray) -> torch.Tensor:
        """Stacked raw rows to the host tensor sent to the device: frames stay uint8 (a quarter of float32's
        bytes), so resizing and normalising happen on the device (`device_input`)."""
        return torch.from_numpy(np.ascontiguousarray(batch))

    def device_input(self, x: torch.Tensor) -> torch.Tensor:
        """host_input's tensor, on the encoder's device, to the model's input (resize, scale, normalise)."""
        return x

    def preprocess(self, batch: np.ndarray) -> torch.Tensor:
        """Raw frames or audio to the model's input on the encoder's device, exactly as the reference
        prepares it: host_input, the copy, then device_input (on the CPU: the same ops in the same order)."""
        return self.device_input(self.host_input(batch).to(self.device))

    @abstractmethod
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocessed input (on the encoder's device) to named per-row feature tensors."""

    @abstractmethod
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every output of encode."""

    def output_dtypes(self) -> dict[str, str]:
        """Outputs stored in a fixed dtype (others follow the extraction's float16/float32 choice)."""
        return {}

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The architecture config that decides the features."""

    @abstractmethod
    def preprocessing_dict(self) -> dict[str, Any]:
        """The preprocessing that decides the features (sizes, means, interpolation, sample rate...)."""

    def weights_digest(self) -> str:
        """Digest of the weights actually loaded (same weights, same digest, whatever the file format)."""
        if getattr(self, "_digest", None) is None:
            self._digest = state_digest(self)
        return self._digest

    def provenance(self) -> dict[str, Any]:
        """Everything the store fingerprints: encoder, config, weights, preprocessing, versions (computed once)."""
        if getattr(self, "_provenance", None) is None:
            self._provenance = self._make_provenance()
        return self._provenance

    def _make_provenance(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "config": self.config_dict(),
            "weights": self.weights_digest(),
            "preprocessing": self.preprocessing_dict(),
            "versions": package_versions(*VERSIONED_PACKAGES),
        }

    def audio_loading(self) -> dict[str, Any]:
        """Keyword arguments of load_segments for this encoder's input (audio encoders only)."""
        return {"rate": self.sample_rate, "stereo": self.stereo, "resampler": self.resampler}

    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return next(self.parameters()).device
