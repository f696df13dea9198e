"""`av2t segment`: the same masks as the end-to-end evaluation on the same content, and any video file in."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("av", reason="segmenting videos needs PyAV (pip install av)")

from video_files import moving_frames, tone, write_video  # noqa: E402

from pipeline.data.clips import read_clips  # noqa: E402
from pipeline.data.images import load_frame  # noqa: E402
from pipeline.scoring import read_probability  # noqa: E402
from pipeline.settings import EvalConfig, SegmentConfig  # noqa: E402
from stages.evaluate import evaluate  # noqa: E402
from stages.segment import segment  # noqa: E402

FPS = 16  # AVSBench's rule picks decoded frame l * 16 + 15 of second l


def clip_as_video(clip, path: Path) -> Path:
    """The clip's 5 frames and its WAV as one lossless file (FFV1 + 16-bit PCM in .mkv).

    Only the frame AVSBench's rule picks (15/16 into each second) is the clip's frame; every other frame is
    its negative, so a wrongly picked instant shows in the masks.
    """
    frames = [load_frame(p) for p in clip.frame_paths]
    video = [
        frames[i // FPS] if i % FPS == FPS - 1 else 255 - frames[i // FPS] for i in range(FPS * len(frames))
    ]
    pcm, rate = sf.read(str(clip.audio_path), dtype="int16", always_2d=True)
    audio = pcm.T.astype(np.float32) / 32768  # exact in both directions
    return write_video(
        path,
        video,
        fps=FPS,
        video_codec="ffv1",
        pix_fmt="bgr0",
        audio=audio,
        rate=rate,
        audio_codec="pcm_s16le",
    )


def test_segment_gives_the_end_to_end_evaluations_masks(s4_run, tmp_path):
    """The masks of `segment` on a lossless video of a clip equal `evaluate --mode end-to-end --save-masks`'s.

    Tolerance: one grey level, on at most 0.5% of the pixels. The frames (FFV1 bgr0) and samples (PCM s16)
    round-trip exactly and both paths share the model code; what may differ is float rounding: the audio is
    resampled window by window here and whole-file there (the same filter taps, another summation extent),
    and the batch holds 5 frames there and `batch_size` here. A flip of one 8-bit level needs a probability on a
    level boundary; a wrong frame or audio second changes whole masks.
    """
    root, ck = s4_run["root"], s4_run["checkpoint"]
    ev = evaluate(
        EvalConfig(
            checkpoint=ck,
            root=root,
            subset="s4",
            split="test",
            mode="end-to-end",
            device="cpu",
            out=tmp_path / "eval",
            save_masks=True,
            overlays=0,
            progress=False,
        )
    )
    assert ev["frames"] > 0
    clips = read_clips(root, "s4", "test")
    videos = [clip_as_video(c, tmp_path / "videos" / f"{c.id}.mkv") for c in clips]
    r = segment(
        SegmentConfig(
            videos=videos, checkpoint=ck, out=tmp_path / "seg", device="cpu", progress=False, batch_size=3
        )
    )
    assert not r["failed"], r["failed"]
    levels = 0
    for c in clips:
        seg = json.loads((tmp_path / "seg" / c.id / "segments.json").read_text())
        assert [f["k"] for f in seg["frames"]] == list(range(1, 6))
        assert [f["time"] for f in seg["frames"]] == [k + 15 / 16 for k in range(5)]
        # the picked frames: decoded frame l * 16 + 15 (Matroska stores its time to the millisecond)
        assert [f["frame_time"] for f in seg["frames"]] == pytest.approx(
            [k + 15 / 16 for k in range(5)], abs=1e-3
        )
        for k in c.annotated:
            mine, _ = read_probability(tmp_path / "seg" / c.id / "masks" / c.id / f"{c.id}_{k}.png")
            theirs, _ = read_probability(tmp_path / "eval" / "masks" / c.id / f"{c.id}_{k}.png")
            diff = np.abs(mine.astype(int) - theirs.astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() <= 0.005, (c.id, k, diff.max(), (diff > 0).mean())
            levels += int((diff > 0).sum())
    print(f"pixels one level apart: {levels}")


def test_videos_of_any_kind_and_bad_files(s4_run, tmp_path, capsys):
    """Several containers and codecs, odd sizes, 29.97 fps, stereo 44.1 kHz, no audio, truncated, not a video:
    masks, an overlay with video and audio of the right length, segments.json; bad files one line each."""
    from flows.cli import main as cli

    v = tmp_path / "in"
    write_video(
        v / "a.mp4",
        moving_frames(90, 90, 162),
        fps=Fraction(30000, 1001),
        audio=tone(3.0, 44100, 2),
        rate=44100,
    )
    write_video(
        v / "b.webm",
        moving_frames(24, 63, 97),
        fps=8,
        video_codec="libvpx-vp9",
        audio=tone(3.0, 48000),
        rate=48000,
        audio_codec="libopus",
    )
    write_video(v / "c.mov", moving_frames(20, 50, 50), fps=10, audio=None)
    whole = write_video(
        tmp_path / "d.mkv",
        moving_frames(100, 64, 64),
        fps=10,
        audio=tone(10.0, 22050),
        rate=22050,
        audio_codec="mp3",
    )
    (v / "d.mkv").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (v / "e.mp4").write_bytes(b"this is not a video\n" * 50)
    ffv1 = write_video(tmp_path / "f.mkv", moving_frames(10, 32, 32), fps=10, video_codec="ffv1", pix_fmt="bgr0",
                       audio=tone(1.0, 16000), rate=16000, audio_codec="pcm_s16le")  # fmt: skip
    (v / "f.mkv").write_bytes(ffv1.read_bytes().replace(b"V_FFV1", b"V_ZZZ1"))  # a codec FFmpeg does not know
    code = cli(
        [
            "segment",
            str(v),
            "--checkpoint",
            str(s4_run["checkpoint"]),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("av2t: ")]
    assert code == 2
    assert any("c.mov: no audio stream" in ln and "--audio own-or-silence" in ln for ln in lines), err
    assert any("e.mp4: not a video FFmpeg can read" in ln for ln in lines), err
    assert any("d.mkv" in ln and "truncated" in ln for ln in lines), err
    assert any("f.mkv" in ln and "codec is unknown to FFmpeg" in ln for ln in lines), err
    assert "4 of 6 videos failed" not in err and "3 of 6 videos failed" in err, err
    import av

    for name, seconds in (("a", 3.0), ("b", 3.0), ("d", 5.0)):
        folder = tmp_path / "out" / name
        seg = json.loads((folder / "segments.json").read_text())
        assert len(seg["frames"]) == len(list((folder / "masks" / name).glob("*.png"))) >= 1
        with av.open(str(folder / "overlay.mp4")) as c:
            (vs,), (aus,) = c.streams.video, c.streams.audio
            assert vs.codec_context.name == "h264" and aus.codec_context.name == "aac"
            assert sum(1 for _ in c.decode(vs)) == len(seg["frames"])
        with av.open(str(folder / "overlay.mp4")) as c:
            audio_s = sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].rate
        assert abs(audio_s - min(seconds, seg["seconds"])) < 1.0, (name, audio_s)
    assert seg["problems"] and "truncated" in seg["problems"][0]
    assert not (tmp_path / "out" / "c").exists() and not (tmp_path / "out" / "e").exists()
    # on silence where the file has none, and said so
    code = cli(
        [
            "segment",
            str(v / "c.mov"),
            "--checkpoint",
            str(s4_run["checkpoint"]),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--audio",
            "own-or-silence",
            "--fps",
            "4",
        ]
    )
    assert code == 0
    seg = json.loads((tmp_path / "out" / "c" / "segments.json").read_text())
    assert seg["audio"]["source"] == "silence" and "no audio stream" in seg["audio"]["note"]
    assert len(seg["frames"]) == 8 and seg["frames"][0]["audio"] == [-0.375, 0.625]
