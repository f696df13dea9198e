"""A real Prefect server on loopback with a temporary PREFECT_HOME, plus the project's served deployments."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout} s")


@contextmanager
def prefect_server(home: Path, serve: bool = True):
    """Yield the environment (PREFECT_API_URL set) of a running server with `flows.serve` serving."""
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    prefect = str(Path(sys.executable).parent / "prefect")
    files = ExitStack()
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=files.enter_context(open(logs / "server.log", "w")),  # noqa: SIM115 (the ExitStack closes it)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs = [server]
    try:
        _wait_healthy(env["PREFECT_API_URL"], server, timeout=120)
        if serve:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "flows.serve"],
                    env=env,
                    cwd=str(REPO),
                    stdout=files.enter_context(open(logs / "serve.log", "w")),  # noqa: SIM115
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        yield env
    finally:
        for p in reversed(procs):
            with suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        files.close()


def deployment_run(env: dict, name: str, params: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """`prefect deployment run NAME --param k=v ... --watch`, retried until the served deployment exists."""
    import json

    prefect = str(Path(sys.executable).parent / "prefect")
    args = [prefect, "deployment", "run", name, "--watch", "--watch-timeout", str(int(timeout))]
    for k, v in params.items():
        args += ["--param", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    deadline = time.time() + 120
    while True:
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout + 60)
        if "not found" not in (out.stdout + out.stderr).lower() or time.time() > deadline:
            return out
        time.sleep(2)  # `flows.serve` has not registered the deployment yet
