"""The import rules of the layers: flows -> stages -> (cache, pipeline), with one shared provenance module.

- no module of stages/ imports another module of stages/;
- pipeline/ and cache/ import neither stages, flows nor prefect;
- pipeline/ never imports cache/; cache/ imports from pipeline/ only `pipeline.provenance`.
Checked on every import statement of every module (function-level imports included) and at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = "pipeline.provenance"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> list[str]:
    """Every module name an import statement of the file names (absolute, relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append(name)
            # `from pipeline import provenance` names the module through its package
            out += [f"{name}.{a.name}" for a in node.names]
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("stages"), ids=lambda p: p.name)
def test_stages_do_not_import_each_other(path):
    me = _module(path)
    others = [n for n in _imports(path) if _top(n) == "stages" and n not in ("stages", me)]
    assert not others, f"{me} imports {others}: stages know nothing of each other (move it into the library)"


@pytest.mark.parametrize("path", _modules("pipeline") + _modules("cache"), ids=lambda p: _module(p))
def test_library_layers(path):
    me = _module(path)
    names = _imports(path)
    upward = [n for n in names if _top(n) in ("stages", "flows", "prefect", "prefect_dask")]
    assert not upward, f"{me} imports {upward}: the library never imports the stages, flows or Prefect"
    if _top(me) == "pipeline":
        cross = [n for n in names if _top(n) == "cache"]
    else:
        cross = [n for n in names if _top(n) == "pipeline" and n not in ("pipeline", SHARED)]
        cross = [n for n in cross if not n.startswith(SHARED + ".")]
    assert not cross, f"{me} imports {cross}: pipeline/ and cache/ share only {SHARED}"


def test_shared_module_imports_only_the_standard_library():
    names = {_top(n) for n in _imports(ROOT / "pipeline" / "provenance.py")}
    assert names <= {"__future__", "hashlib", "json", "importlib", "typing"}, names


def test_layers_at_run_time():
    code = (
        "import sys, cache, cache.batches, cache.store, cache.hdf5, cache.info; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'stages', 'flows', 'prefect') "
        f"and m not in ('pipeline', '{SHARED}')); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    code = (
        "import sys, pipeline.settings, pipeline.model.config; "
        "print(sorted(m for m in ('torch', 'zarr', 'prefect', 'cache') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"the settings must import light: {out.stdout}"


def test_library_never_imports_bench():
    """bench/ may import anything of the library; nothing of the library imports bench/."""
    found = {
        _module(p): names
        for pkg in ("pipeline", "cache", "stages", "flows")
        for p in _modules(pkg)
        if (names := [n for n in _imports(p) if _top(n) == "bench"])
    }
    assert not found, f"the library imports bench: {found}"


BOOTSTRAP = "    sys.path[0] = str(Path(__file__).resolve().parents[1])"


@pytest.mark.parametrize("path", _modules("bench"), ids=lambda p: p.name)
def test_bench_rules(path):
    """A bench imports no test module (bench.common loads one by path) and touches sys.path only to run as a script."""
    tests = [n for n in _imports(path) if _top(n) in ("tests", "conftest", "official_inputs")]
    assert not tests, f"{_module(path)} imports {tests}: load a test helper with bench.common.test_helper"
    lines = [ln for ln in path.read_text().splitlines() if "sys.path" in ln]
    assert lines in ([], [BOOTSTRAP]), f"{_module(path)} patches sys.path: {lines}"
