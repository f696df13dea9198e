"""`av2t official import / export` on a tiny trained head: the reference layout round trip, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from synthetic_run import train_head

from flows.cli import main as cli
from pipeline.checkpoints import CheckpointError
from pipeline.encoders.registry import build_encoder
from pipeline.model import head_config
from pipeline.model.head_checkpoint import read_head
from pipeline.official import read_reference
from pipeline.official.checkpoint import head_to_reference
from pipeline.presets import preset_dir
from stages.evaluate import EvalConfig, evaluate
from stages.official import export_reference, import_reference

EVF = "evf-sam2-multitask/model.safetensors"


@pytest.fixture(scope="module")
def run(s4_run, tmp_path_factory) -> dict[str, Path]:
    """The shared synthetic S4 store, and a `mul` head on it with the reference's fused scale (1.0)."""
    tmp = tmp_path_factory.mktemp("official")
    root = s4_run["root"]
    train_head(s4_run, tmp / "head", head=head_config("tiny", fused_scale=1.0))
    # The tiny architecture, but SAM 2 / BEiT-3 read from an EVF-SAM2 file, as `paper-official` does.
    preset = tmp / "tiny-from-evf"
    shutil.copytree(preset_dir("tiny"), preset)
    for name in ("sam2", "beit3"):
        cfg = json.loads((preset / f"{name}.json").read_text())
        cfg["weights"] = EVF
        if name == "beit3":
            cfg["position_init_scale"] = 1.0  # an init setting: loaded weights carry their own scale
        (preset / f"{name}.json").write_text(json.dumps(cfg))
    return {"tmp": tmp, "root": root, "checkpoint": tmp / "head" / "best.pt", "preset": preset}


def _evaluate(run, checkpoint: Path, out: str, weights_dir: Path | None = None) -> dict:
    cfg = EvalConfig(
        checkpoint=checkpoint,
        root=run["root"],
        subset="s4",
        mode="end-to-end",
        device="cpu",
        out=run["tmp"] / out,
        weights_dir=weights_dir,
        overlays=0,
        progress=False,
    )
    return evaluate(cfg)


@pytest.mark.slow
def test_export_then_import_gives_the_same_head_and_the_same_masks(run):
    tmp = run["tmp"]
    ours = read_head(run["checkpoint"]).data
    path = export_reference(run["checkpoint"], tmp / "avs_best.pth", check=False)
    ref = read_reference(path)
    for k, v in ours["trainable"].items():  # the trained head under the reference's names
        assert torch.equal(ref[head_to_reference(k)], v), k

    written = import_reference(path, tmp / "imported", preset=str(run["preset"]))
    back = read_head(written["head"]).data
    assert back["head"] == ours["head"]
    assert back["trainable"].keys() == ours["trainable"].keys()
    assert all(torch.equal(back["trainable"][k], v) for k, v in ours["trainable"].items())
    # The EVF-SAM2 file holds exactly the frozen weights the imported head records.
    sam2 = build_encoder("sam2", run["preset"], written["weights"])
    beit3 = build_encoder("beit3", run["preset"], written["weights"])
    assert back["frozen"] == {"sam2": sam2.weights_digest(), "beit3": beit3.weights_digest()}
    assert back["frozen"]["beit3"] == ours["frozen"]["beit3"]

    before = _evaluate(run, run["checkpoint"], "eval-ours")
    after = _evaluate(run, written["head"], "eval-imported", written["weights"])
    assert after["M_J"] == before["M_J"] and after["M_F"] == before["M_F"]
    frames = [(run["tmp"] / d / "frames.csv").read_text() for d in ("eval-ours", "eval-imported")]
    assert frames[0] == frames[1]  # every frame's score, to the last digit


def test_import_refuses_a_file_that_is_not_an_av2t_checkpoint(run, tmp_path):
    bad = tmp_path / "other.pth"
    torch.save({"model": {"x": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointError, match="other.pth: expected AVTSAM.state_dict"):
        import_reference(bad, tmp_path / "out")
    torch.save({"decoder.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="other.pth: not an AV2T-SAM checkpoint"):
        import_reference(bad, tmp_path / "out")
    with pytest.raises(CheckpointError, match="missing.pth: AV2T-SAM checkpoint weights not found"):
        import_reference(tmp_path / "missing.pth", tmp_path / "out")


def test_cli_import_and_export(run, tmp_path, capsys):
    path = export_reference(run["checkpoint"], tmp_path / "avs_best.pth", check=False)
    assert (
        cli(["official", "import", str(path), "--out", str(tmp_path / "o"), "--preset", str(run["preset"])])
        == 0
    )
    assert (tmp_path / "o" / "head.pt").is_file() and (tmp_path / "o" / "weights" / EVF).is_file()
    assert "av2t evaluate --checkpoint" in capsys.readouterr().out
    # The command line only writes what the reference code can load: a tiny head cannot.
    assert cli(["official", "export", str(run["checkpoint"]), "--out", str(tmp_path / "x.pth")]) == 2
    assert "no reference AV2T-SAM layout" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()
