"""Names read from a metadata CSV (video ids, S4 categories) become folder and file names: keep them names.

A name is refused when it could leave its folder or is not a name at all: empty or whitespace only, '.' or
'..', a path separator ('/' or '\\'), or a NUL or other control character. Everything else is a name, including
the real AVSBench ids that start with '-' or '_' (`-0IoCrXxRsw_30000`). Use `check_name` for every file or
folder name built from a video id or category (outputs included), so no file lands outside its folder.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.errors import DataError

SEPARATORS = ("/", "\\")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a file or folder name, or None when it can."""
    if not name.strip():
        return "is empty"
    if name in (".", ".."):
        return "is '.' or '..', not a name"
    if any(s in name for s in SEPARATORS):
        return "holds a path separator ('/' or '\\'), so it would reach another folder"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "holds a control character"
    return None


def check_name(name: str, what: str = "video id", source: str | Path | None = None) -> str:
    """Return `name` when it is a plain name; raise DataError saying which name, where from, and why not.

    `what` says what the name is ("video id", "category"); `source` where it came from (a CSV and its line,
    a folder): the message starts with it, as every DataError names its file.
    """
    problem = name_problem(name)
    if problem is None:
        return name
    where = f"{source}: " if source is not None else ""
    raise DataError(f"{where}{what} {name!r} {problem}: refused, it is used as a file name")
