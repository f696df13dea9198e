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
import time
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


# -- 5. a broken pipe: quiet, exit 141


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> str:
    """A tiny store (one split, one fake encoder, every block written)."""
    from store_helpers import block_data, open_encoder

    url = str(tmp_path_factory.mktemp("small") / "s.zarr")
    enc = open_encoder(url)
    for b in range(enc.split.n_blocks):
        enc.write_block(b, block_data(enc, b))
    return url


def _av2t(*argv: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv], env=env, stderr=subprocess.PIPE, text=True, **kw
    )


def test_a_reader_that_goes_away_ends_the_command_quietly(small_store):
    """`av2t cache info S --json | head -n 0`: the pipe is closed before anything is written."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the command prints
    proc = _av2t("cache", "info", small_store, "--json", stdout=w)
    os.close(w)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 141, err
    assert err == ""


# -- 8. a truncated zarr.json of an array: the file named, from every command that reads the store


@pytest.mark.parametrize("command", ["info", "verify"])
def test_a_truncated_array_zarr_json_names_the_file(small_store, command, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(small_store, copy)
    (meta,) = copy.glob("*/*/encoders/*/emb/zarr.json")
    meta.write_bytes(meta.read_bytes()[:300])
    line = _one_error_line(capsys, cli(["cache", command, str(copy)]))
    assert str(meta) in line and "not valid JSON" in line


# -- 7. `av2t serve`: a reports folder it cannot write is refused at the start


def test_serve_refuses_a_reports_folder_it_cannot_write(tmp_path, capsys):
    for name in ("data", "runs", "reports"):
        (tmp_path / name).mkdir()
    reports = tmp_path / "reports"
    mounted = False
    if os.geteuid() == 0:  # root writes into a read-only mode folder: make it a read-only filesystem
        args = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(reports)]
        if subprocess.run(args, capture_output=True).returncode:
            pytest.skip("root, and cannot mount a read-only tmpfs here")
        mounted = True
    else:
        reports.chmod(0o555)
    try:
        argv = ["serve", "--root", str(tmp_path / "data"), "--checkpoints", str(tmp_path / "runs")]
        line = _one_error_line(capsys, cli([*argv, "--reports", str(reports)]))
    finally:
        if mounted:
            subprocess.run(["umount", str(reports)], check=True)
    assert f"--reports {reports}" in line and "cannot write" in line


def _scheduled_runs(url: str) -> list:
    from prefect_server import post_json

    return post_json(
        url, "flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}, "limit": 50}
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "words"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")]
)
def test_serve_pauses_its_deployments_and_exits_on_ctrl_c_or_sigterm(sig, code, words, tmp_path):
    import signal
    import time

    from prefect_server import SERVED, _served, nightly_folders, post_json, prefect_server

    with prefect_server(tmp_path / "home", serve=False) as env:
        url, log = env["PREFECT_API_URL"], tmp_path / "serve.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "serve", *nightly_folders(tmp_path / "home")],
                env=env,
                cwd=str(REPO),
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.time() + 180  # served, and the server has scheduled the nightly's next runs
            while not (set(SERVED) <= _served(url) and _scheduled_runs(url)):
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.5)
            # The deployments are registered before the Prefect runner starts, and a runner cancelled before it has
            # entered never pauses them (known gap, in the closing note): give it time to enter.
            time.sleep(5)
            os.killpg(proc.pid, getattr(signal, sig))
            assert proc.wait(timeout=60) == code, log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log.read_text()
        assert f"av2t: {words}" in text and "All deployments have been paused!" in text, text[-2000:]
        # paused, so the server dropped the nightly's scheduled runs: no run waits for a runner that is gone
        deployments = post_json(url, "deployments/filter", {"limit": 50})
        assert {d["name"] for d in deployments} == set(SERVED) and all(d["paused"] for d in deployments)
        assert _scheduled_runs(url) == []


def _start_script(code: str) -> subprocess.Popen:
    """python -c code with the repo importable, its output read as text."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ready(proc: subprocess.Popen) -> subprocess.Popen:
    """proc, once it printed its first line, "ready"."""
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.poll() is not None else ""
    return proc


HUNG_SHUTDOWN = """
import asyncio, time
import flows.serve as serve
serve.STOP_S = 1.0

async def start():
    print("ready", flush=True)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.to_thread(time.sleep, 60)  # a shutdown that never ends (a runner waiting on a stuck thread)

serve.serve_until_stopped(start)
"""


def test_serve_ends_on_ctrl_c_even_when_the_runner_hangs():
    import signal
    import time

    proc = _ready(_start_script(HUNG_SHUTDOWN))
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - t < 20, err
    assert "av2t: interrupted (the Prefect runner did not stop within 1 s)" in err


CLEAN_SHUTDOWN = """
import asyncio
import flows.serve as serve

async def start():
    print("ready", flush=True)
    try:
        await asyncio.sleep(60)
    finally:
        for _ in range(3):  # the runner's shutdown still awaits (pausing its deployments over HTTP)
            await asyncio.sleep(0.1)
        print("paused", flush=True)

try:
    serve.serve_until_stopped(start)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""


def test_serve_lets_the_runner_shut_down_then_raises_keyboardinterrupt():
    import signal

    proc = _ready(_start_script(CLEAN_SHUTDOWN))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.split() == ["paused", "KeyboardInterrupt"], (out, err)


# -- 6. --overrides: validated against the encoders and their configs before any file is written


@pytest.mark.parametrize(
    ("overrides", "want"),
    [
        ({"sma2": {"trunk_block": 0}}, "unknown encoder 'sma2' (did you mean 'sam2'?)"),
        ({"sam2": {"nope": 1}}, "sam2.nope: no such field"),
        ({"sam2": {"trunk_blok": 0}}, "sam2.trunk_blok: no such field (did you mean 'trunk_block'?)"),
    ],
)
def test_a_bad_override_is_refused_naming_the_option_before_anything_is_written(
    overrides, want, tmp_path, capsys
):
    store = tmp_path / "s.zarr"
    argv = ["extract", "--root", str(tmp_path / "data"), "--subset", "s4", "--store", str(store)]
    line = _one_error_line(capsys, cli([*argv, "--overrides", json.dumps(overrides)]))
    assert "--overrides" in line and want in line
    assert list(tmp_path.iterdir()) == []


def test_valid_overrides_pass():
    from pipeline.settings import ExtractConfig

    cfg = ExtractConfig(
        root=Path("r"), overrides={"sam2": {"trunk_block": 0}, "clip": {"impl": "clip_image"}}
    )
    assert cfg.overrides["sam2"] == {"trunk_block": 0}


# -- 3. extractions creating one store together


WRITER = """
import os, sys, time
from store_helpers import block_data, open_encoder
while not os.path.exists(sys.argv[2]):  # start together
    time.sleep(0.001)
enc = open_encoder(sys.argv[1])
for b in range(int(sys.argv[3]), enc.split.n_blocks, 2):
    enc.write_block(b, block_data(enc, b))
print("done", flush=True)
"""


def test_writers_creating_one_store_together_all_finish_and_the_store_verifies(tmp_path):
    from cache import FeatureStore
    from cache.verify import verify_store

    url, go = str(tmp_path / "s.zarr"), tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(go), str(i % 2)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    time.sleep(3)  # every writer has imported and waits
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "done", err[-2000:]
    assert verify_store(FeatureStore(url, mode="r")).ok


def test_a_group_being_created_is_waited_for(tmp_path):
    """A reader meeting a split group whose attributes are not written yet waits for them (not KeyError)."""
    import threading

    import zarr
    from store_helpers import make_index

    from cache import FeatureStore

    url = str(tmp_path / "s.zarr")
    store = FeatureStore(url)
    index = make_index()
    done = store.require_split("s4", "test", index, 4)
    attrs = dict(done.group.attrs)
    grp = zarr.open_group(url, mode="a", path="s4/test")
    grp.attrs.clear()  # as a writer leaves it between creating the group and writing its attributes
    timer = threading.Timer(0.5, lambda: grp.attrs.update(attrs))
    timer.start()
    try:
        assert FeatureStore(url, mode="r").split("s4", "test").n_rows == len(index)
    finally:
        timer.join()


def test_a_group_whose_creation_was_cut_short_is_made_again(tmp_path, monkeypatch):
    import zarr
    from store_helpers import ARRAYS, PROVENANCE, make_index

    import cache.store
    from cache import FeatureStore, StoreError

    url = str(tmp_path / "s.zarr")
    FeatureStore(url).require_split("s4", "test", make_index(), 4).require_encoder("fake", PROVENANCE, ARRAYS)
    (key,) = [k for k in zarr.open_group(url, path="s4/test/encoders").group_keys()]
    zarr.open_group(url, mode="a", path=f"s4/test/encoders/{key}").attrs.clear()  # killed before its attrs
    monkeypatch.setattr(cache.store, "CREATING_WAIT_S", 0.2)
    with pytest.raises(StoreError, match="incomplete.*extract"):
        FeatureStore(url, mode="r").split("s4", "test").encoders()
    enc = FeatureStore(url).split("s4", "test").require_encoder("fake", PROVENANCE, ARRAYS)
    assert enc.key == key and enc.rows_done() == 0


# -- also seen: the repair hint prints the extraction's own --root and --preset


def test_the_repair_hint_prints_the_extractions_root_and_preset(tmp_path):
    from store_helpers import ARRAYS, PROVENANCE, block_data, make_index

    from cache import FeatureStore
    from cache.verify import verify_store
    from flows.store_hints import verify_text

    url = str(tmp_path / "s.zarr")
    given = {"root": "/data/AVS bench", "preset": "paper"}
    g = FeatureStore(url).require_split("s4", "test", make_index(), 4)
    enc = g.require_encoder("fake", PROVENANCE, ARRAYS, extracted_with=given)
    for b in range(enc.split.n_blocks):
        enc.write_block(b, block_data(enc, b))
    (chunk,) = [p for p in (tmp_path / "s.zarr").glob("s4/test/encoders/*/emb/c/1/*")]
    chunk.unlink()
    text = verify_text(verify_store(FeatureStore(url, mode="r")))
    assert "--root '/data/AVS bench' --preset paper" in text and "<" not in text, text


def test_brief_keeps_the_start_and_says_how_much_was_cut():
    from pipeline.model.resume import brief

    keys = ", ".join(f"mm_extractor.beit3.encoder.layers.{i}.weight" for i in range(40))
    short = brief(keys)
    assert len(short) < 300 and short.startswith("mm_extractor.beit3.encoder.layers.0.weight")
    assert short.endswith("more characters)")
    assert brief("a, b") == "a, b"


def test_resuming_with_other_settings_says_no_resume_first(tmp_path):
    import torch

    from pipeline.checkpoints import CheckpointError
    from pipeline.model import HeadConfig
    from pipeline.settings import OptimConfig
    from stages.train import HeadRun, try_resume

    head = HeadConfig()
    held = {
        "head": head.model_dump(mode="json"),
        "optim": OptimConfig(lr=5e-3, epochs=40).model_dump(),
        **dict.fromkeys(("trainable", "optimizer", "scheduler", "history"), {}),
        **{"best_mj": 0.0, "seconds": 0.0, "epoch": 0, "torch_rng": torch.get_rng_state()},
    }
    torch.save(held, tmp_path / "last.pt")
    run = HeadRun(
        "head", head, model=None, opt=None, sched=None
    )  # the settings are compared before the model
    with pytest.raises(CheckpointError) as e:
        try_resume(run, tmp_path, OptimConfig(lr=2e-4, epochs=40))
    text = str(e.value)
    assert text.index("--no-resume") < text.index("differences: lr 0.005 -> 0.0002")
    assert "epochs" not in text  # only what differs
