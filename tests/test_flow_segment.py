"""The segment-videos deployment that `av2t serve` serves: a folder of videos in, one result folder each, the
run page's table and progress artifacts; a bad file fails only its own task (the run ends Failed, naming it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("av", reason="segmenting videos needs PyAV (pip install av)")

from prefect_server import deployment_run  # noqa: E402
from video_files import moving_frames, tone, write_video  # noqa: E402

pytestmark = pytest.mark.slow
DEPLOYMENT = "segment-videos/segment"


def _prefect(env: dict, *args: str) -> str:
    prefect = str(Path(sys.executable).parent / "prefect")
    out = subprocess.run(
        [prefect, *args], env={**env, "COLUMNS": "400"}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_served_segment_videos_writes_each_video_and_its_artifacts(tmp_path, prefect_env, s4_run):
    videos = tmp_path / "videos"
    write_video(videos / "talk.mp4", moving_frames(30, 64, 96), fps=10, audio=tone(3.0, 16000), rate=16000)
    write_video(
        videos / "mute.mkv", moving_frames(20, 48, 48), fps=10, audio=None
    )  # on silence (the default)
    out = tmp_path / "out"
    params = {
        "videos": str(videos),
        "checkpoint": str(s4_run["checkpoint"]),
        "out": str(out),
        "device": "cpu",
    }
    run = deployment_run(prefect_env, DEPLOYMENT, params)
    assert run.returncode == 0 and "Completed" in run.stdout + run.stderr, (
        run.stdout[-3000:] + run.stderr[-2000:]
    )
    for name, frames in (("talk", 3), ("mute", 2)):
        seg = json.loads((out / name / "segments.json").read_text())
        assert len(seg["frames"]) == frames and (out / name / "overlay.mp4").is_file()
    assert json.loads((out / "mute" / "segments.json").read_text())["audio"]["source"] == "silence"
    table = _prefect(prefect_env, "artifact", "inspect", "segment-videos")
    assert "talk.mp4" in table and "mute.mkv" in table and "mean sounding area" in table
    assert "segment-videos-progress" in _prefect(prefect_env, "artifact", "ls")

    (videos / "broken.mp4").write_bytes(b"not a video" * 10)
    run = deployment_run(prefect_env, DEPLOYMENT, params | {"out": str(tmp_path / "again")})
    text = run.stdout + run.stderr
    assert "Failed" in text, text[-3000:]
    assert (tmp_path / "again" / "talk" / "segments.json").is_file()  # the others still finish
