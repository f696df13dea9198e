"""Synthetic trees in the AVSBench-semantic release's layout (JPEG frames, palette-colour masks, metadata.csv,
label2idx.json): the release's `write_synthetic`, on videos planned by pipeline.data.synth."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from pipeline.data import layout
from pipeline.data.layout import WAV_RATE, Subset
from pipeline.data.releases import subset_info
from pipeline.data.semantic import (
    BACKGROUND,
    META_COLUMNS,
    SUBSETS,
    audio_path,
    frame_path,
    label2idx_path,
    mask_path,
    meta_csv,
    palette,
)
from pipeline.data.synth import (
    SynthSpec,
    VideoPlan,
    read_manifest,
    render_video_labels,
    synth_audio,
    write_png,
)

JPEG_QUALITY = 95  # the release's frames are JPEGs


def label_table(spec: SynthSpec) -> dict[str, int]:
    """label2idx.json of a synthetic tree: background 0 (black), then the classes in order."""
    return {BACKGROUND: 0, **{c.name: i + 1 for i, c in enumerate(spec.classes)}}


def semantic_uid(plan: VideoPlan) -> str:
    """The release's folder name: the video id, then start and end in ms."""
    return f"{plan.name}_0_{len(plan.sounding) * 1000}"


def _write_video(
    root: Path, subset: Subset, plan: VideoPlan, seed: int, spec: SynthSpec, table: dict[str, int]
) -> None:
    """JPEG frames, colour masks of the annotated frames (palette colour per class) and audio.wav."""
    rng = np.random.default_rng([seed, subset_info(subset).synth_stream, plan.index])
    uid = semantic_uid(plan)
    frames, labels = render_video_labels(rng, plan, spec)
    colours = palette()
    lut = colours[[table[c.name] for c in spec.classes]]  # class index -> RGB
    background = colours[table[BACKGROUND]]
    annotated = layout.annotated_frames(subset, plan.split)
    for k in range(1, len(frames) + 1):
        path = frame_path(root, subset, uid, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frames[k - 1]).save(path, format="JPEG", quality=JPEG_QUALITY)
        if k in annotated:
            lab = labels[k - 1]
            write_png(mask_path(root, subset, uid, k), np.where(lab[..., None] >= 0, lut[lab], background))
    wav = audio_path(root, subset, uid)
    sf.write(str(wav), synth_audio(rng, plan, spec), WAV_RATE, subtype="PCM_16", format="WAV")


def _metadata_rows(root: Path) -> list[list[str]]:
    """Data rows of an existing metadata.csv (in its columns' order), [] when there is none."""
    path = meta_csv(root)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [h.strip() for h in rows[0]] != list(META_COLUMNS):
        raise FileExistsError(f"{path}: exists with other columns than {META_COLUMNS}; refusing to edit")
    return [r for r in rows[1:] if any(c.strip() for c in r)]


def audible_objects(plan: VideoPlan, subset: Subset, spec: SynthSpec) -> str:
    """a_obj of a video: v1s, its S4 category; v1m / v2, the object names of the classes that sound in it, '_'-joined
    in object order (as the release lists MS3 objects, `man_guitar`)."""
    if subset_info(subset).single_source:
        return spec.classes[plan.objects[0]].name
    heard = {j for s in plan.sounding for j in s} or set(range(len(plan.objects)))
    names = [spec.classes[plan.objects[j]] for j in sorted(heard)]
    return "_".join(dict.fromkeys(c.object_name or c.name for c in names))


def _write_metadata(root: Path, subset: Subset, plans: list[VideoPlan], spec: SynthSpec) -> None:
    """metadata.csv: the other subsets' rows kept, this subset's replaced."""
    label = META_COLUMNS.index("label")
    rows = [r for r in _metadata_rows(root) if r[label] != subset]
    for p in plans:
        rows.append([p.name, semantic_uid(p), "0", "0", audible_objects(p, subset, spec), p.split, subset])
    with meta_csv(root).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(META_COLUMNS)
        w.writerows(rows)


def _clear_subset(root: Path, subset: Subset) -> None:
    """Remove a previous synthetic copy of this subset; refuse to touch a release we did not write."""
    label = META_COLUMNS.index("label")
    folder = root / subset
    ours = subset in read_manifest(root)
    if not ours and (folder.exists() or any(r[label] == subset for r in _metadata_rows(root))):
        raise FileExistsError(f"{folder}: exists and is not a synthetic {subset} tree; refusing to overwrite")
    labels = label2idx_path(root)
    if labels.exists() and not any(s in read_manifest(root) for s in SUBSETS):
        raise FileExistsError(f"{labels}: exists and was not written by av2t synth; refusing to overwrite")
    if folder.exists():
        shutil.rmtree(folder)


def write_semantic_videos(
    root: Path, subset: Subset, plans: list[VideoPlan], seed: int, spec: SynthSpec
) -> None:
    """The subset in the semantic release's layout, with label2idx.json."""
    _clear_subset(root, subset)
    table = label_table(spec)
    label2idx_path(root).write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    for plan in plans:
        _write_video(root, subset, plan, seed, spec, table)
    _write_metadata(root, subset, plans, spec)
