"""Audio loading: mono mix, resampling, one-second segments, zero padding, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from pipeline.data.audio import load_segments, resample, segments, to_mono
from pipeline.data.clips import DataError


def _tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_stereo_is_averaged_and_flatten_interleaves():
    stereo = np.stack([np.ones(4), 3 * np.ones(4)], axis=1).astype(np.float32)
    np.testing.assert_array_equal(to_mono(stereo), 2 * np.ones(4))
    np.testing.assert_array_equal(to_mono(stereo, "flatten"), [1, 3, 1, 3, 1, 3, 1, 3])


def test_resample_keeps_the_frequency():
    x = resample(_tone(440, 1.0, 16_000), 16_000, 48_000)
    assert x.shape == (48_000,) and x.dtype == np.float32
    peak = np.argmax(np.abs(np.fft.rfft(x))) * 48_000 / len(x)
    assert abs(peak - 440) < 2


def test_short_audio_is_zero_padded_into_five_segments():
    seg = segments(np.ones(16_000 * 3 + 100, np.float32), 16_000)
    assert seg.shape == (5, 16_000)
    assert seg[:3].all() and seg[3, :100].all() and not seg[3, 100:].any() and not seg[4].any()


def test_load_segments_from_stereo_wav(tmp_path):
    path = tmp_path / "-abc.wav"
    tone = _tone(1000, 5.0, 16_000)
    sf.write(path, np.stack([tone, 0.5 * tone], axis=1), 16_000, subtype="PCM_16")
    seg = load_segments(path, 48_000)
    assert seg.shape == (5, 48_000)
    rms = np.sqrt((seg[2] ** 2).mean())
    assert abs(rms - 0.75 * 0.5 / np.sqrt(2)) < 0.01  # mean of gains 1.0 and 0.5


def test_bad_wavs_name_the_file(tmp_path):
    empty, garbage = tmp_path / "empty.wav", tmp_path / "garbage.wav"
    sf.write(empty, np.zeros(0, np.float32), 16_000)
    garbage.write_bytes(b"RIFF nonsense")
    with pytest.raises(DataError, match="empty.wav: empty"):
        load_segments(empty, 16_000)
    with pytest.raises(DataError, match="garbage.wav: unreadable"):
        load_segments(garbage, 16_000)
