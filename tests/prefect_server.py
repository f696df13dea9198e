"""A real Prefect server on loopback with a temporary PREFECT_HOME, plus the project's served deployments.

`av2t serve` (as `python -m flows.cli serve`) serves them, its nightly on <home>/nightly/{data,runs,reports}:
folders created empty here, which a test fills (it reads them back from the nightly deployment's parameters).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

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


SERVED = (
    "extract",
    "train",
    "on-demand",
    "nightly",
    "segment",
)  # the deployment names `av2t serve` registers


def nightly_folders(home: Path) -> list[str]:
    """`av2t serve` options for a nightly on empty folders under home (the nightly tree of the tests)."""
    base = home / "nightly"
    for name in ("data", "runs", "reports"):
        (base / name).mkdir(parents=True, exist_ok=True)
    return [
        "--root",
        str(base / "data"),
        "--checkpoints",
        str(base / "runs"),
        "--reports",
        str(base / "reports"),
    ]


def post_json(url: str, path: str, body: dict, timeout: float = 10) -> Any:
    """POST body to the server's API at url/path; the decoded answer."""
    request = urllib.request.Request(
        f"{url}/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


def _served(url: str) -> set[str]:
    try:
        return {d["name"] for d in post_json(url, "deployments/filter", {"limit": 50}, timeout=5)}
    except OSError:
        return set()


def _wait_served(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until `flows.serve` has registered every deployment (its log's tail if it exits first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flows.serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if set(SERVED) <= _served(url):
            return
        time.sleep(0.5)
    raise TimeoutError(f"flows.serve did not register {SERVED} within {timeout} s: {log.read_text()[-2000:]}")


@contextmanager
def prefect_server(home: Path, serve: bool = True, serve_args: list[str] | None = None):
    """Yield the environment (PREFECT_API_URL set) of a running server with `flows.serve` serving.

    serve_args: the `av2t serve` options (default: the nightly on empty folders under home, nightly_folders).
    """
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
            args = nightly_folders(home) if serve_args is None else serve_args
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "flows.cli", "serve", *args],
                    env=env,
                    cwd=str(REPO),
                    stdout=files.enter_context(open(logs / "serve.log", "w")),  # noqa: SIM115
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            _wait_served(env["PREFECT_API_URL"], procs[-1], logs / "serve.log", timeout=180)
        yield env
    finally:
        # `serve` first, with Ctrl-C (it then pauses its deployments while the server still answers).
        for p, sig, wait in ((procs[1:], signal.SIGINT, 15), (procs[:1], signal.SIGTERM, 30)):
            for proc in p:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
            for proc in p:
                try:
                    proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    with suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        files.close()


def deployment_run(env: dict, name: str, params: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """`prefect deployment run NAME --param k=v ... --watch`, retried until the served deployment exists."""
    prefect = str(Path(sys.executable).parent / "prefect")
    args = [prefect, "deployment", "run", name, "--watch", "--watch-timeout", str(int(timeout))]
    for k, v in params.items():
        args += ["--param", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    deadline = time.time() + 120
    while True:
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout + 60)
        if "not found" not in (out.stdout + out.stderr).lower() or time.time() > deadline:
            break
        time.sleep(2)  # `flows.serve` has not registered the deployment yet
    if out.returncode != 0:  # a failed run's why, for the assertion message (its page's logs, serve's output)
        out.stderr += (
            "\n--- run logs ---\n" + server_logs(env) + "\n--- serve.log ---\n" + serve_log_tail(env)
        )
    return out


def server_logs(env: dict, limit: int = 60) -> str:
    """The server's newest log lines, of every run, oldest first: what a failed run's page shows."""
    try:
        logs = post_json(env["PREFECT_API_URL"], "logs/filter", {"limit": limit, "sort": "TIMESTAMP_DESC"})
    except OSError as e:
        return f"(no logs: {e})"
    return "\n".join(f"{x['timestamp']} {x['level']} {x['name']}: {x['message']}" for x in reversed(logs))


def serve_log_tail(env: dict, chars: int = 4000) -> str:
    """The end of `av2t serve`'s output (the flow runs' own stderr lands there)."""
    log = Path(env["PREFECT_HOME"]) / "logs" / "serve.log"
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no serve.log)"
