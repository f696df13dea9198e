"""Nothing silently wrong: every ordinary error of `av2t` is one line `av2t: error: ...` and exit status 2.

Bad options, a non-JSON sweep file, a bad last.pt, a store URL without its filesystem package, a damaged
store, a full disk; --debug shows the traceback; an unexpected error keeps it. The temporary Prefect
server ends with the command (SIGTERM, and SIGKILL through PR_SET_PDEATHSIG), and a server that does not
start in time makes `av2t extract` run its stage without Prefect.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import errors
from flows.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")


def _one_error_line(capsys, code: int, expect_code: int = 2) -> str:
    """The single stderr line of a failed command (checked: `av2t: error:`, no traceback)."""
    err = capsys.readouterr().err
    assert code == expect_code, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("av2t: error: "), err
    return lines[0]


# -- options out of range: refused by the settings models' constraints, named as the user typed them


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["train", "--subset", "s4", "--epochs", "0"], "--epochs: must be >= 1 (got 0)"),
        (["train", "--subset", "s4", "--lr", "-1"], "--lr: must be > 0 (got -1)"),
        (["train", "--subset", "s4", "--batch-size", "0"], "--batch-size: must be >= 1 (got 0)"),
        (["train", "--subset", "s4", "--max-steps", "0"], "--max-steps: must be >= 1 (got 0)"),
        (["extract", "--root", "r", "--subset", "s4", "--workers", "0"], "--workers: must be >= 1 (got 0)"),
        (["extract", "--root", "r", "--subset", "s4", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["synth", "--out", "x", "--subset", "s4", "--videos", "2"], "--videos: must be >= 3 (got 2)"),
        (["demo", "--epochs", "0"], "--epochs: must be >= 1 (got 0)"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_out_of_range_options_are_one_line(argv, want, capsys):
    assert want in _one_error_line(capsys, cli(argv))


def test_several_bad_options_share_the_line(capsys):
    line = _one_error_line(capsys, cli(["train", "--subset", "s4", "--epochs", "0", "--lr", "-1"]))
    assert "--epochs: must be >= 1" in line and "--lr: must be > 0" in line


def test_the_train_flow_keeps_the_constraints():
    from pydantic import ValidationError

    from flows.settings import TrainFlowSettings

    for bad in ({"epochs": 0}, {"lr": -1.0}, {"batch_size": 0}, {"min_lr": -1.0}):
        with pytest.raises(ValidationError):
            TrainFlowSettings(**bad)
    assert TrainFlowSettings(epochs=None).epochs is None  # None: the preset's train.json


# -- input files


def test_a_non_json_sweep_file_names_the_file_and_position(tmp_path, capsys):
    sweep = tmp_path / "sweep.json"
    sweep.write_text('{"a": {"fusion": "clap"},\n "b": }\n')
    line = _one_error_line(capsys, cli(["train", "--subset", "s4", "--sweep", str(sweep)]))
    assert str(sweep) in line and "not valid JSON" in line and "line 2 column" in line


def test_an_invalid_sweep_entry_names_the_file_and_head(tmp_path, capsys):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"mine": {"fusion": "nope"}}))
    line = _one_error_line(capsys, cli(["train", "--subset", "s4", "--sweep", str(sweep)]))
    assert str(sweep) in line and "'mine'" in line and "fusion" in line
    missing = tmp_path / "none.json"
    line = _one_error_line(capsys, cli(["train", "--subset", "s4", "--sweep", str(missing)]))
    assert str(missing) in line


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_an_s3_store_without_s3fs_says_what_to_install(capsys):
    line = _one_error_line(capsys, cli(["cache", "info", "s3://bucket/x.zarr"]))
    assert "s3://bucket/x.zarr" in line and "pip install s3fs" in line


def test_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv("AV2T_DEBUG", raising=False)
    store = "/nonexistent/av2t/store.zarr"
    assert cli(["--debug", "cache", "info", store]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("av2t: error: ")
    assert cli(["cache", "info", store, "--debug"]) == 2  # after the command too
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("AV2T_DEBUG", "1")
    assert cli(["cache", "info", store]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("AV2T_DEBUG", "0")
    _one_error_line(capsys, cli(["cache", "info", store]))
    assert not errors.debug()  # main leaves the process as it found it


# -- what no option can cause: a bug keeps its traceback; interruptions are one line


def test_an_unexpected_error_keeps_its_traceback_and_says_report_it(monkeypatch, capsys):
    import flows.cli

    def boom(o):
        raise RuntimeError("an internal inconsistency")

    monkeypatch.setattr(flows.cli, "_cmd_synth", boom)
    assert cli(["synth", "--out", "x", "--subset", "s4"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "an internal inconsistency" in err
    assert "--debug" in err.strip().splitlines()[-1] and "report" in err.strip().splitlines()[-1]


def test_ctrl_c_and_sigterm_are_one_line(monkeypatch, capsys):
    import flows.cli

    def interrupted(o):
        raise KeyboardInterrupt

    monkeypatch.setattr(flows.cli, "_cmd_synth", interrupted)
    assert cli(["synth", "--out", "x", "--subset", "s4"]) == 130
    assert capsys.readouterr().err.strip() == "av2t: interrupted"

    def terminated(o):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises in this thread before the sleep ends
        return 0

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(flows.cli, "_cmd_synth", terminated)
    assert cli(["synth", "--out", "x", "--subset", "s4"]) == 143
    assert capsys.readouterr().err.strip() == "av2t: terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) == before


def test_ordinary_errors_in_one_line():
    from pydantic import BaseModel, Field, ValidationError

    e = OSError(errno.ENOSPC, "No space left on device", "/data/x.zarr/c/0")
    assert errors.one_line(e) == "/data/x.zarr/c/0: No space left on device; free some space and run again"
    assert errors.one_line(OSError(errno.EACCES, "Permission denied", "/root/f")).startswith("/root/f:")
    assert errors.one_line(OSError(errno.EBADF, "Bad file descriptor")) is None  # a bug, not the user
    dask = errors.one_line(ImportError("No module named 'prefect_dask'", name="prefect_dask"))
    assert dask is not None and "pip install prefect-dask" in dask
    assert "pip install gcsfs" in errors.one_line(
        ImportError("Please install gcsfs to access Google Storage")
    )
    assert errors.one_line(ImportError("No module named 'numpy.core.x'", name="numpy.core.x")) is None
    assert "not valid JSON" in errors.one_line(json.JSONDecodeError("Expecting value", "x", 0))
    assert errors.one_line(ValueError("a bug")) is None

    class M(BaseModel):
        n: int = Field(ge=1)

    with pytest.raises(ValidationError) as v:
        M(n=0)
    assert errors.one_line(v.value) == "M: n: must be >= 1 (got 0)"


# -- a store: a damaged one, a bad last.pt, a full disk


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    from synthetic_run import synthetic_store

    return synthetic_store(tmp_path_factory.mktemp("errors-store"), videos=6)


@pytest.fixture(autouse=True)
def _quiet_stale_log_streams(monkeypatch):
    """Prefect's console handler keeps the stderr of the test that first imported Prefect (a capture that
    is closed since): logging's complaint about it is no error of the command."""
    import logging

    monkeypatch.setattr(logging, "raiseExceptions", False)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """One temporary Prefect server for this module's flows (flows.prefect_runtime, as `av2t` starts it)."""
    from prefect.settings import PREFECT_HOME, temporary_settings

    from flows.prefect_runtime import flow_api

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(updates={PREFECT_HOME: home}), flow_api() as url:
        yield url


def _train(store: dict, out: Path) -> list[str]:
    return ["train", "--subset", "s4", "--store", store["store"], "--out", str(out), "--epochs", "1"]


def test_a_damaged_store_names_the_file(store, tmp_path, capsys):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store["store"], copy)
    meta = copy / "s4" / "val" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:50])
    line = _one_error_line(capsys, cli(["cache", "info", str(copy)]))
    assert str(meta) in line and "not valid JSON" in line and "extract again" in line


def test_a_garbage_last_pt_names_the_file_and_the_way_out(store, api, tmp_path, capsys):
    out = tmp_path / "head"
    out.mkdir()
    (out / "last.pt").write_bytes(os.urandom(300))
    line = _one_error_line(capsys, cli(_train(store, out)))
    assert str(out / "last.pt") in line and "--no-resume" in line and "--out" in line


def test_a_last_pt_of_another_format_names_the_file(store, api, tmp_path, capsys):
    import torch

    out = tmp_path / "head"
    out.mkdir()
    torch.save({"weights": torch.zeros(2)}, out / "last.pt")
    line = _one_error_line(capsys, cli(_train(store, out)))
    assert str(out / "last.pt") in line and "not a last.pt" in line and "--no-resume" in line


def test_a_full_disk_names_the_file(store, api, tmp_path, monkeypatch, capsys):
    import torch

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "head"
    line = _one_error_line(capsys, cli([*_train(store, out), "--no-resume"]))
    assert str(out) in line and ".pt" in line and "no space left" in line.lower()
    assert not [p for p in out.iterdir() if p.suffix == ".pt" or ".tmp" in p.name]  # nothing half-written


# -- the temporary Prefect server: dies with the command; a late one does not stop `av2t extract`


def _env(home: Path, **more: str) -> dict[str, str]:
    """A clean environment for an `av2t` subprocess: no API URL, no debug, no start-up allowance set."""
    drop = ("PREFECT_API_URL", "AV2T_DEBUG", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env | more


# `av2t extract` whose flow waits: the real command path (main, its SIGTERM handler, the server, a flow).
SLOW_EXTRACT = """
import sys, time
from prefect import flow
import flows.extract


@flow(name="extract-features")
def waits(root, subset):
    print("flow running", flush=True)
    time.sleep(300)


flows.extract.extract_features = waits
from flows.cli import main

sys.exit(main(["extract", "--root", "nowhere", "--subset", "s4"]))
"""


def _children(pid: int) -> list[int]:
    """Every descendant of pid (Linux /proc)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG and /proc are Linux")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_temporary_server_ends_with_the_command(sig, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_EXTRACT],
        cwd=tmp_path,
        env=_env(tmp_path / "prefect"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "flow running" in line:
                break
        else:
            pytest.fail("the flow never ran:\n" + "".join(seen[-30:]))
        server = [p for p in _children(proc.pid) if "uvicorn" in Path(f"/proc/{p}/cmdline").read_text()]
        assert server, "no temporary server child"
        proc.send_signal(sig)
        deadline = time.time() + 20
        while any(_alive(p) for p in server) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in server), f"server {server} outlived a {sig.name} of av2t"
        rest = proc.communicate(timeout=60)[0]
        if sig == signal.SIGTERM:
            assert proc.returncode == 143, rest
            assert rest.strip().splitlines()[-1] == "av2t: terminated (SIGTERM)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_extract_runs_without_prefect_when_the_server_is_late(tmp_path):
    from pipeline.data.synth import write_synthetic

    root = tmp_path / "data"
    write_synthetic(root, "s4", videos=3, seed=1)
    store = tmp_path / "store.zarr"
    argv = ["extract", "--root", str(root), "--subset", "s4", "--store", str(store), "--encoders", "gt"]
    env = _env(tmp_path / "prefect", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    notes = [line for line in out.stderr.splitlines() if "without Prefect" in line]
    assert len(notes) == 1 and "did not answer within 1 s" in notes[0], out.stderr
    assert "train/gt@" in out.stdout and "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_garbage_last_pt_through_the_real_command_prints_no_traceback(store, api, tmp_path):
    """The whole stderr of `av2t train` (Prefect's log lines too): the error once, no traceback."""
    out = tmp_path / "head"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint at all")
    run = subprocess.run(
        [sys.executable, "-m", "flows.cli", *_train(store, out)],
        cwd=tmp_path,
        env=_env(tmp_path / "prefect", PREFECT_API_URL=api),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("av2t: error: ") and str(out / "last.pt") in last and "--no-resume" in last
