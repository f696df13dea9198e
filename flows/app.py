"""`av2t app`: a web page (Gradio, on 127.0.0.1 only) to try a head on a video.

Upload a video or pick one of --examples; the page shows the overlay video with its sound, the sounding-area
plot per output frame and a zip of the masks. "Audio" swaps what the head hears: the video's own sound, silence,
or another clip's audio, over the same frames (does the mask follow the sound?). The head is built once, at
start; each try runs `stages.segment.segment` into its own folder under --out. A bad file is the page's error
message (one line naming the problem), never a traceback.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from flows.settings import AppSettings
from pipeline.settings import VIDEO_SUFFIXES, SegmentConfig

OWN, SILENCE, OTHER = "the video's own sound", "silence", "another clip's audio"
TITLE = "av2t: which part of the video sounds?"


def _gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError(f"`av2t app` needs Gradio: {e}", name="gradio") from e
    return gr


def examples(folder: Path | None) -> list[str]:
    """The video files of the examples folder (sorted), as the page lists them."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(str(f) for f in folder.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)


class Tries:
    """Runs one try at a time on the head built at start (the model is not shared between threads)."""

    def __init__(self, s: AppSettings) -> None:
        from flows.heads import head_for
        from stages.segment import load_segmenter

        self.s = s
        head, weights = head_for(s.checkpoint, s.out, s.weights_dir, s.preset)
        base = SegmentConfig(
            videos=[s.out], checkpoint=head, out=s.out, device=s.device, weights_dir=weights, progress=False
        )
        self.base = base
        self.segmenter = load_segmenter(base)
        self.lock = threading.Lock()

    def run(self, video: str | None, picked: str | None, audio: str, other: str | None) -> dict[str, Any]:
        """Segment one video as the page asked; a VideoError / DataError for anything wrong with the input."""
        from pipeline.data.errors import DataError
        from pipeline.video.decode import probe
        from stages.segment import segment

        source = video or picked
        if not source:
            raise DataError("no video: upload one or pick an example")
        if audio == OTHER and not other:
            raise DataError("swap the audio: upload the clip whose audio to use")
        info = probe(source)
        seconds = info.duration or 0
        if seconds > self.s.max_seconds:
            raise DataError(
                f"{Path(source).name}: {seconds:.0f} s is longer than this page takes ({self.s.max_seconds:g} s)"
            )
        out = Path(self.s.out) / f"try-{uuid.uuid4().hex[:10]}"
        cfg = self.base.model_copy(
            update={
                "videos": [Path(source)],
                "out": out,
                "audio": "silence" if audio == SILENCE else "own",
                "audio_from": Path(other) if audio == OTHER else None,
            }
        )
        with self.lock:
            r = segment(cfg, self.segmenter)
        if r["failed"]:
            raise DataError(r["failed"][0]["error"])
        (result,) = r["done"]
        folder = Path(result["folder"])
        result["zip"] = shutil.make_archive(str(out / f"{result['name']}-masks"), "zip", folder / "masks")
        return result


def build(s: AppSettings, tries: Tries | None = None) -> Any:
    """The page (a gr.Blocks)."""
    gr = _gradio()
    import pandas as pd

    tries = tries or Tries(s)
    picks = examples(s.examples)

    def go(video: str | None, picked: str | None, audio: str, other: str | None):
        from pipeline.data.errors import DataError

        try:
            r = tries.run(video, picked, audio, other)
        except (DataError, ImportError, OSError) as e:
            raise gr.Error(" ".join(str(e).split()), print_exception=False) from None
        plot = pd.DataFrame(
            {
                "time (s)": [f["time"] for f in r["frames"]],
                "sounding area": [f["sounding_area"] for f in r["frames"]],
            }
        )
        head = r["head"]
        note = (
            f"**{Path(r['video']).name}**: {len(r['frames'])} frames over {r['seconds']:.1f} s, mean sounding area "
            f"{r['mean_sounding_area']:.3f}; audio: {r['audio']['note']}; head {head['name']} ({head['digest']}, "
            f"preset {head['preset']})" + "".join(f"\n\n⚠ {p}" for p in r["problems"])
        )
        return str(Path(r["folder"]) / "overlay.mp4"), plot, r["zip"], note

    with gr.Blocks(title="av2t segment") as page:
        gr.Markdown(f"# {TITLE}\nA head segments what sounds, one frame per second with that second's audio.")
        with gr.Row():
            with gr.Column():
                video = gr.File(label="video (mp4, webm, mkv, mov, ...)", type="filepath", elem_id="video-in")
                picked = gr.Dropdown(picks, label="or pick an example", value=None, visible=bool(picks))
                audio = gr.Radio(
                    [OWN, SILENCE, OTHER], value=OWN, label="audio the head hears", elem_id="audio"
                )
                other = gr.File(label="the other clip (its audio)", type="filepath", elem_id="other-in")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Video(label="overlay (with its sound)", elem_id="overlay", autoplay=False)
                plot = gr.LinePlot(
                    x="time (s)",
                    y="sounding area",
                    y_lim=[0, 1],
                    label="sounding area per frame",
                    elem_id="plot",
                )
                masks = gr.File(
                    label="masks (zip of 8-bit PNGs, the layout `av2t score` reads)", elem_id="masks"
                )
                note = gr.Markdown(elem_id="note")
        run.click(go, [video, picked, audio, other], [overlay, plot, masks, note])
    return page


def main(s: AppSettings) -> None:
    """Serve the page on 127.0.0.1 until interrupted."""
    page = build(s)
    print(f"av2t app: http://127.0.0.1:{s.port or 7860}/ (ctrl-C to stop)", flush=True)
    page.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1",
        server_port=s.port or None,
        share=False,
        inbrowser=False,
        show_error=True,
        allowed_paths=[str(Path(s.out).resolve()), *([str(s.examples.resolve())] if s.examples else [])],
    )
