"""Writing files safely: atomically (temporary file + rename), inside their folder, with a clear full-disk error."""

from __future__ import annotations

import contextlib
import errno
import os
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


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success, remove it on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
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
