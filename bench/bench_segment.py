"""Peak memory of `av2t segment` on a long 1080p video (tiny preset, CPU): bounded whatever the length.

Run: python bench/bench_segment.py [--minutes 10] [--height 1080] [--fps 25] [--limit-gib 2] [--threads 2]
Writes the video itself (H.264 1080p, a moving square on noise, a stereo 44.1 kHz tone, AAC), a random-weight
tiny head, then runs `python -m flows.cli segment` in a child process and reads its peak resident memory
(getrusage of the children: the generator's memory is not counted). Prints minutes, frames out, wall seconds,
peak RSS; exits 1 above --limit-gib. The goal (issue 26): under 2 GiB for 10 minutes of 1080p.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/bench_segment.py`: import from the repo root, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import common

REPO = Path(__file__).resolve().parents[1]


def random_head(path: Path) -> Path:
    """A tiny-preset head with its initial weights (memory does not depend on training)."""
    from pipeline.encoders.registry import get_encoder
    from pipeline.model.build import build_model, encoder_widths
    from pipeline.model.config import head_config
    from pipeline.model.head_checkpoint import head_payload, save_head

    encs = {n: get_encoder(n, "tiny", None, "cpu") for n in ("clip", "clap")}
    model = build_model(head_config("tiny"), "tiny", **encoder_widths(encs), device="cpu")
    return save_head(head_payload(model, name="bench-random", preset="tiny", subset=None, features={}), path)


def long_video(path: Path, minutes: float, height: int, fps: int) -> Path:
    """minutes of H.264 at height (16:9) and fps, stereo 44.1 kHz AAC; written frame by frame (bounded memory)."""
    import av
    import numpy as np

    width = (height * 16 // 9) // 2 * 2
    n = int(minutes * 60 * fps)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    side = height // 4
    rate = 44100
    with av.open(str(path), mode="w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"preset": "ultrafast", "crf": "28"}
        a = out.add_stream("aac", rate=rate, layout="stereo")
        t_audio = 0
        for i in range(n):
            img = base.copy()
            x, y = (i * 9) % (width - side), (i * 4) % (height - side)
            img[y : y + side, x : x + side] = (230, 200, 40)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in v.encode(f):
                out.mux(p)
            while t_audio < (i + 1) * rate // fps:  # the audio kept level with the video
                t = (t_audio + np.arange(1024)) / rate
                tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
                af = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                af.rate, af.pts = rate, t_audio
                for p in a.encode(af):
                    out.mux(p)
                t_audio += 1024
        for s in (v, a):
            for p in s.encode():
                out.mux(p)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__, threads=2)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the generated video")
    ap.add_argument("--height", type=int, default=1080, help="frame height (16:9)")
    ap.add_argument("--fps", type=int, default=25, help="frame rate of the generated video")
    ap.add_argument("--limit-gib", type=float, default=2.0, help="peak RSS allowed (exit 1 above)")
    a = common.parse(ap, argv)
    with common.Figures(a.json) as out, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        video = long_video(tmp / "long.mp4", a.minutes, a.height, a.fps)
        out.add("generate_seconds", round(time.perf_counter() - t, 1))
        head = random_head(tmp / "head.pt")
        cmd = [sys.executable, "-m", "flows.cli", "segment", str(video), "--checkpoint", str(head)]
        cmd += ["--out", str(tmp / "out"), "--device", "cpu", "--threads", str(a.threads or 0)]
        t = time.perf_counter()
        run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return common.exit_code(False, f"av2t segment exited {run.returncode}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        rows = [
            {
                "minutes": a.minutes,
                "size": f"{a.height * 16 // 9 // 2 * 2}x{a.height}",
                "fps in": a.fps,
                "frames out": int(a.minutes * 60),
                "wall s": round(wall, 1),
                "peak RSS GiB": round(peak / 2**30, 3),
                "video MiB": round(video.stat().st_size / 2**20, 1),
            }
        ]
        out.table("segment", rows, fmt=".3f")
        ok = out.add("ok", peak / 2**30 < a.limit_gib)
    return common.exit_code(ok, f"peak RSS {peak / 2**30:.2f} GiB >= {a.limit_gib} GiB")


if __name__ == "__main__":
    sys.exit(main())
