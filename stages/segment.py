"""The segment stage: a head on video files of any kind, one output folder per video.

A thin stage over pipeline.video: the head is built once (pipeline.evaluation.end_to_end.end_to_end_model, the
end-to-end evaluation's builder), then each video is segmented on its own; a bad video is recorded with its
one-line reason and the others still run. Per video, under out/<name>/: masks/<name>/<name>_<k>.png (the layout
`av2t score` reads), overlay.mp4 and segments.json.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.checkpoints import CheckpointError
from pipeline.data.errors import DataError
from pipeline.data.names import name_problem
from pipeline.devices import resolve_device
from pipeline.evaluation.end_to_end import end_to_end_model
from pipeline.model.head_checkpoint import read_head
from pipeline.model.precision import resolve_precision
from pipeline.settings import VIDEO_SUFFIXES, SegmentConfig
from pipeline.video.errors import VideoError
from pipeline.video.pairing import Pairing
from pipeline.video.segment import Segmenter, plan_audio, segment_video

log = logging.getLogger("av2t.segment")


def list_videos(paths: list[Path]) -> list[Path]:
    """The files given, and the video files (by suffix, sorted) of the folders given; a folder with none is refused."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
            if not inside:
                raise DataError(f"{p}: no video files in this folder (looked for {' '.join(VIDEO_SUFFIXES)})")
            found.extend(inside)
        else:
            found.append(p)  # a missing or unreadable file fails on its own, the others still run
    return list(dict.fromkeys(found))


def output_names(videos: list[Path]) -> dict[Path, str]:
    """A distinct plain name per video: its stem, else its file name, else a numbered stem."""
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for v in videos:
        stem = v.stem if name_problem(v.stem) is None else f"video-{len(names) + 1}"
        for cand in (stem, v.name.replace(".", "-"), *(f"{stem}-{i}" for i in range(2, len(videos) + 2))):
            if cand not in taken and name_problem(cand) is None:
                break
        names[v] = cand
        taken.add(cand)
    return names


def load_segmenter(cfg: SegmentConfig) -> tuple[Segmenter, dict[str, Any]]:
    """The head on its preset's encoders, and what segments.json records about it."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ck = read_head(cfg.checkpoint)
    if cfg.preset is not None and cfg.preset != ck.preset:
        raise CheckpointError(
            f"{cfg.checkpoint}: the head was trained with preset {ck.preset!r}, not {cfg.preset!r}; drop --preset "
            "or give that head's preset"
        )
    device = resolve_device(cfg.device)
    model, encoders = end_to_end_model(ck, cfg.weights_dir, device, cfg.precision)
    meta = {
        "head": {
            "checkpoint": str(cfg.checkpoint),
            "name": ck.data.get("name"),
            "digest": ck.digest(),
            "preset": ck.preset,
            "trained_subset": ck.subset,
            "source": ck.data.get("source"),
        },
        "device": str(device),
        "precision": resolve_precision(cfg.precision, device),
        "settings": cfg.model_dump(mode="json", exclude={"videos", "progress"}),
    }
    return Segmenter(model, encoders, cfg.batch_size), meta


def segment(
    cfg: SegmentConfig,
    segmenter: tuple[Segmenter, dict[str, Any]] | None = None,
    on_video: Callable[[int, int], None] | None = None,
    names: dict[Path, str] | None = None,
) -> dict[str, Any]:
    """Segment every video of cfg.videos; returns {"done": [segments.json of each], "failed": [{video, error}]}.

    segmenter: one built before (load_segmenter), e.g. by a page that keeps it; on_video(done, total) after each;
    names: the output folder name of each video (default: output_names of this list).
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    videos = list_videos(cfg.videos)
    seg, meta = segmenter or load_segmenter(cfg)
    pairing = Pairing(cfg.fps)
    names = {**output_names(videos), **(names or {})}
    done, failed = [], []
    for i, video in enumerate(videos):
        folder = Path(cfg.out) / names[video]
        existed = folder.exists()
        bar = tqdm(desc=names[video], unit="frame", disable=not cfg.progress, leave=False)

        def tick(n: int, expected: int | None, bar: Any = bar) -> None:
            bar.total = max(expected or 0, n) or None
            bar.update(n - bar.n)

        try:
            audio = plan_audio(video, cfg.audio, cfg.audio_from)
            result = segment_video(seg, video, folder, names[video], pairing, audio, cfg.overlay, meta, tick)
            done.append(result | {"folder": str(folder)})
            for p in result["problems"]:
                log.warning(f"{video}: {p}")
        except (VideoError, DataError) as e:
            failed.append({"video": str(video), "error": str(e)})
            if not existed:  # nothing half-written is left for a video that failed
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            bar.close()
        if on_video is not None:
            on_video(i + 1, len(videos))
    return {
        "done": done,
        "failed": failed,
        "out": str(cfg.out),
        "seconds": round(time.perf_counter() - t0, 3),
    }
