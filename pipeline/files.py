"""Writing files safely: atomically (temporary file + rename), inside their folder, with a clear full-disk error,
one writer per output folder (`OutputLock`)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


class OutputError(OSError):
    """A file could not be written (full disk, no permission, a path outside its folder); the message says which."""


def inside(root: str | Path, *parts: str | Path) -> Path:
    """root / parts, refused when the result would leave root (`..`, absolute parts, separators in names)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        joined = "/".join(str(p) for p in parts)
        raise OutputError(f"{joined!r} would be written outside {root}: refused (a name with '..' or '/'?)")
    return path


# A name that becomes a file or folder name: no separators, no leading dot, so never '..' or absolute.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def safe_name(name: str, what: str) -> str:
    """name, refused unless it is a plain file name (SAFE_NAME, at most 100 characters); `what` says where it came from."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name or len(name) > 100:
        raise OutputError(
            f"{what}: {name!r} is not a safe name for a folder: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, no '..', no '/')"
        )
    return name


def no_space(e: BaseException) -> bool:
    """Whether e is a full disk, however a library wrapped it (its cause / context chain, torch's zip writer)."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        # torch's zip writer reports a failed write only as a short position once the OSError is gone.
        if isinstance(x, RuntimeError) and "inline_container" in str(x) and "unexpected pos" in str(x):
            return True
        x = x.__cause__ or x.__context__
    return False


def _tmp_pid(name: str) -> int | None:
    """The pid in a temporary file name `.<name>.tmp-<pid>` (None for any other name)."""
    m = re.fullmatch(r"\..+\.tmp-(\d+)", name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clean_temp(folder: str | Path, depth: int = 1) -> list[Path]:
    """Remove the temporary files (`.<name>.tmp-<pid>`) that writers killed mid-save left in folder (and its
    sub-folders, `depth` levels down); those of live processes stay. Returns what was removed."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink() and depth > 0:
            removed += clean_temp(p, depth - 1)
        pid = _tmp_pid(p.name)
        if pid is not None and p.is_file() and pid != os.getpid() and not pid_alive(pid):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


class LockedError(OutputError):
    """Another process holds the output folder's lock."""


class OutputLock:
    """One writer per folder: a lock file holding the writer's pid, host and start time.

    Created with O_EXCL (atomic: of two writers one creates it, the other is refused, naming the holder). A
    lock left by a dead process of this host (its pid is gone) is taken over by an atomic replace, under a
    short flock of the folder so that two processes never both take over one stale lock. Re-entrant within a
    process (the CLI takes it before the flow, the stage again inside).
    """

    NAME = ".av2t.lock"
    _held: dict[str, int] = {}
    _guard = threading.Lock()

    def __init__(self, folder: str | Path, what: str = "--out"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / self.NAME

    def _mine(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def _read(self) -> dict[str, Any] | None:
        try:
            held = json.loads(self.path.read_text())
            return held if isinstance(held, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or garbage: not provably stale

    def _stale(self, held: dict[str, Any]) -> bool:
        pid = held.get("pid")
        return held.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)

    def _refuse(self, held: dict[str, Any]) -> LockedError:
        who = f"pid {held.get('pid', '?')} on {held.get('host', '?')}, since {held.get('started', '?')}"
        return LockedError(
            f"{self.folder}: another run writes here ({who}; lock file {self.path}); wait for it to end or "
            f"choose another {self.what} (if no such run is going on, delete {self.path})"
        )

    def _take_over(self, held: dict[str, Any]) -> bool:
        """Replace a stale lock by ours, atomically; False when it changed meanwhile (another took it)."""
        tmp = self.folder / f".{self.NAME}.tmp-{os.getpid()}"
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # serialises take-overs only; creation is O_EXCL
            if self._read() != held:
                return False
            tmp.write_text(json.dumps(self._mine()))
            os.replace(tmp, self.path)
            return True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def acquire(self) -> OutputLock:
        """Take the lock, or raise LockedError naming its holder."""
        key = str(self.path.resolve())
        with self._guard:
            if self._held.get(key):
                self._held[key] += 1
                return self
            self.folder.mkdir(parents=True, exist_ok=True)
            for _ in range(20):
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    held = self._read()
                    if held is None:
                        continue  # released meanwhile: try again
                    if not held:  # created, its holder not written yet: read again shortly
                        time.sleep(0.05)
                        held = self._read() or {}
                    if self._stale(held) and self._take_over(held):
                        break
                    if not self._stale(held):
                        raise self._refuse(held) from None
                    continue
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(self._mine()))
                break
            else:
                raise self._refuse(self._read() or {})
            self._held[key] = 1
            return self

    def release(self) -> None:
        """Give the lock back (the file is removed when this process's last holder releases it)."""
        key = str(self.path.resolve())
        with self._guard:
            self._held[key] -= 1
            if self._held[key]:
                return
            del self._held[key]
            held = self._read()
            if held and held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success, remove it on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as e:
        if no_space(e):
            raise OutputError(
                f"{path}: no space left on the device; free some space and run again "
                "(files written before are intact)"
            ) from e
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call write(file) on a temporary file beside path, fsync it, then rename it onto path."""
    path = Path(path)
    with _writing(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_text(path: str | Path, text: str) -> Path:
    """A text file (UTF-8), written atomically."""
    return write_atomic(path, lambda f: f.write(text.encode()))


def save_torch(obj: Any, path: str | Path) -> Path:
    """torch.save, written atomically: a kill or a full disk mid-save never leaves a broken file."""
    import torch

    return write_atomic(path, lambda f: torch.save(obj, f))
