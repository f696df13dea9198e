"""Which frame instants of a video are segmented, and which one second of audio goes with each.

Default (`fps` None), AVSBench's pairing: one frame per second, frame k (k = 1, 2, ...) being the frame shown at
t = (k - 1) + 15/16 s, paired with the audio of second k, [k - 1, k) s. This is what the AVSBench toolkit does
(OpenNLPLab/AVSBench, preprocess_scripts/preprocess_s4.py / preprocess_ms3.py): with F = round(fps) it counts
16 sample points per second at decoded-frame index int(l * F + i * F / 16), i = 0..15, and keeps i = 15, i.e.
frame index int(l * F + 15 F / 16) of second l, clamped to the last frame; the audio of the same trimmed video
is written out whole and cut into one-second segments from t = 0 (pipeline.data.audio.segments). At an integer
frame rate our instant picks exactly the toolkit's frame; at 29.97 fps the toolkit counts frames at 30 per
second and drifts by 0.1% (one frame after ~33 s), where we keep to the timestamps.

`fps` N: frame j (0-based) at t = (j + 0.5) / N, paired with the one-second window centred on it,
[t - 0.5, t + 0.5) s (zeros before the start and after the end of the audio).

A video gives the frames whose second (1 fps) or 1/N-second slot starts while a frame is on screen, i.e. at or
before the last frame's timestamp L: floor(L * rate) + 1 frames (5 for a 5-s clip at 30 or 29.97 fps); an
instant past the last frame takes the last frame, as the toolkit clamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AVSBENCH_INSTANT = 15 / 16  # where in each second the toolkit's frame lies (sample 15 of 16)
EPS = 1e-6  # timestamps are rationals: a slot starting within this of the last frame counts
# A frame stamped up to this late still counts as shown at an instant: containers round timestamps (Matroska
# to 1 ms, so frame 15 of 16 fps, due at 937.5 ms, is stored at 938 ms).
LATE = 0.001


@dataclass(frozen=True)
class Pairing:
    """The frame instants and audio windows of one output rate (None: AVSBench's 1 fps)."""

    fps: float | None = None

    @property
    def rate(self) -> float:
        """Output frames per second (the overlay video's rate)."""
        return 1.0 if self.fps is None else float(self.fps)

    def instant(self, j: int) -> float:
        """Seconds from the first frame of the instant whose frame is output frame j (0-based)."""
        if self.fps is None:
            return j + AVSBENCH_INSTANT
        return (j + 0.5) / self.fps

    def window(self, j: int) -> tuple[float, float]:
        """The one-second audio window (start, end) in seconds paired with output frame j."""
        if self.fps is None:
            return float(j), float(j + 1)
        t = self.instant(j)
        return t - 0.5, t + 0.5

    def count(self, last: float) -> int:
        """Output frames of a video whose last frame is at `last` seconds from its first."""
        return math.floor(last * self.rate + EPS) + 1 if last >= 0 else 0

    def describe(self) -> str:
        """The rule in words (segments.json records it)."""
        if self.fps is None:
            return (
                "AVSBench: 1 frame per second, frame k shown at (k - 1) + 15/16 s (the toolkit's sample 15 of "
                "16 per second), audio of second k, [k - 1, k) s"
            )
        return f"{self.fps:g} fps: frame j at (j + 0.5) / {self.fps:g} s, audio [t - 0.5, t + 0.5) s centred on it"
