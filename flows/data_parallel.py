"""Data-parallel `av2t train`: each rank's entry point under torchrun, and the launcher of `--nproc N`.

- Under torchrun (`torchrun --nproc-per-node N -m flows.cli train ...`, or the launcher's
  `python -m torch.distributed.run ... -m flows.data_parallel SETTINGS.json`) every rank runs the train stage
  directly (no Prefect): the stage joins the process group, rank 0 writes and logs. A rank that fails prints
  one line `rank k: cause` and leaves with status 1; a rank that only saw a peer fail leaves quietly (status 3)
  after a grace period in which torchrun tears the run down, so the failed rank's line is the run's message.
- `launch(settings, on_epoch)` runs torchrun for the user (the `train-head` flow with nproc > 1), streams
  rank 0's per-epoch rows to `on_epoch` while it runs, and raises `DistributedRunFailed` with one line naming
  the rank and the cause when a rank fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.settings import TrainFlowSettings
from pipeline import ranks as distributed
from pipeline.files import OutputLock
from pipeline.model.sweep import load_sweep
from stages.train import sweep

DIR_ENV = "AV2T_DIST_DIR"  # where the ranks leave epochs.jsonl, comparison.json and failure files
PEER_EXIT = 3
GRACE_S = 8.0  # a rank that saw a peer fail waits this long for torchrun to stop it


class DistributedRunFailed(RuntimeError):
    """A data-parallel run failed: one line naming the rank and the cause."""


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def rank_main(s: TrainFlowSettings) -> list[dict[str, Any]] | None:
    """Run this rank's part of `av2t train` (torchrun set the environment); rank 0 returns the comparison rows.

    Failures: see the module. Exits the process on failure (SystemExit with the status).
    """
    ranks = distributed.env_ranks()
    where = os.environ.get(DIR_ENV)
    folder = Path(where) if where else None
    cfg = s.stage().model_copy(update={"progress": ranks.main and s.progress and sys.stdout.isatty()})
    if cfg.threads == 0 and ranks.active and os.environ.get("OMP_NUM_THREADS"):
        cfg = cfg.model_copy(update={"threads": int(os.environ["OMP_NUM_THREADS"])})

    def on_epoch(head: str, m: dict[str, Any]) -> None:
        if folder is not None:
            with open(folder / "epochs.jsonl", "a") as f:
                f.write(json.dumps({"head": head, **m}) + "\n")
        elif not cfg.progress:
            print(
                f"[{head}] epoch {m['epoch']}: loss {m['train_loss']:.4f} val M_J {m['val_M_J']:.4f}",
                flush=True,
            )

    try:
        heads = load_sweep(s.sweep_file, s.preset) if s.sweep_file else {"head": cfg.head_config()}
        table = sweep(cfg, heads, on_epoch=on_epoch if ranks.main else None)
    except distributed.PeerFailed:
        time.sleep(GRACE_S)  # torchrun stops this rank when it sees the failed one
        raise SystemExit(PEER_EXIT) from None
    except Exception as e:
        line = _one_line(e)
        if not line.startswith(f"rank {ranks.rank}:"):
            line = f"rank {ranks.rank}: {type(e).__name__}: {line}" if ranks.active else line
        if folder is not None:
            (folder / f"failure-{ranks.rank}.txt").write_text(line)
        print(line, file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        distributed.close()
    rows = table.to_dict(orient="records")
    if ranks.main and folder is not None:
        (folder / "comparison.json").write_text(json.dumps(rows, default=str))
    return rows if ranks.main else None


def torchrun_args(s: TrainFlowSettings) -> list[str]:
    """torchrun's options for these settings: one node (a free port) unless a rendezvous endpoint is given."""
    args = [f"--nproc-per-node={s.nproc}", "--monitor-interval=0.2"]
    if s.rdzv_endpoint:
        args += [
            f"--nnodes={s.nnodes}",
            f"--node-rank={s.node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={s.rdzv_endpoint}",
            f"--rdzv-id={s.rdzv_id}",
            f"--rdzv-conf=join_timeout={int(s.rdzv_timeout_s)}",
        ]
    elif s.master_port:
        args += ["--nnodes=1", "--node-rank=0", "--master-addr=127.0.0.1", f"--master-port={s.master_port}"]
    else:
        args += ["--standalone"]
    return args


def check_rendezvous(s: TrainFlowSettings) -> None:
    """One line naming the option for a busy --master-port or an unreachable --rdzv-endpoint (before any rank
    starts)."""
    if s.master_port and not s.rdzv_endpoint:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", s.master_port))
            except OSError:
                raise DistributedRunFailed(
                    f"--master-port {s.master_port} is busy: choose a free port or leave it out (a free one is "
                    "picked)"
                ) from None
    if s.rdzv_endpoint and s.node_rank > 0:
        host, _, port = s.rdzv_endpoint.rpartition(":")
        deadline = time.monotonic() + s.rdzv_timeout_s
        while True:
            try:
                socket.create_connection((host or "127.0.0.1", int(port or 29400)), timeout=2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise DistributedRunFailed(
                        f"--rdzv-endpoint {s.rdzv_endpoint}: nothing answers there after {s.rdzv_timeout_s:g} s "
                        "(start node 0 first, or check the host and port)"
                    ) from None
                time.sleep(1)


def _why(folder: Path, log: str, code: int) -> str:
    """The run's one message: a rank's own line, else the rank torchrun saw die and how."""
    lines = [p.read_text().strip() for p in sorted(folder.glob("failure-*.txt"))]
    if lines:
        return lines[0]
    found = [
        (int(m.group(1)), int(m.group(2)))
        for m in re.finditer(r"rank\s*:\s*(\d+).*?\n\s*exitcode\s*:\s*(-?\d+)", log)
    ]
    # torchrun stops the others with SIGTERM once one fails; a peer that saw the failure leaves with PEER_EXIT
    found.sort(key=lambda f: (f[1] in (PEER_EXIT, -signal.SIGTERM), f[0]))
    for rank, status in found:
        if status == PEER_EXIT:
            continue
        if status < 0:
            name = signal.Signals(-status).name
            hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
            return f"rank {rank}: killed by {name}{hint}"
        return f"rank {rank}: exited with status {status}"
    tail = [x for x in log.strip().splitlines() if x.strip()][-1:] or [f"torchrun exited with status {code}"]
    return tail[0].strip()


def launch(
    s: TrainFlowSettings, on_epoch: Callable[[str, dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Run `av2t train` on s.nproc ranks through torchrun; rank 0's comparison rows. Streams rank 0's per-epoch
    rows to on_epoch while the run goes; a failed rank raises DistributedRunFailed('training failed: rank k:
    cause')."""
    check_rendezvous(s)
    lock = OutputLock(s.out).acquire()  # held for the ranks (rank 0 writes under it)
    folder = Path(tempfile.mkdtemp(prefix="av2t-dist-"))
    try:
        settings = folder / "settings.json"
        settings.write_text(s.model_copy(update={"nproc": 1}).model_dump_json())
        env = {**os.environ, DIR_ENV: str(folder), "PYTHONUNBUFFERED": "1", distributed.LOCK_ENV: "1"}
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, s.nproc))))
        cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(s), "-m", "flows.data_parallel"]
        with open(folder / "torchrun.log", "w") as log:
            proc = subprocess.Popen([*cmd, str(settings)], env=env, stderr=log)
            seen = 0
            while True:
                done = proc.poll() is not None
                seen = _stream(folder / "epochs.jsonl", seen, on_epoch)
                if done:
                    break
                time.sleep(0.3)
        if proc.returncode != 0:
            why = _why(folder, (folder / "torchrun.log").read_text(errors="replace"), proc.returncode)
            raise DistributedRunFailed(f"training failed: {why}")
        return json.loads((folder / "comparison.json").read_text())
    finally:
        lock.release()
        shutil.rmtree(folder, ignore_errors=True)


def _stream(path: Path, seen: int, on_epoch: Callable[[str, dict[str, Any]], None] | None) -> int:
    """Hand the rows written since `seen` lines to on_epoch; the number of lines handed so far."""
    if not path.is_file():
        return seen
    lines = path.read_text().splitlines()
    complete = lines if path.read_text().endswith("\n") else lines[:-1]
    for line in complete[seen:]:
        row = json.loads(line)
        if on_epoch is not None:
            on_epoch(row.pop("head"), row)
    return len(complete)


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.data_parallel SETTINGS.json`: one rank (torchrun starts it)."""
    args = sys.argv[1:] if argv is None else argv
    s = TrainFlowSettings.model_validate_json(Path(args[0]).read_text())
    rank_main(s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
