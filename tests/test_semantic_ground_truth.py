"""AVSBench-semantic ground truth at the protocol's size, as the official AVSS loader reads it (the colour PNG as
PIL RGB, PIL NEAREST to 224 x 224, then every non-background colour), on frames and masks of several sizes;
`evaluate --save-masks` then `score` round-trips on every release; old stores are refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from PIL import Image

from cache import FeatureStore
from pipeline.data import semantic
from pipeline.data.clips import read_clips
from pipeline.data.images import load_colour_mask, protocol_mask
from pipeline.data.synth import SynthSpec, write_synthetic
from pipeline.encoders.gt_mask import Config as GtConfig
from pipeline.encoders.gt_mask import GtMaskEncoder, StaleGroundTruth
from pipeline.scoring import score_folder
from pipeline.settings import ExtractConfig
from stages.evaluate import EvalConfig, evaluate
from stages.extract import extract

SPEC = SynthSpec(test_fraction=0.4)
# (width, height) of the real release's odd frames: landscape, portrait, and sizes 224 does not divide.
SIZES = [(480, 360), (320, 256), (200, 300), (637, 355)]


def reference_gt(path: Path, background: tuple[int, int, int]) -> np.ndarray:
    """Our own statement of the AVSS rule: RGB, PIL NEAREST to 224 x 224, foreground = not the background."""
    rgb = Image.open(path).convert("RGB").resize((224, 224), resample=Image.Resampling.NEAREST)
    return np.any(np.asarray(rgb) != np.array(background, np.uint8), axis=2)


def torch_nearest(mask: np.ndarray) -> np.ndarray:
    """What av2t did before: torch's nearest on the native-size binary mask."""
    x = torch.from_numpy(mask.astype(np.uint8))[None, None].float()
    return F.interpolate(x, size=(224, 224), mode="nearest")[0, 0].numpy() > 0


def resize_tree(root: Path, subset: str, seed: int = 0) -> int:
    """Give every val/test clip its own native size: frames bilinear, colour masks redrawn there with fine
    stripes of the palette colours (so the sampling grid matters). Returns the masks rewritten."""
    rng = np.random.default_rng(seed)
    colours = semantic.palette()[[1, 5, 9]]
    n = 0
    for split in ("val", "test"):
        for i, clip in enumerate(read_clips(root, subset, split)):
            w, h = SIZES[i % len(SIZES)]
            for p in clip.frame_paths:
                Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR).save(p, quality=95)
            for p in clip.mask_paths:
                if p is None:
                    continue
                # the synthetic object scaled up, plus 1-px stripes and noise that a grid shift changes
                base = np.asarray(Image.open(p).convert("RGB").resize((w, h), Image.NEAREST)).copy()
                ys, xs = np.mgrid[0:h, 0:w]
                stripe = ((xs + ys * 3) % 7 == 0) & (rng.random((h, w)) < 0.7)
                base[stripe] = colours[rng.integers(0, len(colours), stripe.sum())]
                Image.fromarray(base).save(p)
                n += 1
    return n


@pytest.fixture(scope="module")
def v2_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("v2-sizes")
    write_synthetic(root, "v2", videos=4, seed=2, spec=SPEC)
    assert resize_tree(root, "v2") > 0
    return root


def test_protocol_mask_is_the_avss_loaders_mask_on_every_size(v2_tree):
    background = semantic.background_colour(v2_tree)
    differ = 0
    sizes = set()
    for split in ("val", "test"):
        for clip in read_clips(v2_tree, "v2", split):
            for k in clip.annotated:
                path = clip.mask_paths[k - 1]
                sizes.add(Image.open(path).size)
                want = reference_gt(path, background)
                got = protocol_mask(clip, k)
                assert got.shape == (224, 224) and np.array_equal(got, want), (clip.id, k)
                old = torch_nearest(load_colour_mask(path, background))
                differ += not np.array_equal(old, want)
    assert len(sizes) >= 2
    assert differ > 0  # the old torch resize picks other pixels: the test can tell the two apart


def test_cached_ground_truth_equals_the_official_loaders(v2_tree, tmp_path):
    store = str(tmp_path / "gt.zarr")
    extract(
        ExtractConfig(root=v2_tree, subset="v2", store=store, encoders=["gt"], device="cpu", splits=["test"]),
        progress=False,
    )
    group = FeatureStore(store, mode="r").split("v2", "test")
    gt = group.encoder("gt")
    assert gt.provenance["preprocessing"]["foreground"] == "colour != background"
    masks = np.asarray(gt.array("mask")[:])
    index = group.index
    background = semantic.background_colour(v2_tree)
    clips = {c.id: c for c in read_clips(v2_tree, "v2", "test")}
    for row, (video, k) in enumerate(zip(index.video, index.frame, strict=True)):
        want = reference_gt(clips[video].mask_paths[int(k) - 1], background)
        assert np.array_equal(masks[row].astype(bool), want), (video, k)


def test_v1_ground_truth_keeps_its_fingerprint():
    enc = GtMaskEncoder(GtConfig())
    # What every v1 store was fingerprinted with: unchanged, so those stores keep working.
    assert enc.config_dict() == {"size": 224}
    assert enc.preprocessing_dict() == {"foreground": "pixel > 0 after 'L'", "resize": "nearest"}
    colour = GtMaskEncoder(GtConfig(masks="colour"))
    assert colour.config_dict() == {"size": 224} and colour.preprocessing_dict() != enc.preprocessing_dict()


@pytest.mark.slow
@pytest.mark.parametrize("subset", ["v1s", "v1m", "v2"])
def test_save_masks_then_score_round_trips(subset, s4_run, tmp_path):
    root = tmp_path / "data"
    write_synthetic(root, subset, videos=4, seed=3, spec=SPEC)
    resize_tree(root, subset, seed=1)
    cfg = EvalConfig(
        checkpoint=s4_run["checkpoint"],
        root=root,
        subset=subset,
        mode="end-to-end",
        device="cpu",
        out=tmp_path / "eval",
        progress=False,
        overlays=0,
        save_masks=True,
        allow_other_subset=True,
    )
    report = evaluate(cfg)
    scored = score_folder(tmp_path / "eval" / "masks", root, subset, "test")
    assert scored["frames"] == report["frames"] > 0
    assert scored["M_J"] == pytest.approx(report["M_J"], abs=1e-6)
    assert scored["M_F"] == pytest.approx(report["M_F"], abs=1e-6)
    assert scored["scored_at"].startswith("224x224") and scored["resized_to_protocol"] == 0
    if subset == "v2":
        # The same predictions at the GT masks' own sizes are accepted, resized to 224 and said so.
        native = tmp_path / "native"
        for png in (tmp_path / "eval" / "masks").rglob("*.png"):
            clip_id, k = png.parent.name, int(png.stem.rsplit("_", 1)[1])
            clip = next(c for c in read_clips(root, subset, "test") if c.id == clip_id)
            size = Image.open(clip.mask_paths[k - 1]).size
            (native / clip_id).mkdir(parents=True, exist_ok=True)
            Image.open(png).resize(size, Image.NEAREST).save(native / clip_id / png.name)
        again = score_folder(native, root, subset, "test")
        assert again["resized_to_protocol"] == again["frames"] == report["frames"]
        assert 0 <= again["M_J"] <= 1


def test_an_old_semantic_store_names_the_re_extraction(v2_tree, tmp_path):
    from stages.train import open_features

    store = str(tmp_path / "old.zarr")
    extract(
        ExtractConfig(root=v2_tree, subset="v2", store=store, encoders=["gt"], device="cpu", splits=["test"]),
        progress=False,
    )
    # Rewrite the gt group's provenance as av2t wrote it before the AVSS rule.
    gt = FeatureStore(store, mode="r").split("v2", "test").encoder("gt")
    node = zarr.open_group(store, mode="r+", path=gt.group.path)
    prov = json.loads(json.dumps(node.attrs["provenance"]))
    prov["preprocessing"] = {"foreground": "pixel > 0 after 'L'", "resize": "nearest"}
    node.attrs["provenance"] = prov

    from pipeline.settings import TrainConfig

    cfg = TrainConfig(store=store, subset="v2", out=tmp_path / "head", device="cpu")
    with pytest.raises(StaleGroundTruth, match=r"re-extract it.*av2t extract .*--subset v2 --encoders gt"):
        open_features(cfg, "test", {})
