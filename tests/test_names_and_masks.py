"""Nothing silently wrong: CSV names that are not names, repeated rows, mask conventions, NaN audio, and how
`score` reads 0/1, grey and colour predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from test_data_check import Video, csv_row, make_tree, write_csv, write_png

from flows.cli import main as cli
from pipeline.data import layout
from pipeline.data.audio import load_segments, read_wav
from pipeline.data.check import ALPHA_ONLY_NOTE, check_tree
from pipeline.data.clips import DataError, read_clips
from pipeline.data.images import load_mask, read_mask
from pipeline.data.names import check_name, name_problem
from pipeline.data.synth import SynthSpec, write_synthetic
from pipeline.scoring import MARKER, mark_folder, prediction_path, score_folder

BAD_NAMES = ["../../p", "a/b", "a\\b", "..", ".", "", "   ", "x\x01y", "tab\there"]
GOOD_NAMES = ["-abc_1", "_x", "-0IoCrXxRsw_30000", "a..b", ".hidden", "name with space"]


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_refuses(name):
    assert name_problem(name) is not None
    with pytest.raises(DataError) as e:
        check_name(name, "video id", "some.csv: line 7")
    assert str(e.value).startswith(f"some.csv: line 7: video id {name!r} ")


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_check_name_accepts(name):
    assert name_problem(name) is None and check_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("subset", ["s4", "ms3"])
def test_bad_video_ids_are_refused_by_read_clips_and_data_check(tmp_path, subset, name):
    good = Video("-good_1", "test", "dog" if subset == "s4" else None)
    bad = Video(name, "test", "dog" if subset == "s4" else None)
    csv_path = make_tree(tmp_path, subset, [good], [csv_row(subset, bad)])
    shown = name.strip()  # the reader strips cells
    for split in ("test", "train"):  # the whole CSV must be sound, whichever split is read
        with pytest.raises(DataError) as e:
            read_clips(tmp_path, subset, split)
        msg = str(e.value)
        assert msg.startswith(f"{csv_path}: line 3: video id {shown!r} ") and "fix or remove that row" in msg
    report = check_tree(tmp_path, subset, workers=1)
    assert [p.path for p in report.problems] == [str(csv_path)]
    problem = report.problems[0].problem
    assert problem.startswith(f"line 3: video id {shown!r} ") and problem.endswith("fix or remove that row")
    assert report.splits["test"].videos == 1  # the bad row is not counted, its paths never built
    assert cli(["data", "check", "--root", str(tmp_path), "--subset", subset, "--json"]) == 1


def test_bad_category_is_refused(tmp_path):
    csv_path = make_tree(tmp_path, "s4", [Video("v_1", "val", "dog")], [["v_2", "0", "../cat", "val"]])
    with pytest.raises(DataError, match=r"line 3: category '\.\./cat' holds a path separator") as e:
        read_clips(tmp_path, "s4", "val")
    assert str(e.value).startswith(str(csv_path))
    assert [p.problem[:26] for p in check_tree(tmp_path, "s4").problems] == ["line 3: category '../cat' "]


def test_every_bad_row_is_listed(tmp_path):
    rows = [["../a", "test"], ["b/c", "test"], ["..", "val"]]
    csv_path = make_tree(tmp_path, "ms3", [], rows)
    with pytest.raises(DataError) as e:
        read_clips(tmp_path, "ms3", "test")
    msg = str(e.value)
    assert msg.startswith(f"{csv_path}: 3 problems in its rows:")
    assert all(f"line {i}: video id {r[0]!r}" in msg for i, r in enumerate(rows, start=2))


def test_nul_in_csv_is_a_clear_error(tmp_path):
    csv_path = write_csv(tmp_path, "ms3", [["a\x00b", "test"]])
    with pytest.raises(DataError) as e:
        read_clips(tmp_path, "ms3", "test")
    assert str(e.value).startswith(str(csv_path))


@pytest.mark.parametrize("subset", ["s4", "ms3"])
def test_leading_dash_and_underscore_names_work(tmp_path, subset):
    cat = "dog" if subset == "s4" else None
    videos = [Video("-abc_1", "test", cat), Video("_x", "test", cat), Video("-0IoCrXxRsw_30000", "val", cat)]
    make_tree(tmp_path, subset, videos)
    assert [c.id for c in read_clips(tmp_path, subset, "test")] == ["-abc_1", "_x"]
    assert check_tree(tmp_path, subset).ok


def test_duplicated_rows_are_refused_by_read_clips(tmp_path):
    v = Video("dup", "val", "dog")
    csv_path = make_tree(tmp_path, "s4", [v], [csv_row("s4", v)])
    with pytest.raises(DataError) as e:
        read_clips(tmp_path, "s4", "test")  # another split: still refused
    assert str(e.value) == (
        f"{csv_path}: line 3: video id 'dup' repeats line 2, split 'val': fix or remove that row"
    )


def test_duplicates_across_splits_are_refused(tmp_path):
    a, b = Video("twice", "val", "dog"), Video("twice", "test", "dog")
    csv_path = make_tree(tmp_path, "s4", [a, b])
    with pytest.raises(DataError, match="line 3: video id 'twice' repeats line 2, split 'val'"):
        read_clips(tmp_path, "s4", "val")
    report = check_tree(tmp_path, "s4")
    assert [(p.path, p.problem) for p in report.problems] == [
        (
            str(csv_path),
            "line 3: duplicate video name 'twice' (first on line 2, split 'val'): fix or remove that row",
        )
    ]


def test_prediction_path_refuses_names_that_leave_the_folder(tmp_path):
    for name in ("../x", "a/b", "..", ""):
        with pytest.raises(DataError, match="video id"):
            prediction_path(tmp_path / "pred", name, 1)
    assert prediction_path(tmp_path, "-abc_1", 2) == tmp_path / "-abc_1" / "-abc_1_2.png"


# ---------------------------------------------------------------- masks

BASE = np.zeros((6, 8), dtype=np.uint8)
BASE[1:3, 2:5] = 255
WANT = BASE > 0


def _rgba(colour: tuple[int, int, int], alpha_fg: int, alpha_bg: int, colour_bg=(0, 0, 0)) -> Image.Image:
    arr = np.zeros((*BASE.shape, 4), np.uint8)
    arr[..., :3] = colour_bg
    arr[..., 3] = alpha_bg
    arr[WANT, :3] = colour
    arr[WANT, 3] = alpha_fg
    return Image.fromarray(arr, mode="RGBA")


def _palette(colours: list[tuple[int, int, int]]) -> Image.Image:
    img = Image.fromarray((BASE > 0).astype(np.uint8), mode="P")
    img.putpalette([c for rgb in colours for c in rgb])
    return img


MASKS = {
    "0/255 L": (Image.fromarray(BASE, mode="L"), "0/255 grayscale (L)", False),
    "0/1 L": (Image.fromarray((BASE > 0).astype(np.uint8), mode="L"), "0/1 grayscale (L)", False),
    "mode 1": (Image.fromarray(BASE, mode="L").convert("1"), "binary (1)", False),
    "P from L": (Image.fromarray(BASE, mode="L").convert("P"), "palette (P)", False),
    "P VOC-like": (_palette([(0, 0, 0), (128, 0, 0)]), "palette (P)", False),
    "RGB red on black": (Image.fromarray(np.stack([BASE, 0 * BASE, 0 * BASE], -1), "RGB"), "RGB", False),
    "RGB dark": (Image.fromarray(np.stack([0 * BASE, BASE // 255, 0 * BASE], -1), "RGB"), "RGB", False),
    "RGBA opaque": (_rgba((255, 255, 255), 255, 255), "RGBA (colour)", False),
    "RGBA alpha only": (_rgba((0, 0, 0), 255, 0), "RGBA (alpha)", True),
    "RGBA transparent white bg": (
        _rgba((255, 0, 0), 255, 0, colour_bg=(255, 255, 255)),
        "RGBA (colour, transparent = background)",
        False,
    ),
    "LA alpha only": (Image.fromarray(np.stack([0 * BASE, BASE], -1), "LA"), "LA (alpha)", True),
    "I;16": (Image.fromarray((BASE > 0).astype(np.uint16) * 1000), "16/32-bit grayscale (I;16)", False),
}


@pytest.mark.parametrize("case", list(MASKS))
def test_mask_modes_read_as_meant(tmp_path, case):
    img, convention, alpha_only = MASKS[case]
    path = tmp_path / "m.png"
    write_png(path, img)
    with Image.open(path) as opened:
        assert opened.mode == img.mode  # the PNG keeps the mode under test
    got = read_mask(path)
    assert got.mask.dtype == bool and np.array_equal(got.mask, WANT), case
    assert (got.convention, got.alpha_only) == (convention, alpha_only)
    assert np.array_equal(load_mask(path), WANT)


@pytest.mark.parametrize("mode", ["L", "P"])
def test_official_masks_read_as_before_and_as_the_official_loaders(tmp_path, mode):
    """0/255 'L' or 'P' masks: value > 0 as before; S4's convert('1') and MS3's convert('P') index agree."""
    rng = np.random.default_rng(0)
    arr = (rng.random((224, 224)) > 0.7).astype(np.uint8) * 255
    path = tmp_path / "gt.png"
    write_png(path, Image.fromarray(arr, mode="L").convert(mode))
    got = load_mask(path)
    with Image.open(path) as img:
        before = np.asarray(img.convert("L")) > 0
        s4_official = np.asarray(img.convert("1"))
        ms3_official = np.asarray(img.convert("P")) != 0
    for want in (arr > 0, before, s4_official, ms3_official):
        assert np.array_equal(got, want)


def test_palette_that_disagrees_is_refused(tmp_path):
    path = tmp_path / "p.png"
    write_png(path, _palette([(255, 255, 255), (0, 0, 0)]))  # index 0 white, index 1 black
    with pytest.raises(DataError, match=r"palette \('P'\) mask whose palette disagrees") as e:
        load_mask(path)
    assert str(e.value).startswith(f"{path}: ")


@pytest.mark.parametrize(("mode", "fmt"), [("F", "TIFF"), ("CMYK", "TIFF"), ("CMYK", "JPEG")])
def test_other_modes_are_refused(tmp_path, mode, fmt):
    path = tmp_path / f"m.{fmt.lower()}"
    img = Image.fromarray(WANT.astype(np.float32)) if mode == "F" else Image.new(mode, (8, 6))
    img.save(path, format=fmt)
    with pytest.raises(DataError) as e:
        load_mask(path)
    assert str(e.value).startswith(f"{path}: mask mode {mode!r} is not read as a mask")


def test_data_check_reports_conventions_and_notes_alpha_only(tmp_path, capsys):
    videos = [Video("a_1", "val", "dog"), Video("b_2", "test", "dog")]
    make_tree(tmp_path, "s4", videos)
    alpha = layout.mask_path(tmp_path, "s4", "val", "a_1", "dog", 2)
    arr = np.zeros((224, 224, 4), np.uint8)
    arr[20:60, 30:90, 3] = 255
    write_png(alpha, Image.fromarray(arr, mode="RGBA"))
    ones = layout.mask_path(tmp_path, "s4", "test", "b_2", "dog", 1)
    write_png(ones, Image.fromarray(load_mask(ones).astype(np.uint8), mode="L"))
    report = check_tree(tmp_path, "s4", workers=2)
    assert report.ok and report.problems == []
    assert report.masks == {
        "train": {},
        "val": {"0/255 grayscale (L)": 4, "RGBA (alpha)": 1},
        "test": {"0/255 grayscale (L)": 4, "0/1 grayscale (L)": 1},
    }
    assert [(n.path, n.problem) for n in report.notes] == [(str(alpha), ALPHA_ONLY_NOTE)]
    assert load_mask(alpha).sum() == 40 * 60  # not silently zero
    text = report.to_text()
    assert "masks val: 0/255 grayscale (L) 4, RGBA (alpha) 1" in text
    assert f"{alpha}: note: foreground only in alpha" in text and text.endswith("OK")
    assert cli(["data", "check", "--root", str(tmp_path), "--subset", "s4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["notes"] == [{"path": str(alpha), "problem": ALPHA_ONLY_NOTE}]
    assert out["masks"]["test"] == {"0/255 grayscale (L)": 4, "0/1 grayscale (L)": 1}


def test_data_check_refuses_float_masks(tmp_path):
    make_tree(tmp_path, "ms3", [Video("v_1", "test")])
    path = layout.mask_path(tmp_path, "ms3", "test", "v_1", None, 3)
    Image.fromarray(np.zeros((224, 224), np.float32)).save(path, format="TIFF")  # a TIFF named .png
    report = check_tree(tmp_path, "ms3")
    assert [p.path for p in report.problems] == [str(path)]
    assert report.problems[0].problem.startswith("mask mode 'F' is not read as a mask")


# ---------------------------------------------------------------- audio


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_audio_is_refused(tmp_path, bad):
    make_tree(tmp_path, "ms3", [Video("v_1", "test")])
    wav = layout.audio_path(tmp_path, "ms3", "test", "v_1", None)
    data = np.zeros((16_000, 2), np.float32)
    data[8000, 1] = bad
    data[9000:9010, 0] = bad
    sf.write(wav, data, 16_000, subtype="FLOAT")
    for stereo in ("mean", "flatten"):
        with pytest.raises(DataError) as e:
            load_segments(wav, 48_000, stereo=stereo)
        assert str(e.value) == (
            f"{wav}: 11 samples are NaN or infinite (the first at 0.500 s); the file is broken: "
            "re-export or replace it"
        )
    with pytest.raises(DataError, match="NaN or infinite"):
        read_wav(wav)
    report = check_tree(tmp_path, "ms3")
    assert [p.path for p in report.problems] == [str(wav)]
    assert report.problems[0].problem.startswith("11 samples are NaN or infinite")


def test_finite_float_audio_still_loads(tmp_path):
    wav = tmp_path / "ok.wav"
    sf.write(wav, np.full(16_000, 0.25, np.float32), 16_000, subtype="FLOAT")
    assert np.allclose(load_segments(wav, 16_000)[0], 0.25)


# ---------------------------------------------------------------- score


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A small synthetic S4 tree: 3 test videos (some frames with an empty GT)."""
    root = tmp_path_factory.mktemp("names") / "data"
    write_synthetic(root, "s4", videos=8, seed=2, spec=SynthSpec(test_fraction=0.4))
    return root


def _write_predictions(root: Path, pred: Path, convert) -> list[Path]:
    """The GT masks of the test split, each written as convert(bool mask) -> PIL image."""
    paths = []
    for clip in read_clips(root, "s4", "test"):
        for k in clip.annotated:
            path = prediction_path(pred, clip.id, k)
            write_png(path, convert(load_mask(clip.mask_paths[k - 1])))
            paths.append(path)
    return paths


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _args(pred: Path, root: Path) -> list[str]:
    return ["score", "--pred", str(pred), "--root", str(root), "--subset", "s4", "--split", "test", "--json"]


def test_zero_one_predictions_are_read_as_hard_masks(root, tmp_path, capsys):
    pred = tmp_path / "pred"
    _write_predictions(root, pred, lambda m: Image.fromarray(m.astype(np.uint8), mode="L"))
    r = score_folder(pred, root, "s4", "test")
    assert r["M_J"] == pytest.approx(1.0, abs=1e-6) and r["M_F"] == pytest.approx(1.0, abs=1e-6)
    assert r["values"] == "binary01" and r["convention"].startswith("0/1 hard masks")
    assert "detected" in r["convention"] and r["modes"] == {"L": 15}
    assert r["value_kinds"]["0/1"] > 0 and set(r["value_kinds"]) <= {"0/1", "empty"}
    assert cli(_args(pred, root)) == 0
    assert json.loads(capsys.readouterr().out) == r
    # Stated, not detected: read as v/255 they are nearly empty (the old silent reading).
    explicit = score_folder(pred, root, "s4", "test", values="probability")
    assert explicit["M_J"] < 0.5 and explicit["values"] == "probability"
    mark_folder(pred, "probability")
    marked = score_folder(pred, root, "s4", "test")
    assert marked == {**explicit, "convention": f"{explicit['convention']} (as {MARKER} says)"}


def test_zero_one_beside_zero_255_is_ambiguous(root, tmp_path):
    pred = tmp_path / "pred"
    files = _write_predictions(root, pred, lambda m: Image.fromarray(m.astype(np.uint8) * 255, mode="L"))
    nonempty = [f for f in files if _pixels(f).any()]
    write_png(nonempty[0], Image.fromarray((_pixels(nonempty[0]) > 0).astype(np.uint8)))
    with pytest.raises(DataError, match="ambiguous hard masks") as e:
        score_folder(pred, root, "s4", "test")
    assert str(nonempty[0]) in str(e.value)
    with pytest.raises(DataError, match="holds values above 1"):
        score_folder(pred, root, "s4", "test", values="binary01")


def test_soft_maps_with_a_near_empty_frame_stay_probabilities(root, tmp_path):
    pred = tmp_path / "pred"
    files = _write_predictions(root, pred, lambda m: Image.fromarray(m.astype(np.uint8) * 200 + 10, mode="L"))
    write_png(files[0], Image.fromarray(np.eye(224, dtype=np.uint8), mode="L"))  # max 1: probability 1/255
    r = score_folder(pred, root, "s4", "test")
    assert r["values"] == "probability" and r["value_kinds"]["soft"] == 14 and r["value_kinds"]["0/1"] == 1


def test_colour_predictions_are_refused_grey_ones_read(root, tmp_path):
    pred = tmp_path / "pred"
    files = _write_predictions(
        root, pred, lambda m: Image.fromarray(np.stack([m * 255, 0 * m, 0 * m], -1).astype(np.uint8), "RGB")
    )
    with pytest.raises(DataError) as e:
        score_folder(pred, root, "s4", "test")
    msg = str(e.value)
    colour = [f for f in files if _pixels(f).any()]
    assert f"{len(colour)} file(s) cannot be scored" in msg
    assert f"{colour[0]}: RGB prediction in colour (its channels differ, e.g. red on black)" in msg
    assert "save predictions as single-channel 8-bit 'L' PNGs" in msg
    grey = tmp_path / "grey"
    _write_predictions(root, grey, lambda m: Image.fromarray(m.astype(np.uint8) * 255, "L").convert("RGB"))
    r = score_folder(grey, root, "s4", "test")
    assert r["M_J"] == pytest.approx(1.0, abs=1e-6) and r["modes"] == {"RGB (grey)": 15}
    assert r["values"] == "probability"


def test_transparent_predictions_are_refused(root, tmp_path):
    pred = tmp_path / "pred"

    def alpha_only(m: np.ndarray) -> Image.Image:
        arr = np.zeros((*m.shape, 4), np.uint8)
        arr[..., 3] = m * 255
        return Image.fromarray(arr, "RGBA")

    files = _write_predictions(root, pred, alpha_only)
    with pytest.raises(DataError, match="RGBA prediction with transparent pixels") as e:
        score_folder(pred, root, "s4", "test")
    assert str(files[0]) in str(e.value)


def test_a_csv_name_with_dotdot_is_refused_everywhere_and_nothing_leaves_out(tmp_path, s4_run, capsys):
    """The bar: a hidden tree whose CSV holds '../../p' is refused by data check, extract and evaluate."""
    from pipeline.settings import ExtractConfig
    from stages.extract import extract

    root = tmp_path / "tree"
    write_synthetic(root, "s4", videos=6, seed=5, spec=SynthSpec(test_fraction=0.3))
    csv = layout.meta_csv(root, "s4")
    first = read_clips(root, "s4", "test")[0].id
    csv.write_text(csv.read_text().replace(first, "../../p", 1))
    before = {p for p in tmp_path.rglob("*")}

    assert cli(["data", "check", "--root", str(root), "--subset", "s4"]) == 1
    assert "../../p" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"s4_meta_data.csv.*\.\./\.\./p"):
        extract(
            ExtractConfig(root=root, subset="s4", store=str(tmp_path / "s.zarr"), device="cpu"),
            progress=False,
        )
    out = tmp_path / "eval" / "out"
    args = ["evaluate", "--checkpoint", str(s4_run["checkpoint"]), "--root", str(root), "--subset", "s4"]
    assert cli([*args, "--mode", "end-to-end", "--out", str(out), "--device", "cpu", "--save-masks"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("av2t: error:") and "../../p" in err and "Traceback" not in err
    assert {p for p in tmp_path.rglob("*")} <= before | {out, out.parent, *out.rglob("*")}
    assert not list(tmp_path.rglob("p"))
