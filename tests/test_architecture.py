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
