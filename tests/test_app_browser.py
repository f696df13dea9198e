"""`av2t app` in a real headless browser: the page loads, an uploaded mp4 gives an overlay that plays (with its
sound track), a swapped-audio try works, and a bad file gives the page's error message, not a traceback.

Chromium is Debian's (`apt-get install chromium`, scripts/setup.sh installs it as root), driven by Playwright
through `executable_path` (Playwright's own browser download needs the internet). Skipped, saying why, where
Gradio, Playwright or a Chromium binary is missing. AV2T_SCREENSHOTS=<folder> keeps the page's screenshot
there (docs/app.png is made so).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from fractions import Fraction
from pathlib import Path

import pytest

pytest.importorskip("av", reason="the page segments with PyAV (pip install av)")
pytest.importorskip("gradio", reason="the page needs Gradio: pip install 'av2t[app]'")
pytest.importorskip(
    "playwright", reason="the browser test needs Playwright: pip install 'av2t[browser-tests]'"
)

from video_files import moving_frames, tone, write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    """A Chromium binary: $AV2T_CHROMIUM, else the first on PATH."""
    given = os.environ.get("AV2T_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"av2t app ended with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"av2t app did not answer at {url}:\n{log.read_text()[-3000:]}")


def upload(page, box: str, path: Path, seen: list[str], log: Path) -> None:
    """Put a file in a Gradio File box and wait until the page lists its name.

    A second try covers an input set before the page's handlers were ready; a failure says what the page, its
    console and the app printed, since CI runs leave nothing else to read.
    """
    # Visible and in this box: a hidden element with the name (an upload's progress line) must not be the one
    # waited for.
    shown = page.locator(box).get_by_text(path.name).filter(visible=True).first
    for timeout in (60_000, 120_000):
        try:
            if not shown.is_visible():  # a late first try needs no second
                page.locator(f"{box} input[type=file]").set_input_files(str(path), timeout=timeout)
            shown.wait_for(timeout=timeout)
            return
        except Exception as e:  # playwright's TimeoutError; the second try or the message below
            err = e
    body = page.locator("body").inner_text()[-2000:]
    raise AssertionError(
        f"{path.name} never showed in {box}: {err}\npage:\n{body}\nbrowser:\n"
        + "\n".join(seen[-40:])
        + f"\napp log:\n{log.read_text()[-3000:]}"
    )


PLAY = """async () => {
  const v = document.querySelector('#overlay video');
  v.muted = true;  // autoplay rules: a muted video may play without a click
  await v.play();
  await new Promise(r => setTimeout(r, 1500));
  return {time: v.currentTime, duration: v.duration, error: v.error && v.error.code, width: v.videoWidth};
}"""


@pytest.mark.slow
def test_the_page_in_a_headless_browser(s4_run, tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip(
            "no Chromium binary (looked for $AV2T_CHROMIUM, "
            + ", ".join(BROWSERS)
            + "): apt-get install chromium "
            "(scripts/setup.sh does it as root)"
        )
    from playwright.sync_api import sync_playwright

    clip = write_video(
        tmp_path / "clip.mp4",
        moving_frames(90, 120, 200),
        fps=Fraction(30000, 1001),
        audio=tone(3.0, 44100, 2),
        rate=44100,
    )
    other = write_video(tmp_path / "other.webm", moving_frames(16, 64, 64), fps=8, video_codec="libvpx-vp9",
                        audio=tone(2.0, 48000, hz=880), rate=48000, audio_codec="libopus")  # fmt: skip
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video\n" * 100)
    port, log = free_port(), tmp_path / "app.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env["GRADIO_TEMP_DIR"] = str(tmp_path / "gradio")  # uploads of this run only, not a shared /tmp/gradio
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "app",
        "--checkpoint",
        str(s4_run["checkpoint"]),
        "--port",
        str(port),
    ]
    cmd += ["--device", "cpu", "--out", str(tmp_path / "app")]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_up(url, proc, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            seen: list[str] = []
            page.on("console", lambda m: seen.append(f"console {m.type}: {m.text}"))
            page.on("requestfailed", lambda r: seen.append(f"failed {r.method} {r.url}: {r.failure}"))
            page.on(
                "response",
                lambda r: r.status >= 400 and seen.append(f"{r.status} {r.request.method} {r.url}"),
            )
            page.goto(url)
            page.get_by_text("which part of the video sounds").wait_for(timeout=60_000)
            page.wait_for_load_state("networkidle")
            # a synthetic mp4 in: the overlay plays
            upload(page, "#video-in", clip, seen, log)
            page.locator("#segment").click()
            page.locator("#overlay video").wait_for(timeout=180_000)
            page.get_by_text("mean sounding area").wait_for(timeout=30_000)
            played = page.evaluate(PLAY)
            assert played["error"] is None and played["time"] > 0.5 and played["width"] == 200, played
            assert abs(played["duration"] - 3.0) < 0.6, played
            assert "3 frames" in page.locator("#note").inner_text()
            shots = os.environ.get("AV2T_SCREENSHOTS")
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            if shots:
                Path(shots).mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp_path / "app.png", Path(shots) / "app.png")
            # swap the audio: the same frames with another clip's sound
            page.get_by_label("another clip's audio").check()
            upload(page, "#other-in", other, seen, log)
            page.locator("#segment").click()
            page.get_by_text("swapped: the audio of").wait_for(timeout=180_000)
            # a bad file: the page's one-line error, no traceback
            page.reload()
            page.get_by_text("which part of the video sounds").wait_for(timeout=60_000)
            page.wait_for_load_state("networkidle")
            upload(page, "#video-in", bad, seen, log)
            page.locator("#segment").click()
            page.get_by_text("not a video FFmpeg can read").first.wait_for(timeout=60_000)
            body = page.locator("body").inner_text()
            assert "Traceback" not in body and "Error" in body
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert "Traceback" not in log.read_text()
