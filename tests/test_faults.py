"""Fault probes from outside (issue 23): hostile sweep names, two writers of one output, a full disk, a broken
pipe, misspelt overrides, an unwritable reports folder, a truncated zarr.json, leftovers of a killed save.

Each runs without a feature store where it can: the refusals come before any store is opened.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main as cli
from pipeline.files import LockedError, OutputError, OutputLock, clean_temp, save_torch

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(capsys, code: int, expect_code: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == expect_code, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("av2t: error: "), err
    return lines[0]


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- 1. sweep head names become folders under --out: refused before anything is written


@pytest.mark.parametrize("bad", ["../escaped-sweep", "/abs/elsewhere", "a/b", "..", ".hidden"])
def test_a_sweep_name_leaving_out_is_refused_before_anything_is_written(bad, tmp_path, capsys):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"ok": {}, bad: {}}))
    out = tmp_path / "runs" / "out"
    argv = ["train", "--subset", "s4", "--store", str(tmp_path / "none.zarr"), "--out", str(out)]
    line = _one_error_line(capsys, cli([*argv, "--sweep", str(sweep)]))
    assert str(sweep) in line and repr(bad) in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sweep.json"]  # nothing written, not even --out


def test_the_stage_refuses_unsafe_head_names_too(tmp_path):
    from pipeline.model import HeadConfig
    from pipeline.settings import TrainConfig
    from stages.train import fit

    cfg = TrainConfig(store=str(tmp_path / "none.zarr"), subset="s4", out=tmp_path / "out", device="cpu")
    with pytest.raises(OutputError, match="escaped"):
        fit(cfg, {"ok": HeadConfig(), "../escaped": HeadConfig()})
    assert not (tmp_path / "out").exists()


# -- 2. one writer per output folder


def _lock_held_by(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    held = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01 00:00:00"}
    (folder / OutputLock.NAME).write_text(json.dumps(held))


def test_a_second_train_into_one_out_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock_held_by(out, holder.pid)
        argv = ["train", "--subset", "s4", "--store", str(tmp_path / "none.zarr"), "--out", str(out)]
        line = _one_error_line(capsys, cli(argv))
    finally:
        holder.kill()
        holder.wait()
    assert str(out / OutputLock.NAME) in line and f"pid {holder.pid}" in line and "--out" in line
    assert sorted(p.name for p in out.iterdir()) == [OutputLock.NAME]


def test_a_lock_on_another_host_is_never_taken_over(tmp_path):
    _lock_held_by(tmp_path, _dead_pid(), host="elsewhere.example")
    with pytest.raises(LockedError, match="elsewhere.example"):
        OutputLock(tmp_path).acquire()


def test_a_stale_lock_and_temp_files_of_dead_runs_are_cleaned(tmp_path):
    """A run killed mid-save: its lock and `.best.pt.tmp-<pid>` go at the next start; a live pid's stay."""
    from cache import StoreError
    from pipeline.settings import TrainConfig
    from stages.train import train

    out = tmp_path / "out"
    dead = _dead_pid()
    _lock_held_by(out, dead)
    (out / "head").mkdir()
    (out / f".best.pt.tmp-{dead}").write_bytes(b"half")
    (out / "head" / f".last.pt.tmp-{dead}").write_bytes(b"half")
    live = out / f".best.pt.tmp-{os.getppid()}"
    live.write_bytes(b"someone else's")
    cfg = TrainConfig(store=str(tmp_path / "none.zarr"), subset="s4", out=out, device="cpu")
    with pytest.raises(StoreError, match="none.zarr"):  # the stage starts (stale lock taken), finds no store
        train(cfg)
    assert sorted(p.name for p in out.rglob("*")) == sorted(
        ["head", live.name]
    )  # lock released, leftovers gone
    assert clean_temp(out) == []


RACE = """
import sys, time
from pipeline.files import LockedError, OutputLock
try:
    with OutputLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(1.5)
except LockedError as e:
    print("refused", e, flush=True)
"""


def test_of_two_writers_starting_together_one_is_refused(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outs = sorted(p.communicate(timeout=60)[0].split()[0] for p in procs)
    assert outs == ["held", "refused"]
    assert not (tmp_path / OutputLock.NAME).exists()


# -- 4. a full disk during a checkpoint save


def test_a_full_disk_inside_torch_zip_writer_is_one_clear_error(tmp_path):
    """A real full filesystem (a 1 MiB tmpfs): torch reports it as 'unexpected pos', the OSError only as context."""
    import torch

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        (mnt / "best.pt").write_bytes(b"previous")
        with pytest.raises(OutputError, match="no space left") as e:
            save_torch({"x": torch.zeros(1_000_000)}, mnt / "best.pt")
        assert str(mnt / "best.pt") in str(e.value)
        assert (mnt / "best.pt").read_bytes() == b"previous"  # the file written before is intact
        assert [p.name for p in mnt.iterdir()] == ["best.pt"]  # no temporary file left
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
