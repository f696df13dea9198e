"""Ordinary errors (bad input, bad options, a full disk, a missing optional package) as one clear line.

`one_line(e)` is the message `av2t` prints for an ordinary error (`av2t: error: <message>`, exit status 2),
or None for an unexpected one (a bug: its traceback is kept). Light on purpose: the project's error classes
are looked up only among modules already imported (an error of a module never imported cannot have been
raised), so `av2t --help` imports neither torch nor Prefect.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

# The pipeline's errors for bad input (module, class); their messages name the file, store or option.
USER_ERRORS = (
    ("pipeline.data.clips", "DataError"),
    ("cache.errors", "StoreError"),
    ("pipeline.checkpoints", "CheckpointError"),
    ("pipeline.files", "OutputError"),
    ("stages.train", "TrainingDiverged"),
    ("flows.prefect_runtime", "ServerError"),
    ("flows.serve", "DeploymentError"),
)
# An OSError with one of these is the user's environment (a full disk, a missing file), not a bug.
OS_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.ENOENT)
OS_HINTS = {
    errno.ENOSPC: "free some space and run again",
    errno.EDQUOT: "free some space and run again",
}
# Optional packages (import name -> pip name): a store URL's filesystem, the Dask task runner.
OPTIONAL_PACKAGES = {
    "s3fs": "s3fs",
    "gcsfs": "gcsfs",
    "adlfs": "adlfs",
    "prefect_dask": "prefect-dask",
    "distributed": "distributed",
    "dask_kubernetes": "dask-kubernetes",
    "av": "av",
    "gradio": "'av2t[app]'",
}

_debug = False


def debug() -> bool:
    """Whether tracebacks are shown for ordinary errors too (`av2t --debug`, or AV2T_DEBUG=1)."""
    return _debug or os.environ.get("AV2T_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def set_debug(on: bool) -> bool:
    """Turn debug output on or off for this process; returns the previous setting."""
    global _debug
    before, _debug = _debug, on
    return before


def project_error(e: BaseException) -> bool:
    """Whether e is one of the pipeline's own errors for bad input (USER_ERRORS)."""
    for module, name in USER_ERRORS:
        m = sys.modules.get(module)
        cls = getattr(m, name, None) if m is not None else None
        if cls is not None and isinstance(e, cls):
            return True
    return False


def _shown(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:g}"
    if isinstance(x, str):
        return repr(x)
    return str(x)


def validation_problem(err: dict[str, Any]) -> str:
    """One pydantic error as words: 'must be >= 1 (got 0)', 'input should be 'a' or 'b' (got 'c')'."""
    ctx, kind = err.get("ctx") or {}, err.get("type", "")
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        text = f"must be {op} {_shown(ctx.get(key))}"
    else:
        text = str(err.get("msg", "invalid"))
        for prefix in ("Value error, ", "Assertion failed, "):
            text = text.removeprefix(prefix)
        text = text[:1].lower() + text[1:]
    given = err.get("input")
    if err.get("loc") and kind != "missing" and not isinstance(given, (dict, list)):
        text += f" (got {_shown(given)})"
    return text


def validation_line(e: ValidationError, name: Callable[[str], str] | None = None) -> str:
    """All of e's errors in one line; `name` turns a field name into what the user typed (an option)."""
    parts = []
    for err in e.errors(include_url=False):
        loc = [str(x) for x in err.get("loc", ())]
        if loc and name is not None:
            loc[0] = name(loc[0])
        where = ".".join(loc)
        problem = validation_problem(err)
        parts.append(f"{where}: {problem}" if where else problem)
    head = "" if name is not None else f"{e.title}: "
    return head + "; ".join(parts)


def _os_line(e: OSError) -> str | None:
    if e.errno not in OS_ERRNOS:
        return None
    reason = (e.strerror or os.strerror(e.errno)).rstrip(".")
    hint = OS_HINTS.get(e.errno)
    files = [str(f) for f in (e.filename, e.filename2) if f is not None]
    where = f"{' -> '.join(files)}: " if files else ""
    return where + reason + (f"; {hint}" if hint else "")


def missing_package(e: ImportError) -> str | None:
    """The pip name of the optional package an ImportError is about, if it is one."""
    name = (e.name or "").split(".")[0]
    if name in OPTIONAL_PACKAGES:
        return OPTIONAL_PACKAGES[name]
    text = str(e)  # fsspec: "Install s3fs to access S3"
    for module, pip in OPTIONAL_PACKAGES.items():
        if module in text.split() or f"'{module}'" in text:
            return pip
    return None


def message(e: BaseException) -> str:
    """An error's text; a feature-store error's with the commands that fix it (flows.store_hints)."""
    store_errors = sys.modules.get("cache.errors")
    if store_errors is not None and isinstance(e, store_errors.StoreError):
        from flows.store_hints import store_message

        return store_message(e)
    return str(e)


def one_line(e: BaseException) -> str | None:
    """The one-line message for an ordinary error, or None for an unexpected one (a bug)."""
    if project_error(e):
        return " ".join(message(e).split("\n")) or type(e).__name__
    if isinstance(e, ValidationError):
        return validation_line(e)
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON: {e}"
    if isinstance(e, OSError):
        return _os_line(e)
    if isinstance(e, ImportError):
        pip = missing_package(e)
        if pip is not None:
            return f"{e} (an optional package is missing: pip install {pip})"
    return None
