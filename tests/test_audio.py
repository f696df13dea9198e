"""Audio loading: mono mix or channel flattening, resampling, one-second segments, zero padding, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.data.audio import load_segments, resample, segments, sinc_hann_kernel, to_mono
from pipeline.data.clips import DataError

# Inputs and outputs of torchaudio 2.5.1's `transforms.Resample(a, b)` (default arguments), see
# tests/reference/README.md: x_<a>_<b> (2, n) float32 in, y_<a>_<b> out.
TORCHAUDIO_GOLDEN = Path(__file__).parent / "reference" / "torchaudio_resample.npz"


def _tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_stereo_is_averaged():
    stereo = np.stack([np.ones(4), 3 * np.ones(4)], axis=1).astype(np.float32)
    np.testing.assert_array_equal(to_mono(stereo), 2 * np.ones(4))


def test_flatten_puts_each_channels_piece_of_a_second_one_after_the_other(tmp_path):
    """The reference's MS-CLAP loader: per channel, then segment i = [left piece i, right piece i]."""
    rate = 100
    left = np.arange(1, 251, dtype=np.float32) / 1000  # 2.5 s: segments 3 and 4 are padded / silent
    right = -left
    path = tmp_path / "st.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    seg = load_segments(path, rate, stereo="flatten")
    assert seg.shape == (5, 2 * rate) and seg.dtype == np.float32
    want_l, want_r = segments(left, rate), segments(right, rate)
    np.testing.assert_array_equal(seg, np.concatenate([want_l, want_r], axis=1))
    np.testing.assert_array_equal(seg[2, 50:100], 0)  # the left piece of second 3 is zero-padded
    assert seg[2, 100] == -left[200]
    mono = tmp_path / "mono.wav"
    sf.write(mono, left, rate, subtype="FLOAT")
    np.testing.assert_array_equal(load_segments(mono, rate, stereo="flatten"), want_l)
    np.testing.assert_array_equal(load_segments(mono, rate), want_l)
    with pytest.raises(ValueError, match="stereo"):
        load_segments(mono, rate, stereo="interleave")


def test_flatten_resamples_each_channel(tmp_path):
    tone = _tone(440, 2.0, 16_000)
    path = tmp_path / "st.wav"
    sf.write(path, np.stack([tone, 0.5 * tone], axis=1), 16_000, subtype="FLOAT")
    for method in ("polyphase", "sinc_hann"):
        seg = load_segments(path, 44_100, stereo="flatten", resampler=method)
        left, right = resample(tone, 16_000, 44_100, method), resample(0.5 * tone, 16_000, 44_100, method)
        assert seg.shape == (5, 88_200)
        np.testing.assert_array_equal(seg[1, :44_100], left[44_100:88_200])
        np.testing.assert_array_equal(seg[1, 44_100:], right[44_100:88_200])


@pytest.mark.parametrize("rates", [(16_000, 44_100), (48_000, 44_100), (22_050, 44_100), (8_000, 44_100)])
def test_sinc_hann_equals_torchaudio_resample_bit_for_bit(rates):
    a, b = rates
    golden = np.load(TORCHAUDIO_GOLDEN)
    x, want = golden[f"x_{a}_{b}"], golden[f"y_{a}_{b}"]
    got = resample(x, a, b, "sinc_hann")
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(resample(x[1], a, b, "sinc_hann"), want[1])  # 1-D in, 1-D out
    kernel, width = sinc_hann_kernel(a, b)
    assert width == 7 and kernel.dtype.is_floating_point and kernel.shape[1] == 1


def test_resamplers_differ_near_the_band_edge():
    """Why sinc_hann exists: the two low-pass filters differ by far more than float rounding."""
    x = _tone(7000, 1.0, 16_000)
    a, b = resample(x, 16_000, 44_100), resample(x, 16_000, 44_100, "sinc_hann")
    assert a.shape == b.shape == (44_100,)
    assert np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)) > 0.1
    with pytest.raises(ValueError, match="resampler"):
        resample(x, 16_000, 44_100, "linear")


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
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2], np.float32), 16_000, subtype="FLOAT")
    for resampler in ("polyphase", "sinc_hann"):  # refused before any resampling could smear it
        with pytest.raises(DataError, match="nan.wav: 1 sample is NaN or infinite"):
            load_segments(nan, 48_000, resampler=resampler)
