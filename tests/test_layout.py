"""The package's layout: imports run one way (cli -> ar -> collectors -> evidence), no circles."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ossec_dfir"

# What each layer may import, besides itself and the package root modules
# (errors, config, procfs, hostinfo).
MAY_IMPORT = {
    "cli": {"ar", "collectors", "evidence", "report", "ossec", "ship"},
    "ossec": {"ar", "evidence"},
    "ar": {"collectors", "evidence", "ship"},
    "ship": {"evidence"},
    "report": {"evidence"},
    "collectors": {"evidence"},
    "evidence": set(),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Return the package modules path imports at run time (module level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # A package's __init__ runs before its modules, so importing a.b.c imports a.b too;
    # the inits here hold only docstrings, so the edges that matter are module to module.
    return {name: {m for m in _imports(path, modules) if not paths[m].name == "__init__.py"}
            for name, path in paths.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "root"


def test_no_import_circles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert circles == []


def test_imports_run_down_the_layers():
    wrong = []
    for module, targets in sorted(_graph().items()):
        layer = _layer(module)
        for target in sorted(targets):
            to = _layer(target)
            if to == layer or to == "root":
                continue
            if layer == "root":
                # procfs hashes through evidence.fs; config builds collector params;
                # entry (old installed scripts) and __main__ are doors into ar and cli.
                allowed = to == "evidence" or module.split(".")[-1] in ("entry", "__main__") \
                    or (module.endswith(".config") and target in (
                        "ossec_dfir.collectors.base", "ossec_dfir.ship.targets"))
            else:
                allowed = to in MAY_IMPORT.get(layer, set())
            if not allowed:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_root_modules_are_the_foundation():
    graph = _graph()
    for module in ("ossec_dfir.errors", "ossec_dfir.procfs", "ossec_dfir.hostinfo"):
        assert all(_layer(t) in ("root", "evidence") for t in graph[module]), graph[module]


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "ossec_dfir", "--help"], capture_output=True,
                          text=True, timeout=60, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr
    for command in ("collect", "verify", "install", "demo"):
        assert command in proc.stdout


def test_the_checker_sees_a_circle(tmp_path, monkeypatch):
    """The circle test can fail: a planted a -> b -> a is found."""
    pkg = tmp_path / "ossec_dfir"
    (pkg / "ar").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ar" / "__init__.py").write_text("")
    (pkg / "ar" / "a.py").write_text("from . import b\n")
    (pkg / "ar" / "b.py").write_text("def f():\n    from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    try:
        test_no_import_circles()
    except AssertionError:
        return
    raise AssertionError("a circle went unseen")
