"""The `segment-videos` flow: a folder of videos in, one result folder per video out, one task per video.

What the run page shows: the run named `segment-<folder>`, one `segment-video` task per file (named after it),
a progress artifact `segment-videos-progress` (videos ended), and at the end a table artifact `segment-videos`
(video, seconds, frames, mean sounding area, and the error of a video that failed). A failed video does not
stop the others; the run ends Failed when any failed, naming them. Tasks run on threads here or on a Dask
cluster (`task_runner='dask'`, as extract-features); each worker process builds the head once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed

from flows.params import flow_kwargs, model_params, settings
from flows.prefect_runtime import run_flow
from flows.runners import make_runner
from flows.settings import SegmentFlowSettings
from pipeline.settings import SegmentConfig

_built: dict[str, Any] = {}  # per worker process: the head built for a configuration
_lock = threading.Lock()


def segment_run_name(parameters: dict[str, Any] | None = None) -> str:
    """`segment-<folder of the videos>`."""
    from flows.run_page import run_param

    return f"segment-{Path(str(run_param(SegmentFlowSettings, 'videos', parameters))).name or 'videos'}"


def _segmenter(cfg: SegmentConfig) -> Any:
    """The head of cfg, built once per process (threads share it one at a time: see segment_video_task)."""
    from stages.segment import load_segmenter

    key = cfg.model_dump_json(
        include={"checkpoint", "device", "precision", "weights_dir", "batch_size", "preset"}
    )
    if key not in _built:
        _built[key] = load_segmenter(cfg)
    return _built[key]


@task(name="segment-video", task_run_name="{name}")
def segment_video_task(cfg: SegmentConfig, video: str, name: str) -> dict[str, Any]:
    """Segment one video into out/<name>/ (masks, overlay.mp4, segments.json); a bad file is its error row."""
    from stages.segment import segment

    with _lock:  # one forward at a time per process: the model is not shared between threads
        r = segment(
            cfg.model_copy(update={"videos": [Path(video)]}), _segmenter(cfg), names={Path(video): name}
        )
    row: dict[str, Any] = {
        "video": Path(video).name,
        "seconds": None,
        "frames": 0,
        "mean sounding area": None,
    }
    if r["failed"]:
        return row | {"error": r["failed"][0]["error"]}
    d = r["done"][0]
    problems = "; ".join(d["problems"])
    return row | {
        "seconds": round(d["seconds"], 2),
        "frames": len(d["frames"]),
        "mean sounding area": round(d["mean_sounding_area"], 4),
        "error": problems or None,
    }


@flow(name="segment-videos-tasks")
def _run_videos(cfg: SegmentConfig, videos: list[str], names: list[str]) -> list[dict[str, Any]]:
    """One task per video on this flow's task runner, a progress artifact as they end; rows in video order."""
    futures = [segment_video_task.submit(cfg, v, n) for v, n in zip(videos, names, strict=True)]
    bar = create_progress_artifact(0.0, key="segment-videos-progress", description=f"0/{len(videos)} videos")
    for ended, _ in enumerate(as_completed(futures), start=1):
        update_progress_artifact(
            bar, 100.0 * ended / len(videos), description=f"{ended}/{len(videos)} videos"
        )
    return [f.result() for f in futures]


@flow(name="segment-videos", flow_run_name=segment_run_name)
@model_params(SegmentFlowSettings)
def segment_videos(**params: Any) -> list[dict[str, Any]]:
    """Segment a folder of videos with a head: masks, overlay.mp4 and segments.json per video."""
    from flows.heads import head_for
    from stages.segment import list_videos, output_names

    log = get_run_logger()
    s = settings(SegmentFlowSettings, params)
    head, weights = head_for(s.checkpoint, s.out, s.weights_dir, s.preset)
    preset = s.preset if head == s.checkpoint else None
    cfg = s.stage().model_copy(update={"checkpoint": head, "weights_dir": weights, "preset": preset})
    videos = list_videos([s.videos])
    names = output_names(videos)
    log.info(f"{len(videos)} video(s) from {s.videos} into {s.out}, runner {s.task_runner}")
    from prefect.runtime import flow_run

    rows = _run_videos.with_options(task_runner=make_runner(s), flow_run_name=f"{flow_run.name}-tasks")(
        cfg, [str(v) for v in videos], [names[v] for v in videos]
    )
    failed = [r for r in rows if not r["frames"]]
    create_table_artifact(
        key="segment-videos",
        table=rows,
        description=f"{len(rows) - len(failed)} of {len(rows)} videos of {s.videos} segmented into {s.out} "
        f"(head {Path(str(s.checkpoint)).name}, {'AVSBench 1 fps' if s.fps is None else f'{s.fps:g} fps'})",
    )
    for r in rows:
        if r["error"]:
            log.warning(f"{r['video']}: {r['error']}")
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(rows)} videos failed: " + "; ".join(r["error"] for r in failed)
        )
    return rows


def run(s: SegmentFlowSettings) -> list[dict[str, Any]]:
    """The flow here (a temporary Prefect server if none is set)."""
    return run_flow("segment", lambda: segment_videos(**flow_kwargs(segment_videos.fn, s)))
