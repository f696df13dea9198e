"""The front door and the manual stay true: README.md is short and starts with the two commands, every `av2t`
command line in README.md and docs/*.md parses with the real CLI parser, and every path and symbol the
"where a new thing goes" table names exists where it says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from flows.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")  # `AWS_ENDPOINT_URL=... av2t ...`


def command_lines(text: str) -> list[str]:
    """Every `av2t ...` command of the page's shell code blocks (continuations joined, comments dropped)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # not shell (a layout drawing): an av2t line must still be shell
                words = ["av2t", line] if line.lstrip().startswith("av2t ") else []
            while words and ENV.match(words[0]):
                words = words[1:]
            if words[:1] == ["av2t"]:
                out.append(shlex.join(words))
    return out


ALL = [(p.relative_to(REPO), line) for p in PAGES for line in command_lines(p.read_text())]


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 220
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert [ln.split("#")[0].strip() for ln in first.strip().splitlines()] == [
        "bash scripts/demo.sh",
        "bash scripts/test.sh",
    ]
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / link).is_file(), link


def test_the_pages_hold_commands():
    assert len(ALL) >= 15  # the manual shows its commands; an empty list would make the next test vacuous


@pytest.mark.parametrize(("page", "line"), ALL, ids=[f"{p}:{i}" for i, (p, _) in enumerate(ALL)])
def test_every_av2t_line_parses(page, line, tmp_path, monkeypatch):
    words = shlex.split(line)[1:]
    # The user's own JSON files the line names (a --head file, a sweep): the parser reads them.
    monkeypatch.chdir(tmp_path)
    for w in words:
        if w.endswith(".json") and "/" not in w:
            (tmp_path / w).write_text("{}")
    try:
        build_parser().parse_args(words)
    except SystemExit as e:  # argparse's way of refusing (or of printing --help)
        assert e.code == 0, f"{page}: `{line}` does not parse"


def extending_rows() -> list[str]:
    """The rows of the "where a new thing goes" table."""
    text = (REPO / "docs" / "extending.md").read_text()
    return [ln for ln in text.splitlines() if ln.startswith("| ") and "`" in ln]


def test_the_extending_table_names_what_exists():
    rows = extending_rows()
    assert len(rows) >= 6
    for row in rows:
        ticks = re.findall(r"`([^`]+)`", row)
        paths = [t for t in ticks if re.fullmatch(r"[\w./-]+\.(py|json)", t) and "/" in t]
        for p in paths:
            assert (REPO / p).is_file(), f"{p} (named in docs/extending.md) does not exist"
        sources = {p: (REPO / p).read_text() for p in paths}
        # "`SYMBOL` ... in `path`": the symbol is in that very file.
        for symbol, path in re.findall(r"`@?(\w+)[^`]*`(?: \w+)? in `([\w./-]+\.py)`", row):
            assert re.search(rf"\b{symbol}\b", sources[path]), f"{symbol} is not in {path}"
        # Every other name the row gives in code is in one of its files.
        for t in ticks:
            name = re.match(r"@?([A-Za-z_]\w*)", t)
            if name and t not in paths and len(name.group(1)) > 3 and not t.startswith('"'):
                assert any(re.search(rf"\b{name.group(1)}\b", s) for s in sources.values()), (
                    f"`{t}` (docs/extending.md) is in none of {paths}"
                )


def test_the_table_check_catches_a_stale_row(tmp_path, monkeypatch):
    """The row this test was written for: a `Fusion` literal in config.py that no longer exists."""
    stale = (
        "| fusion head | `pipeline/model/fusion.py` | the `Fusion` literal in `pipeline/model/config.py` |"
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "extending.md").write_text("\n".join([stale] * 6) + "\n")
    for p in ("pipeline/model/fusion.py", "pipeline/model/config.py"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text((REPO / p).read_text())
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path, raising=False)
    globals()["REPO"] = tmp_path
    try:
        with pytest.raises(AssertionError, match="Fusion is not in pipeline/model/config.py"):
            test_the_extending_table_names_what_exists()
    finally:
        globals()["REPO"] = Path(__file__).resolve().parents[1]
