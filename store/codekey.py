"""Code versions from the modules a stage really imports.

`code_key("stages.train")` hashes the code of `stages.train` and of every project module it
imports, transitively (imports inside functions included), so no hand-kept module list can miss
the one that changed (loss weights in `pipeline.labels`, folds in `pipeline.folds`, ...).

What is hashed is the module's syntax tree without docstrings: editing a comment or a docstring
keeps every artifact current; any change to code does not. Modules outside the project (torch,
zarr, ...) are not hashed: their versions are recorded in provenance instead.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

PROJECT_PACKAGES = ("pipeline", "stages", "store", "flows")
KEY_LENGTH = 16


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PROJECT_PACKAGES


@lru_cache(maxsize=None)
def _origin(name: str) -> Path | None:
    """The source file of a project module (a package's __init__.py), None if no such module."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def read_source(path: Path) -> str:
    """A module's source text (a seam for tests that change one module)."""
    return path.read_text(encoding="utf-8")


_PARSED: dict[tuple, tuple[set[str], str]] = {}  # (name, mtime_ns, size) -> (imports, digest)


def clear_cache() -> None:
    _PARSED.clear()


def _parsed(name: str) -> tuple[set[str], str]:
    """(project imports, code digest) of a module, parsed once per file version."""
    path = _origin(name)
    st = path.stat()
    key = (name, st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        tree = ast.parse(read_source(path), filename=str(path))
        imports = _imports(name, tree)
        dump = ast.dump(_strip_docstrings(tree), include_attributes=False)
        _PARSED[key] = (imports, hashlib.sha256(dump.encode()).hexdigest())
    return _PARSED[key]


def _imports(name: str, tree: ast.Module) -> set[str]:
    """Project modules named by any import statement in the module (any depth)."""
    is_pkg = _origin(name).name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            parts = mod.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            found.update(f"{mod}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {m for m in found if _is_project(m) and _origin(m) is not None}


def module_closure(*entries: str) -> list[str]:
    """Every project module reachable from `entries` through imports, sorted."""
    seen: set[str] = set()
    todo = [e for e in entries]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if _origin(name) is None:
            raise ValueError(f"code_key: no project module named {name!r}")
        seen.add(name)
        todo.extend(_parsed(name)[0] - seen)
    return sorted(seen)


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def module_digest(name: str) -> str:
    """Hash of a module's code: its syntax tree without docstrings (comments are not in it)."""
    return _parsed(name)[1]


def code_key(*entries: str) -> str:
    """One key for the code of `entries` and everything of the project they import."""
    h = hashlib.sha256()
    for name in module_closure(*entries):
        h.update(f"{name}:{module_digest(name)}\n".encode())
    return h.hexdigest()[:KEY_LENGTH]
