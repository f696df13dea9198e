"""The AVSBench-semantic release read as binary AVS: data check, the palette, colour masks, and the same
content in both layouts giving the same GT masks and the same M_J."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_run import train_head

from flows.cli import main as cli
from pipeline.data import layout, semantic
from pipeline.data.clips import DataError, read_clips
from pipeline.data.images import load_clip_mask, load_frame
from pipeline.data.synth import SynthSpec, write_synthetic
from pipeline.encoders.gt_mask import Config as GtConfig
from pipeline.encoders.gt_mask import GtMaskEncoder
from pipeline.settings import ExtractConfig
from stages.evaluate import EvalConfig, evaluate
from stages.extract import extract

SPEC = SynthSpec(test_fraction=0.3)


def _check(root: Path, subset: str, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    rc = cli(["data", "check", "--root", str(root), "--subset", subset, "--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def v1m_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("semantic") / "avss"
    assert cli(["synth", "--out", str(root), "--subset", "v1m", "--videos", "6", "--seed", "3"]) == 0
    return root


@pytest.mark.slow
def test_synthetic_semantic_trees_pass_data_check(tmp_path, capsys):
    root = tmp_path / "avss"
    for subset in ("v1s", "v1m", "v2"):
        assert cli(["synth", "--out", str(root), "--subset", subset, "--videos", "6", "--seed", "1"]) == 0
    header = (root / "metadata.csv").read_text().splitlines()[0]
    assert header == "vid,uid,s_min,s_sec,a_obj,split,label"
    rc, v1s = _check(root, "v1s", capsys)
    assert rc == 0 and v1s["problems"] == []
    # v1s train: only frame 0 annotated; val/test every frame.
    assert v1s["splits"]["train"] == {"videos": 4, "frames": 20, "annotated_frames": 4}
    assert v1s["splits"]["val"] == {"videos": 1, "frames": 5, "annotated_frames": 5}
    rc, v2 = _check(root, "v2", capsys)
    assert rc == 0 and v2["splits"]["train"] == {"videos": 4, "frames": 40, "annotated_frames": 40}
    assert cli(["data", "check", "--root", str(root), "--subset", "v1m"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")
    clips = read_clips(root, "v1s", "train")
    assert [c.annotated for c in clips] == [(1,)] * 4 and clips[0].mask_paths[0].name == "0.png"
    assert clips[0].frame_paths[4].name == "4.jpg" and clips[0].category is not None
    assert layout.data_layout("v1s") == "avsbench-semantic" and layout.data_layout("ms3") == "avsbench-object"


@pytest.mark.slow
def test_v2_ten_frame_videos_extract_train_and_evaluate_both_ways(tmp_path):
    root = tmp_path / "data"
    write_synthetic(root, "v2", videos=4, seed=0, spec=SPEC)
    clips = read_clips(root, "v2", "test")
    assert clips and all(c.frames == tuple(range(1, 11)) and c.annotated == c.frames for c in clips)
    run = _store(tmp_path, root, "v2")
    best = train_head(run, tmp_path / "head")
    reports = {}
    for mode in ("cached", "end-to-end"):
        cfg = EvalConfig(
            checkpoint=best,
            root=root,
            subset="v2",
            store=run["store"] if mode == "cached" else None,
            mode=mode,
            device="cpu",
            out=tmp_path / mode,
            progress=False,
        )
        reports[mode] = evaluate(cfg)
    cached, e2e = reports["cached"], reports["end-to-end"]
    assert cached["frames"] == e2e["frames"] == 10 * len(clips)  # ten one-second segments and frames each
    assert cached["M_J"] == pytest.approx(e2e["M_J"], abs=1e-3)
    assert cached["data"]["layout"] == "avsbench-semantic" and cached["data"]["subset"] == "v2"


def test_missing_label2idx_is_refused(v1m_tree, tmp_path, capsys):
    root = tmp_path / "copy"
    _copy(v1m_tree, root)
    (root / "label2idx.json").unlink()
    rc, report = _check(root, "v1m", capsys)
    assert rc == 1
    assert [p["path"] for p in report["problems"]] == [str(root / "label2idx.json")]
    assert "not found" in report["problems"][0]["problem"]
    with pytest.raises(DataError, match=f"{root / 'label2idx.json'}: not found"):
        read_clips(root, "v1m", "test")
    (root / "label2idx.json").write_text('{"dog": 1}')
    with pytest.raises(DataError, match="label2idx.json: has no 'background' class"):
        read_clips(root, "v1m", "test")


def test_colour_outside_the_palette_is_named(v1m_tree, tmp_path, capsys):
    root = tmp_path / "copy"
    _copy(v1m_tree, root)
    mask = sorted((root / "v1m").rglob("labels_rgb/2.png"))[0]
    rgb = np.asarray(Image.open(mask).convert("RGB")).copy()
    rgb[:3, :3] = (1, 2, 3)
    Image.fromarray(rgb).save(mask)
    rc, report = _check(root, "v1m", capsys)
    assert rc == 1 and [p["path"] for p in report["problems"]] == [str(mask)]
    assert "RGB (1, 2, 3) (9 px)" in report["problems"][0]["problem"]


def test_missing_frame_is_named(v1m_tree, tmp_path, capsys):
    root = tmp_path / "copy"
    _copy(v1m_tree, root)
    frame = sorted((root / "v1m").rglob("frames/3.jpg"))[0]
    frame.unlink()
    rc, report = _check(root, "v1m", capsys)
    assert rc == 1
    paths = [p["path"] for p in report["problems"]]
    assert paths == [str(frame.parent), str(frame)]  # the count (4, expected 5), then the missing file
    assert "holds 4 frames, expected 5" in report["problems"][0]["problem"]


def test_palette_matches_hand_made_cases():
    pal = semantic.palette()
    assert pal.shape == (71, 3)
    expect = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 15: (192, 128, 128)}
    assert {i: tuple(pal[i].tolist()) for i in expect} == expect
    assert len({tuple(c) for c in pal.tolist()}) == 71


def test_a_non_black_background_is_honoured(v1m_tree, tmp_path, capsys):
    root = tmp_path / "copy"
    _copy(v1m_tree, root)
    before = {
        (c.id, k): load_clip_mask(c, k)
        for s in layout.SPLITS
        for c in read_clips(root, "v1m", s)
        for k in c.annotated
    }
    # Background becomes index 9 (an unused class colour); the old index 0 (black) is a class now.
    table = json.loads((root / "label2idx.json").read_text())
    table["background"], table["speech"] = 9, 0
    (root / "label2idx.json").write_text(json.dumps(table))
    new_bg = semantic.palette()[9]
    for mask in (root / "v1m").rglob("labels_rgb/*.png"):
        rgb = np.asarray(Image.open(mask).convert("RGB")).copy()
        rgb[(rgb == 0).all(axis=-1)] = new_bg
        Image.fromarray(rgb).save(mask)
    clips = [c for s in layout.SPLITS for c in read_clips(root, "v1m", s)]
    assert clips[0].mask_background == tuple(new_bg.tolist())
    after = {(c.id, k): load_clip_mask(c, k) for c in clips for k in c.annotated}
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[key], before[key]) for key in before)
    assert any(m.any() for m in after.values()) and not all(m.all() for m in after.values())
    assert _check(root, "v1m", capsys)[0] == 0


def _copy(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)


def _same_content_pair(tmp: Path, obj_subset: str, sem_subset: str) -> tuple[Path, Path]:
    """An object tree and a semantic tree of the same content; the object tree's PNG frames take the pixels
    the semantic tree's JPEGs decode to, so both give the same frames to the encoders."""
    obj, sem = tmp / "object", tmp / "semantic"
    write_synthetic(obj, obj_subset, videos=6, seed=5, spec=SPEC)
    write_synthetic(sem, sem_subset, videos=6, seed=5, spec=SPEC)
    for split in layout.SPLITS:
        for a, b in zip(read_clips(obj, obj_subset, split), read_clips(sem, sem_subset, split), strict=True):
            for pa, pb in zip(a.frame_paths, b.frame_paths, strict=True):
                Image.fromarray(load_frame(pb)).save(pa)
    return obj, sem


def _store(tmp: Path, root: Path, subset: str) -> dict:
    store = str(tmp / f"{subset}.zarr")
    extract(ExtractConfig(root=root, subset=subset, store=store, device="cpu"), progress=False)
    return {"root": root, "store": store, "subset": subset}


def test_v1s_train_store_rows_are_the_annotated_frames(tmp_path):
    from cache import SplitIndex

    write_synthetic(tmp_path, "v1s", videos=6, seed=5, spec=SPEC)
    clips = read_clips(tmp_path, "v1s", "train")
    index = SplitIndex.from_clips(clips)
    # one row per train video (its frame 1), as for S4
    assert len(clips) >= 2 and index.has_mask.all() and list(index.frame) == [1] * len(clips)


@pytest.mark.slow
@pytest.mark.parametrize(("obj_subset", "sem_subset"), [("ms3", "v1m"), ("s4", "v1s")])
def test_same_content_gives_the_same_masks_and_M_J(tmp_path, obj_subset, sem_subset):
    obj, sem = _same_content_pair(tmp_path, obj_subset, sem_subset)
    gt = GtMaskEncoder(GtConfig())
    n_masks = 0
    for split in layout.SPLITS:
        pairs = list(zip(read_clips(obj, obj_subset, split), read_clips(sem, sem_subset, split), strict=True))
        for a, b in pairs:
            assert a.mask_kind == "binary" and b.mask_kind == "colour" and a.annotated == b.annotated
            for k in a.annotated:
                ma, mb = load_clip_mask(a, k), load_clip_mask(b, k)
                assert np.array_equal(ma, mb), (a.id, k)
                assert np.array_equal(gt.preprocess(ma[None]), gt.preprocess(mb[None]))
                n_masks += 1
    assert n_masks == (30 if obj_subset == "ms3" else 18)  # s4 train (3 videos): frame 1 only
    runs = {s: _store(tmp_path, root, s) for s, root in ((obj_subset, obj), (sem_subset, sem))}
    head = train_head(runs[obj_subset], tmp_path / "head")
    reports = {
        s: evaluate(
            EvalConfig(
                checkpoint=head,
                root=run["root"],
                subset=s,
                store=run["store"],
                device="cpu",
                out=tmp_path / f"eval-{s}",
                progress=False,
                overlays=0,
                allow_other_subset=True,
            )
        )
        for s, run in runs.items()
    }
    assert reports[obj_subset]["frames"] == reports[sem_subset]["frames"] > 0
    assert reports[obj_subset]["M_J"] == reports[sem_subset]["M_J"]
    assert 0 < reports[sem_subset]["M_J"] < 1
