"""The overlay video: each output frame with its predicted mask blended on, the audio muxed back.

H.264 (yuv420p, even sizes) + AAC in mp4 with the index at the front (`+faststart`): what every browser plays
from the first byte.
"""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.video.decode import import_av

COLOUR = np.array([255, 40, 40], np.float32)  # the sounding area, drawn in red
ALPHA = 0.6  # the colour's weight where the probability is 1
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


def blend(rgb: np.ndarray, prob: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 RGB (H, W, 3) with the probability map (h, w), resized bilinearly to H x W, drawn in colour."""
    h, w = rgb.shape[:2]
    p = torch.as_tensor(prob, dtype=torch.float32)[None, None]
    if p.shape[-2:] != (h, w):
        p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
    a = (ALPHA * p[0, 0].clamp(0, 1)).numpy()[..., None]
    out = rgb.astype(np.float32) * (1 - a) + COLOUR * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _even(n: int) -> int:
    return max(2, n - n % 2)


class OverlayWriter:
    """Writes overlay.mp4: video at `fps` frames per second of `size` (W, H), and optionally an AAC track."""

    def __init__(
        self,
        path: str | Path,
        fps: Fraction,
        size: tuple[int, int],
        audio_rate: int | None,
        audio_channels: int = 1,
    ) -> None:
        av = import_av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = av.open(str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self.size = (_even(size[0]), _even(size[1]))
        v = self._out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = self.size[0], self.size[1], "yuv420p"
        v.options = {"preset": "veryfast", "crf": "20"}
        self._video, self._frames = v, 0
        self._audio = None
        if audio_rate is not None:
            rate = audio_rate if audio_rate in AAC_RATES else 48000
            layout = "mono" if audio_channels == 1 else "stereo"
            self._audio = self._out.add_stream("aac", rate=rate, layout=layout)
            # the decoded frames' own rate, sample format and layout are converted to the encoder's here
            self._resample = av.AudioResampler(format="fltp", layout=layout, rate=rate)
            self.audio_seconds = 0.0

    @property
    def has_audio(self) -> bool:
        """Whether the file gets an audio track."""
        return self._audio is not None

    def add(self, rgb: np.ndarray, prob: np.ndarray | torch.Tensor) -> None:
        """Append one output frame: the frame with its mask blended on."""
        av = import_av()
        w, h = self.size
        if rgb.shape[:2] != (h, w):  # odd sizes lose their last row/column; a size change is resized
            rgb = (
                rgb[:h, :w]
                if rgb.shape[0] in (h, h + 1) and rgb.shape[1] in (w, w + 1)
                else _resize(rgb, w, h)
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(blend(rgb, prob)), format="rgb24")
        frame.pts = self._frames
        self._frames += 1
        for packet in self._video.encode(frame):
            self._out.mux(packet)

    def add_audio(self, frame: Any) -> None:
        """Append one decoded audio frame (any format: converted for AAC)."""
        frame.pts = None  # the resampler numbers its output from 0: one continuous track
        for f in self._resample.resample(frame):
            self._encode_audio(f)

    def add_silence(self, seconds: float) -> None:
        """Append `seconds` of silence to the audio track."""
        av = import_av()
        rate = self._audio.rate
        left = int(round(seconds * rate))
        while left > 0:
            n = min(left, 1024 * 16)
            channels = self._audio.layout.nb_channels
            f = av.AudioFrame.from_ndarray(
                np.zeros((channels, n), np.float32), format="fltp", layout=self._audio.layout.name
            )
            f.rate = rate
            self.add_audio(f)
            left -= n

    def _encode_audio(self, f: Any) -> None:
        self.audio_seconds += f.samples / f.rate
        for packet in self._audio.encode(f):
            self._out.mux(packet)

    def close(self) -> None:
        """Flush the encoders and finish the file."""
        for packet in self._video.encode():
            self._out.mux(packet)
        if self._audio is not None:
            for f in self._resample.resample(None):
                self._encode_audio(f)
            for packet in self._audio.encode():
                self._out.mux(packet)
        self._out.close()

    def abort(self) -> None:
        """Close without finishing and remove the partial file."""
        with contextlib.suppress(Exception):  # a half-written file may not close cleanly; it goes either way
            self._out.close()
        self.path.unlink(missing_ok=True)


def _resize(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear resize of a uint8 RGB frame to (h, w)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
