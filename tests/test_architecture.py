"""The import rules of the layers: flows -> stages -> (cache, pipeline), with one shared provenance module.

- no module of stages/ imports another module of stages/;
- pipeline/ and cache/ import neither stages, flows nor prefect;
- pipeline/ never imports cache/; cache/ imports from pipeline/ only `pipeline.provenance`;
- no import circle between the files of cache/, and no module of cache/ imports a `_private` name.
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


def _source(node: ast.ImportFrom, me: str, is_package: bool) -> str:
    """The module a `from ... import` statement imports from (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    package = me if is_package else me.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _import_graph(*packages: str) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (function-level imports included). `from pkg import
    mod` names the module pkg.mod; `from pkg import name` names pkg (its __init__); the implicit import of a
    module's parent package is not an edge (every module would circle with its package's __init__)."""
    mods = {_module(p): p for package in packages for p in _modules(package)}
    graph: dict[str, set[str]] = {}
    for me, path in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                source = _source(node, me, path.name == "__init__.py")
                for a in node.names:
                    if f"{source}.{a.name}" in mods:
                        edges.add(f"{source}.{a.name}")
                    elif source in mods:
                        edges.add(source)
        graph[me] = edges - {me}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_in_cache():
    graph = _import_graph("cache")
    assert {"cache.errors", "cache.specs", "cache.shards", "cache.store"} <= set(graph)
    assert "cache.store" not in graph["cache.quant"], "cache.quant imports the specs, not the store"
    assert not _cycles(graph), f"import circles between the files of cache/: {_cycles(graph)}"


def test_the_import_graph_finds_a_circle(tmp_path, monkeypatch):
    """The circle this rule was written for: quant imported the store, the store (in a function) quant."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from pkg.store import Store\n")
    (tmp_path / "pkg" / "quant.py").write_text("from pkg.store import Spec\n")
    (tmp_path / "pkg" / "store.py").write_text("def f():\n    from pkg import quant\n")
    (tmp_path / "pkg" / "other.py").write_text("from pkg import Store\nfrom . import quant\n")
    graph = _import_graph("pkg")
    assert graph["pkg.other"] == {"pkg", "pkg.quant"} and graph["pkg.store"] == {"pkg.quant"}
    assert _cycles(graph) == [["pkg.quant", "pkg.store"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _private_imports(path: Path) -> list[str]:
    """`from m import _name` (and `import m._name`) of a module other than the file's own."""
    me = _module(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            source = _source(node, me, path.name == "__init__.py")
            if source not in (me, "__future__"):
                found += [f"{source}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if any(p.startswith("_") for p in a.name.split("."))]
    return found


OURS = ("pipeline", "cache", "stages", "flows", "bench")


def test_no_import_circle_between_our_files():
    """Over pipeline/, cache/, stages/, flows/ and bench/ together: no file reaches itself through imports."""
    graph = _import_graph(*OURS)
    assert not _cycles(graph), f"import circles: {_cycles(graph)}"


@pytest.mark.parametrize("path", [p for pkg in OURS for p in _modules(pkg)], ids=lambda p: _module(p))
def test_no_module_imports_a_private_name(path):
    found = _private_imports(path)
    assert not found, f"{_module(path)} imports private names {found}: make them public where they live"


def test_the_private_import_finder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    f = tmp_path / "pkg" / "a.py"
    f.write_text("from __future__ import annotations\nfrom pkg.b import _hidden, shown\nfrom . import _c\n")
    assert _private_imports(f) == ["pkg.b._hidden", "pkg._c"]


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


@pytest.mark.parametrize("path", _modules("stages"), ids=lambda p: p.name)
def test_stages_never_import_prefect_or_flows(path):
    upward = [n for n in _imports(path) if _top(n) in ("flows", "prefect", "prefect_dask")]
    assert not upward, (
        f"{_module(path)} imports {upward}: stages are plain functions that know nothing of Prefect"
    )


def test_no_module_shadows_an_installed_or_standard_one():
    """Prefect loads an entrypoint (flows/extract.py:...) with its folder first on sys.path, and `python
    bench/x.py` does the same: a flows/distributed.py once hid dask's `distributed` from the Dask runner."""
    import importlib.metadata

    taken = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    ours = {
        f"{p.parent.relative_to(ROOT)}/{p.stem}"
        for folder in ("flows", "stages", "cache", "pipeline", "bench", "scripts", "tests")
        for p in (ROOT / folder).rglob("*.py")
        if p.stem != "__init__" and ".venv" not in p.parts
    }
    assert sorted(m for m in ours if m.rpartition("/")[2] in taken) == []
