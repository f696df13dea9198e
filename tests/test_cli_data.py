"""`av2t synth` and `av2t data check` end to end through the command's entry point."""

from __future__ import annotations

import json

from flows.cli import main as cli


def test_synthetic_trees_pass_data_check(tmp_path, capsys):
    root = tmp_path / "avsbench"
    for subset in ("s4", "ms3"):
        assert cli(["synth", "--out", str(root), "--subset", subset, "--videos", "10", "--seed", "1"]) == 0
    capsys.readouterr()
    assert cli(["data", "check", "--root", str(root), "--subset", "s4", "--json"]) == 0
    s4 = json.loads(capsys.readouterr().out)
    assert s4["problems"] == []
    assert s4["splits"]["train"] == {"videos": 6, "frames": 30, "annotated_frames": 6}
    assert s4["splits"]["val"]["annotated_frames"] == 5 * s4["splits"]["val"]["videos"]
    assert s4["masks"]["train"] == {"0/255 grayscale (L)": 6} and s4["notes"] == []
    assert cli(["data", "check", "--root", str(root), "--subset", "ms3"]) == 0
    text = capsys.readouterr().out
    assert text.rstrip().endswith("OK") and "masks train: 0/255 grayscale (L) " in text


def test_data_check_fails_on_a_broken_tree(tmp_path, capsys):
    root = tmp_path / "avsbench"
    cli(["synth", "--out", str(root), "--subset", "ms3", "--videos", "6"])
    frame = next((root / "Multi-sources/ms3_data/visual_frames").rglob("*.mp4_3.png"))
    frame.write_bytes(frame.read_bytes()[:200])
    capsys.readouterr()
    assert cli(["data", "check", "--root", str(root), "--subset", "ms3", "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [p["path"] for p in problems] == [str(frame)]


def test_missing_root_is_a_clear_error(tmp_path, capsys):
    assert cli(["data", "check", "--root", str(tmp_path / "nope"), "--subset", "s4", "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert "s4_meta_data.csv" in problems[0]["path"]
