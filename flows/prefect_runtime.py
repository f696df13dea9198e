"""The Prefect API of one `av2t` command: the user's server, or a temporary one that ends with the command.

Without `PREFECT_API_URL`, Prefect would start its own temporary ("ephemeral") server the first time a flow
needs the API, from whatever thread asks, and stop it at interpreter exit. A killed `av2t` (SIGKILL, or a
SIGTERM while that exit never runs) left that server running, and on a busy machine its 20-s start-up
allowance ran out before the server answered. So `flow_api()` starts the same server itself (the same
`uvicorn ... prefect.server.api.server:create_app` command and environment as Prefect's
`SubprocessASGIServer`), from the command's main thread and before any flow:

- the server process asks Linux to SIGKILL it when `av2t` dies (`prctl(PR_SET_PDEATHSIG)`, set in a small
  launcher that then execs uvicorn: no `preexec_fn` in a process that may already run threads), so even a
  SIGKILL of `av2t` takes it along; on a normal end, an error, Ctrl-C or SIGTERM it is stopped in `finally`;
- it waits `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS` for the server, 90 s unless the user set it
  (Prefect's own default is 20 s), and raises `ServerError` if it still does not answer, so that the
  command can run its stage without Prefect instead.

The flows then use it through `PREFECT_API_URL` (Prefect's settings for this process, and the environment
for child processes such as Dask workers). Prefect's console log lines keep their tracebacks only for
unexpected errors (ordinary ones end as one `av2t: error:` line) unless `--debug`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from flows import errors

DEFAULT_STARTUP_TIMEOUT = 90
STARTUP_TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
T = TypeVar("T")

# Runs as the server's process before it becomes uvicorn: die with the parent (Linux), then exec.
_LAUNCHER = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass  # not Linux: the parent's finally (or Prefect's atexit) stops the server
if os.getppid() != parent:  # the parent died before prctl took effect
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class ServerError(RuntimeError):
    """No Prefect API for a flow: the temporary server did not start, or none may be started."""


def api_url() -> str | None:
    """The Prefect API the user configured (environment or profile), if any."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def startup_timeout() -> float:
    """Seconds to wait for the temporary server: the user's setting, else DEFAULT_STARTUP_TIMEOUT."""
    if os.environ.get(STARTUP_TIMEOUT_VAR, "").strip():
        return float(os.environ[STARTUP_TIMEOUT_VAR])
    from prefect.settings import get_current_settings

    eph = get_current_settings().server.ephemeral
    if "startup_timeout_seconds" in eph.model_fields_set:  # set in the user's profile
        return float(eph.startup_timeout_seconds)
    return float(DEFAULT_STARTUP_TIMEOUT)


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _tail(log: IO[bytes], lines: int = 3) -> str:
    """The last lines of the server's output (read once it has exited: the file offset is shared)."""
    try:
        log.seek(0)
        text = log.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


class TemporaryServer:
    """A Prefect API server on a free loopback port, in a child process that dies with this one."""

    def __init__(self, timeout: float | None = None):
        self.timeout = startup_timeout() if timeout is None else timeout
        self.process: subprocess.Popen | None = None
        self.url = ""
        # The server's output: a nameless file (nothing left behind), closed by stop().
        self.log = tempfile.TemporaryFile(prefix="av2t-prefect-server-")  # noqa: SIM115

    def _spawn(self, port: int) -> subprocess.Popen:
        import prefect
        from prefect.settings import get_current_settings

        env = {
            **os.environ,
            **get_current_settings().to_environment_variables(exclude_unset=True),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        env.pop("PREFECT_API_URL", None)
        uvicorn = ["-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent)]
        uvicorn += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
        uvicorn += ["--port", str(port), "--log-level", "error", "--lifespan", "on"]
        return subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *uvicorn],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def start(self) -> str:
        """Start the server and wait until it answers; its API URL. ServerError if it does not start."""
        deadline = time.monotonic() + self.timeout
        for _attempt in range(3):
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}/api"
            self.process = self._spawn(port)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                if _healthy(self.url):
                    return self.url
                time.sleep(0.25)
            else:
                self.stop()
                raise ServerError(
                    f"the temporary Prefect server did not answer within {self.timeout:g} s "
                    f"(raise {STARTUP_TIMEOUT_VAR}, or set PREFECT_API_URL to a running server)"
                )
            if "address already in use" not in _tail(self.log, 20).lower():
                break  # another port would not help
        code = self.process.returncode if self.process is not None else None
        tail = _tail(self.log)
        self.stop()
        raise ServerError(
            f"the temporary Prefect server exited with status {code} while starting"
            + (f": {tail}" if tail else "")
            + " (set PREFECT_API_URL to a running server, e.g. `prefect server start`)"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        p, self.process = self.process, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()


def _drain_prefect_clients() -> None:
    """Send Prefect's queued logs and events while the server still runs (else they fail at exit)."""
    with contextlib.suppress(Exception):
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=5)


class _QuietOrdinaryErrors(logging.Filter):
    """Drop the traceback of an ordinary error from a console log line (av2t prints it as one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not errors.debug() and errors.one_line(exc) is not None:
            record.exc_info, record.exc_text = None, None
        return True


class QuietRunLogs(logging.Filter):
    """A flow run's logs (console and API) without an engine traceback for an outcome the flow chose.

    Prefect's engine re-raises how a run ended and logs it as "Engine execution exited with unexpected
    exception" with a traceback: for a Failed state the flow returned (a Regression), and a second time for
    an exception the run already logged as "Encountered exception during execution". Both records are
    dropped; an ordinary error (a StoreError, bad data: `errors.one_line`) keeps its one ERROR line without
    the traceback, in a flow run or a task run ("Task run failed with exception"). A bug keeps its
    traceback, once.
    """

    ENGINE = "Engine execution exited with unexpected exception"
    RAISED = "Encountered exception during execution"
    TASK_RAISED = "Task run failed with"

    def __init__(self) -> None:
        super().__init__()
        self.logged: set[int] = set()  # ids of the exceptions the run logged as raised

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from prefect.exceptions import FailedRun

        message = str(record.msg)
        if message.startswith(self.ENGINE):
            return not (isinstance(exc, (FailedRun, ChosenFailure)) or id(exc) in self.logged)
        if message.startswith((self.RAISED, self.TASK_RAISED)):
            self.logged.add(id(exc))
            if not errors.debug() and errors.one_line(exc) is not None:
                record.exc_info, record.exc_text = None, None
        return True


class ChosenFailure(Exception):
    """A Failed state's data when a flow ends Failed on purpose (a regression): its message and result."""

    def __init__(self, message: str, result: Any = None):
        super().__init__(message, result)
        self.message, self.result = message, result

    def __str__(self) -> str:
        return self.message


def quiet_run_logs() -> None:
    """Install QuietRunLogs on Prefect's flow-run and task-run loggers (once per process); called first in
    each flow."""
    quiet = QuietRunLogs()  # one for both: a task's exception re-raised by its flow is the same object
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietRunLogs) for f in logger.filters):
            logger.addFilter(quiet)


@contextlib.contextmanager
def _quiet_console() -> Iterator[None]:
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    quiet = _QuietOrdinaryErrors()
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)


@contextlib.contextmanager
def flow_api() -> Iterator[str]:
    """Within: a Prefect API for flows (the configured one, or a temporary server); yields its URL.

    Raises ServerError (before anything ran) when the temporary server cannot start, or when none may be
    started (ephemeral mode turned off and no PREFECT_API_URL).
    """
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    with _quiet_console():
        url = api_url()
        if url:
            yield url
            return
        if not get_current_settings().server.ephemeral.enabled:
            raise ServerError(
                "no Prefect API: set PREFECT_API_URL to a running server (`prefect server start`), "
                "or allow a temporary one (PREFECT_SERVER_EPHEMERAL_ENABLED=true)"
            )
        server = TemporaryServer()
        try:
            url = server.start()
            before = os.environ.get("PREFECT_API_URL")
            os.environ["PREFECT_API_URL"] = url  # child processes (Dask workers) use it too
            try:
                with temporary_settings(updates={PREFECT_API_URL: url}):
                    try:
                        yield url
                    finally:
                        _drain_prefect_clients()
            finally:
                if before is None:
                    os.environ.pop("PREFECT_API_URL", None)
                else:
                    os.environ["PREFECT_API_URL"] = before
        finally:
            server.stop()


def fallback_note(what: str, e: ServerError) -> None:
    """The one line saying that the command runs its stage without Prefect."""
    print(f"av2t: {e}; running {what} directly, without Prefect", file=sys.stderr)


def run_flow(what: str, flow: Callable[[], T], direct: Callable[[], T] | None = None) -> T:
    """flow() with a Prefect API (flow_api); without one, direct() after a line saying so (or ServerError)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(flow_api())
        except ServerError as e:
            if direct is None:
                raise
            fallback_note(what, e)
            return direct()
        return flow()
