"""The house: imports point one way (flows -> stages -> store -> pipeline), no module imports
itself back through others, the domain core reads nothing under tests/, and
docs/architecture.md names every module."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("pipeline", "store", "stages", "flows")  # each may import only the ones before it
FORBIDDEN = {"pipeline": ("store", "stages", "flows", "prefect", "prefect_dask", "benchmarks"),
             "store": ("stages", "flows", "prefect", "prefect_dask", "benchmarks"),
             "stages": ("flows", "prefect", "prefect_dask", "benchmarks"),
             "flows": ("benchmarks",)}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
            found |= subs
            if len(subs) < len(node.names):  # names defined in `base` itself, not submodules
                found.add(base)
    return found


def test_imports_point_one_way():
    wrong = []
    for name, path in MODULES.items():
        layer = name.split(".")[0]
        for imp in _imports(name, path):
            if imp.split(".")[0] in FORBIDDEN[layer]:
                wrong.append(f"{name} imports {imp}")
    assert not wrong, wrong


def test_no_import_cycles():
    graph = {n: {i for i in _imports(n, p) if i in MODULES and i != n} for n, p in MODULES.items()}
    # a package's __init__ is not a dependency of its submodules' users here: follow edges only
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles


def _code_strings(path: Path) -> list[str]:
    """String constants of a module's code (docstrings left out: they may cite a test)."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docs]


def test_domain_core_reads_nothing_under_tests():
    users = [n for n, p in MODULES.items() if n.startswith(("pipeline", "store"))
             and any(s == "tests" or s.startswith("tests/") or "/tests/" in s for s in _code_strings(p))]
    assert not users, users


@pytest.mark.parametrize("doc", ["docs/architecture.md"])
def test_architecture_doc_names_every_module(doc):
    text = (ROOT / doc).read_text()
    missing = [str(p.relative_to(ROOT)) for n, p in MODULES.items()
               if p.name != "__init__.py" and f"`{p.relative_to(ROOT).as_posix()}`" not in text]
    assert not missing, f"{doc} does not name: {missing}"
