"""bench/ as one tool: every bench imports and parses the common options; the checks' verdicts can fail."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import common

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "common"))


@pytest.mark.parametrize("name", BENCHES)
def test_bench_imports_and_helps(name, capsys):
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"bench.{name}").main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--threads" in out and "--json" in out, out
    # the old spellings are gone: one name per option
    assert "--repeat " not in out and "--batch " not in out


@pytest.mark.parametrize("name", ["official_parity", "paper_scale"])
def test_bench_runs_as_a_script(name, tmp_path):
    """`python bench/<name>.py` (what the docs name) works from any folder, as `python -m bench.<name>` does."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--json" in out.stdout


def test_threads_option_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        common.parse(common.parser(None), ["--threads", "1"])
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        common.parse(common.parser(None), ["--threads", "0"])  # 0 leaves torch's count as it is
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_json_output_is_the_figures_alone(capsys):
    with common.Figures(True) as out:
        print("a human line")
        out.table("t", [{"head": "mul", "M_J": 0.5}])
        out.add("n", 3)
    got = capsys.readouterr()
    assert json.loads(got.out) == {"t": [{"head": "mul", "M_J": 0.5}], "n": 3}
    assert "a human line" in got.err and "| mul | 0.5000 |" in got.err


def test_official_parity_verdict():
    from bench.official_parity import MISTAKES, main, verdict

    good = [("adapter: ours as is", 0.2, True), ("pseudo-tokens reversed", 40.0, False)]
    assert verdict(good) == []
    # a mistake left in our forward fails the bar there; a mistake the check cannot see is a failure too
    assert verdict([("adapter: ours as is", 40.0, True), *good[1:]]) == ["adapter: ours as is"]
    assert verdict([good[0], ("pseudo-tokens reversed", 0.5, False)]) == ["pseudo-tokens reversed"]
    assert common.exit_code(not verdict(good), "") == 0
    assert common.exit_code(not verdict([("x", 2.0, True)]), "x") == 1
    with pytest.raises(SystemExit) as e:
        main(["--mistake", "not-a-mistake"])
    assert e.value.code == 2
    assert set(MISTAKES) == {"adapter-dropped", "tokens-reversed", "text-positions", "first-mask"}


def test_learning_check_verdict():
    from bench.learning_check import learned

    def table(mul, clip=None):
        rows = [("mul", mul), ("all background", 0.0), ("best centred disc (r=80)", 0.3)]
        rows += [("clip", clip)] if clip is not None else []
        return pd.DataFrame(rows, columns=["head", "val_M_J"])

    assert learned("s4", table(0.6)) == []
    assert learned("ms3", table(0.6, clip=0.4)) == []
    assert learned("s4", table(0.2)) == ["s4: mul M_J 0.2000 <= best baseline 0.3000"]
    assert learned("ms3", table(0.6, clip=0.7)) == ["ms3: mul M_J 0.6000 <= clip 0.7000"]
