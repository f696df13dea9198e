"""The negative-audio robustness suite: FPR as AVSBench-Robust defines it, cached == end to end, stored rows."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cache import StoreError
from cache.negatives import read_negative_clap
from flows.cli import build_parser
from pipeline.data.clips import read_clips
from pipeline.encoders.registry import get_encoder
from pipeline.evaluation import VideoOutput, summarize
from pipeline.evaluation.compare import compare
from pipeline.evaluation.evaluators import REAL
from pipeline.evaluation.negative_audio import noise_segments, segment_samples
from pipeline.evaluation.robustness import CATEGORY_TABLE, PLOT, Robustness
from pipeline.negatives import (
    COMBINED_FORMULA,
    CONDITIONS,
    category_group,
    combined_score,
    false_positive_rate,
    offscreen_partners,
    offscreen_rank,
    sounds,
)
from pipeline.settings import ExtractConfig
from stages.evaluate import EvalConfig, evaluate
from stages.extract import extract

H = W = 8


def _video(name: str, category: str, gt: torch.Tensor, logits: dict[str, torch.Tensor]) -> VideoOutput:
    return VideoOutput(name, category, list(range(1, len(gt) + 1)), gt, logits)


def test_fpr_is_avsbench_robusts_definition_through_the_evaluator():
    gt = torch.zeros(2, H, W)
    gt[:, :4] = 1
    real = torch.where(gt > 0, 5.0, -5.0)  # perfect on the positives: M_J 1
    half = torch.full((2, H, W), -3.0)
    half[:, :, : W // 2] = 3.0
    a = {
        REAL: real,
        "silence": torch.full((2, H, W), -4.0),
        "noise": torch.full((2, H, W), 4.0),
        "offscreen": half,
    }
    # float32 sigmoid(0) and sigmoid(1e-9) are exactly 0.5: background, as the official `> 0.5` counts them
    assert torch.sigmoid(torch.tensor(1e-9, dtype=torch.float32)).item() == 0.5
    b = {
        REAL: real,
        "silence": torch.zeros(2, H, W),
        "noise": torch.full((2, H, W), 1e-9),
        "offscreen": torch.full((2, H, W), 1e-4),  # sigmoid just above 0.5: foreground
    }
    ev = Robustness(seed=3, partners={"a": "b", "b": "a"})
    ev.process(_video("a", "dog", gt, a))
    ev.process(_video("b", "guitar", gt, b))
    result = ev.evaluate()
    r = result["robustness"]
    assert r["M_J"] == pytest.approx(1.0)
    assert r["FPR"] == pytest.approx({"silence": 0.0, "noise": 0.5, "offscreen": 0.75})
    for c in CONDITIONS:  # the shared definition on the same frames
        assert r["FPR"][c] == pytest.approx(false_positive_rate(torch.cat([a[c], b[c]]).numpy()))
        assert r["combined"][c] == pytest.approx(combined_score(1.0, r["FPR"][c]))
    assert r["FPR_all"] == pytest.approx(1.25 / 3)
    assert r["negative_frames"] == {c: 4 for c in CONDITIONS} and r["seed"] == 3
    assert r["COMBINED_FORMULA"] == COMBINED_FORMULA
    assert [(p["video"], p["partner"]) for p in r["partners"]] == [("a", "b"), ("b", "a")]
    cats = ev.category_table().set_index("category")
    assert cats.loc["dog", "FPR_noise"] == 1.0 and cats.loc["guitar", "FPR_noise"] == 0.0
    assert cats.loc["dog", "group"] == "animal" and cats.loc["guitar", "group"] == "music"
    assert cats.loc["guitar", "FPR"] == pytest.approx(1 / 3)
    rows = {row.key: row for row in summarize([ev]).rows}
    assert not rows["robustness.FPR.noise"].higher_is_better and rows["robustness.FPR.noise"].compare


def test_nightly_flags_an_fpr_rise_and_not_a_fall():
    ev = Robustness(partners={"a": "a"})
    gt = torch.ones(1, H, W)
    ev.process(_video("a", "dog", gt, {v: torch.full((1, H, W), 2.0) for v in (REAL, *CONDITIONS)}))
    evaluation = summarize([ev])
    now = {**evaluation.fields, "score_rows": [row.to_json() for row in evaluation.rows]}
    worse_before = copy.deepcopy(now)  # FPR was lower: now it rose by 1
    worse_before["robustness"]["FPR"]["noise"] = 0.0
    better_before = copy.deepcopy(now)
    better_before["robustness"]["FPR"]["silence"] = 1.5  # FPR was higher: now it fell
    rose = {r["metric"]: r for r in compare(now, worse_before, 0.005)}
    fell = {r["metric"]: r for r in compare(now, better_before, 0.005)}
    assert rose["robustness.FPR.noise"]["regression"] and not rose["robustness.FPR.silence"]["regression"]
    assert not any(r["regression"] for r in fell.values())
    assert fell["robustness.FPR.silence"]["delta"] == pytest.approx(-0.5)


def test_cli_options():
    ns = build_parser().parse_args(["extract", "--root", "r", "--subset", "s4", "--negatives"])
    assert ns.negatives
    ns = build_parser().parse_args(
        [
            "evaluate",
            "--checkpoint",
            "c",
            "--root",
            "r",
            "--subset",
            "s4",
            "--robustness",
            "--robustness-seed",
            "4",
        ]
    )
    assert ns.robustness and ns.robustness_seed == 4


@pytest.fixture(scope="module")
def run(s4_run, tmp_path_factory) -> dict:
    """The shared synthetic S4 run, and a copy of its store holding the negative rows (written here)."""
    tmp = tmp_path_factory.mktemp("robustness")
    store = str(tmp / "store.zarr")
    shutil.copytree(s4_run["store"], store)
    cfg = ExtractConfig(
        root=s4_run["root"],
        subset="s4",
        splits=["test"],
        encoders=["clap"],
        store=store,
        device="cpu",
        negatives=True,
    )
    out = extract(cfg, progress=False)
    assert out["computed"] == 0 and list(out["negatives"]) == ["test"]  # only the negative pass ran
    assert extract(cfg, progress=False)["negatives"] == {"test": "kept"}
    return {**s4_run, "tmp": tmp, "neg_store": store}


def _cfg(run, out: str, **kw) -> EvalConfig:
    base = {
        "checkpoint": run["checkpoint"],
        "root": run["root"],
        "subset": "s4",
        "store": run["neg_store"],
        "device": "cpu",
        "out": run["tmp"] / out,
        "progress": False,
        "overlays": 0,
        "robustness": True,
    }
    return EvalConfig(**(base | kw))


@pytest.fixture(scope="module")
def cached(run) -> dict:
    return evaluate(_cfg(run, "cached"))


@pytest.fixture(scope="module")
def end_to_end(run) -> dict:
    return evaluate(_cfg(run, "e2e", mode="end-to-end", store=None))


def test_cached_refuses_a_store_without_negative_rows(run):
    with pytest.raises(StoreError, match="--negatives") as e:
        evaluate(_cfg(run, "refused", store=run["store"]))
    assert run["store"] in str(e.value) and "s4/test" in str(e.value)


def test_stored_rows_are_clap_of_the_same_noise(run):
    from cache import FeatureStore

    group = FeatureStore(run["neg_store"], mode="r").split("s4", "test")
    clap_group = group.encoder("clap")
    fp, (d,) = clap_group.fingerprint, clap_group.specs["clap"].shape
    neg = read_negative_clap(run["neg_store"], "s4", "test", fp)
    index = group.index
    assert neg["silence"].shape == (1, d) and neg["noise"].shape == (group.n_rows, d)
    assert neg["noise"].dtype == np.float32
    clap = get_encoder("clap", "tiny", None, "cpu")
    rows = [0, group.n_rows - 1]
    segs = noise_segments(segment_samples(clap), 0, index.video[rows], index.frame[rows])
    with torch.inference_mode():
        want = clap.encode(clap.preprocess(segs))["clap"].numpy()
    np.testing.assert_allclose(neg["noise"][rows], want.astype(np.float16), atol=1e-3)
    assert not np.allclose(neg["noise"][0], neg["noise"][1])  # another frame, another noise
    with pytest.raises(StoreError, match="--negatives-seed 1"):  # another seed is not silently reused
        read_negative_clap(run["neg_store"], "s4", "test", fp, seed=1)


@pytest.mark.slow
def test_cached_and_end_to_end_agree(cached, end_to_end):
    a, b = cached["robustness"], end_to_end["robustness"]
    for c in CONDITIONS:
        assert a["FPR"][c] == pytest.approx(b["FPR"][c], abs=1e-3), c
    assert a["M_J"] == pytest.approx(b["M_J"], abs=1e-3) and a["M_J"] == cached["M_J"]
    assert a["partners"] == b["partners"] and a["negative_frames"] == {c: 10 for c in CONDITIONS}
    assert a["FPR_all"] > 0  # some pixels fire on negative audio: the agreement is not of zeros


def test_report_files(run, cached):
    out = run["tmp"] / "cached"
    r = json.loads((out / "report.json").read_text())["robustness"]
    assert set(r) >= {"FPR", "FPR_all", "combined", "COMBINED_FORMULA", "partners", "seed", "conditions"}
    assert set(r["FPR"]) == set(CONDITIONS) and set(r["combined"]) == {*CONDITIONS, "overall"}
    assert r["combined"]["overall"] == pytest.approx(combined_score(r["M_J"], r["FPR_all"]))
    clips = read_clips(run["root"], "s4", "test")
    partners = offscreen_partners([(c.id, c.category) for c in clips], 0)
    assert {p["video"]: p["partner"] for p in r["partners"]} == partners
    md = (out / "report.md").read_text()
    assert "## Robustness (negative audio)" in md and COMBINED_FORMULA in md and f"]({PLOT})" in md
    assert all(f"- {v} (" in md and f"<- {p} (" in md for v, p in partners.items())
    with Image.open(out / PLOT) as img:
        assert img.format == "PNG" and img.size[0] > 400
    cats = pd.read_csv(out / CATEGORY_TABLE)
    assert {"category", "group", "M_J", "FPR", "combined", *(f"FPR_{c}" for c in CONDITIONS)} <= set(cats)
    assert (cats["frames"].sum(), len(cats)) == (10, len({c.category for c in clips}))
    keys = {row["key"]: row for row in cached["score_rows"]}
    assert (
        keys["robustness.FPR.offscreen"]["compare"]
        and keys["robustness.FPR_all"]["higher_is_better"] is False
    )
    assert "higher_is_better" not in keys["M_J"]  # rows where higher is better read as before


def test_partners_are_deterministic_for_a_seed_and_change_with_it(run):
    clips = [c for split in ("train", "val", "test") for c in read_clips(run["root"], "s4", split)]
    videos = [(c.id, c.category) for c in clips]
    first = offscreen_partners(videos, 0)
    assert first == offscreen_partners(videos[::-1], 0)  # nor on the order of the list
    assert any(offscreen_partners(videos, s) != first for s in range(1, 6))
    assert all(first[v] != v for v, _ in videos)


def test_the_nightly_option_reaches_each_subsets_evaluation(tmp_path):
    from flows.serve import deployments
    from flows.settings import NightlySettings, ServeSettings

    where = {"root": tmp_path, "checkpoints": tmp_path, "reports": tmp_path}
    served = {d.name: d for d in deployments(ServeSettings(**where, robustness=True))}
    params = served["nightly"].parameters
    assert params["robustness"] is True and "FPR" in served["nightly"].description
    nightly = NightlySettings.model_validate({k: v for k, v in params.items() if v is not None})
    assert nightly.subset_settings("ms3").robustness
    plain = {d.name: d for d in deployments(ServeSettings(**where))}["nightly"].parameters
    assert "robustness" not in plain  # off: the flow's default


def test_ms3_object_lists_parse_into_groups_as_avsbench_robust_reads_a_obj():
    s = sounds("man_guitar")
    assert (s.classes, s.groups) == ({"man", "guitar"}, {"human", "music"})
    assert sounds("playing_piano").classes == {"playing_piano"}  # an S4 folder is one class, '_' and all
    assert sounds("emergency-car_mower").avoid == {"device", "music"}  # MS3's contrast: device -> music
    assert sounds("ambulance_siren").avoid == {
        "device",
        "vehicle",
    }  # S4's: device -> vehicle (no class has it)
    assert not sounds(None).known and not sounds("").known
    assert category_group("cat_piano") == "animal+music" and category_group(None) == "other"


@pytest.mark.parametrize(
    "own,other,rank",
    [
        ("cat_piano", "emergency-car_mower", 0),  # no group in common, not human (too close to both)
        ("cat_piano", "baby", 1),  # human is the least suitable contrast of music and animal: no class shared
        ("cat_piano", "dog", 1),  # the same group, another class
        ("cat", "cat_dog", 2),  # the cat sounds in both
        ("cat_piano", None, 2),  # unknown: any video
        (None, "cat", 2),
        ("male_speech", "helicopter", 0),
        ("male_speech", "playing_piano", 1),
    ],
)
def test_offscreen_rank(own, other, rank):
    assert offscreen_rank(own, other) == rank


def test_ms3_partners_share_no_sounding_class_when_the_set_has_one():
    videos = [
        ("a", "cat_piano"),
        ("b", "dog_piano"),
        ("c", "emergency-car_mower"),
        ("d", "cat_dog"),
        ("e", None),
    ]
    p = offscreen_partners(videos, 0)
    assert p["a"] == "c" and p["b"] == "c" and p["d"] == "c"  # the only partner of rank 0
    assert p["c"] == "d"  # device avoids music: the animal-only video
    q = offscreen_partners([("a", "cat_piano"), ("b", "dog_piano"), ("x", "baby")], 0)
    assert q["a"] == "x" and q["x"] in {"a", "b"}  # human is too close to music: rank 1, no class in common
    assert p["e"] != "e"  # no category: any other video


def test_synthetic_v1m_lists_the_classes_that_sound(tmp_path):
    from pipeline.data.synth import read_manifest, write_synthetic

    write_synthetic(tmp_path, "v1m", videos=6, seed=2)
    truth = read_manifest(tmp_path)["v1m"]
    names = {c["name"]: c["object_name"] for c in truth["spec"]["classes"]}
    clips = [c for split in ("train", "val", "test") for c in read_clips(tmp_path, "v1m", split)]
    assert len(clips) == 6
    for c in clips:
        t = truth["videos"][c.id.rsplit("_", 2)[0]]
        heard = {names[t["objects"][j]] for s in t["sounding"] for j in s}
        assert sounds(c.category).classes == heard and sounds(c.category).groups <= {
            "device",
            "human",
            "animal",
            "music",
        }
