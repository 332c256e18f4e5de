"""Code versions from the definitions an artifact's computation really reaches.

`code_key("stages.features_compute")` hashes every top-level definition (function, class,
assignment) of that module and, transitively, every project definition those name: a function
called, a class instantiated, a constant read, through `from x import f`, `import x as m; m.f`
and imports inside functions alike. No hand-kept list can miss a helper that computes a value,
and nothing that only sits beside it counts:

- a new option of another stage (a field of `PredictConfig`), a new CLI flag, a docstring or a
  comment leave a key as it was: they are not reached, or not code;
- a change to a reached definition (the FAN's forward, the alignment, the reader that decides a
  frame's pixels) changes it;
- moving or renaming a module changes nothing: a definition is hashed by its code, not by where
  it lives (a renamed *definition* is a change to the code that names it, so it counts).

Type annotations and the config package (`DECLARATIONS`) are not followed: they declare, they
do not compute (the settings that reach the code are in the artifact's identity). Module-level statements that are not definitions
(`if`, calls, loops) count for every definition of their module. `code_key("m:name")` starts
from one definition. Modules outside the project (torch, zarr, ...) are not hashed: their
versions are recorded in provenance instead.
"""
from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PROJECT_PACKAGES = ("pipeline", "stages", "store", "flows")
KEY_LENGTH = 16
RESIDUE = "<module>"  # the unit of a module's non-definition statements
# Settings declared, not computed: the config models and their YAML loader. What they resolve
# to is in every artifact's identity, so a new field of one stage's section (or a new Dask
# option) is not a change to another stage's computation.
DECLARATIONS = ("pipeline.config",)

Unit = tuple[str, str]  # (module, top-level name)


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PROJECT_PACKAGES


ROOT = Path(__file__).resolve().parents[1]  # the folder holding the project's packages


@lru_cache(maxsize=None)
def _origin(name: str) -> Path | None:
    """The source file of a project module (a package's __init__.py), None if no such module.
    Found on disk beside this package, never by importing anything."""
    if not _is_project(name):
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def read_source(path: Path) -> str:
    """A module's source text (a seam for tests that change one module)."""
    return path.read_text(encoding="utf-8")


@dataclass
class _Module:
    defs: dict[str, list[ast.AST]] = field(default_factory=dict)  # name -> its statements
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # local -> (module, attr)
    residue: list[ast.AST] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # name -> unit_digest, memoised


_PARSED: dict[tuple, _Module] = {}  # (name, mtime_ns, size) -> parsed module


def clear_cache() -> None:
    _PARSED.clear()


def _parsed(name: str) -> _Module:
    path = _origin(name)
    st = path.stat()
    key = (name, st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        tree = _strip_docstrings(ast.parse(read_source(path), filename=str(path)))
        _PARSED[key] = _index(name, path.name == "__init__.py", tree)
    return _PARSED[key]


def _index(name: str, is_pkg: bool, tree: ast.Module) -> _Module:
    mod = _Module()
    package = name if is_pkg else name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            mod.defs.setdefault(node.name, []).append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            for n in names or [RESIDUE]:
                mod.defs.setdefault(n, []).append(node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mod.imports.update(_bindings(node, package))
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            mod.residue.append(node)
    return mod


def _bindings(node: ast.Import | ast.ImportFrom, package: str) -> dict[str, tuple[str, str | None]]:
    """local name -> (module, attribute or None for the module itself), project imports only."""
    out: dict[str, tuple[str, str | None]] = {}
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.asname:
                out[a.asname] = (a.name, None)
            else:  # `import a.b` binds `a`; attribute chains descend from there
                out[a.name.split(".")[0]] = (a.name.split(".")[0], None)
        return {k: v for k, v in out.items() if _is_project(v[0])}
    if node.level:
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)]
        src = ".".join(base + ([node.module] if node.module else []))
    else:
        src = node.module or ""
    for a in node.names:
        sub = f"{src}.{a.name}"
        out[a.asname or a.name] = (sub, None) if _origin(sub) else (src, a.name)
    return {k: v for k, v in out.items() if _is_project(v[0])}


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _code_nodes(node: ast.AST):
    """Every node of `node` but those inside type annotations (they declare, not compute)."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        for name, value in ast.iter_fields(n):
            if name in ("annotation", "returns"):
                continue
            if isinstance(value, ast.AST):
                todo.append(value)
            elif isinstance(value, list):
                todo.extend(v for v in value if isinstance(v, ast.AST))


def _refs(module: str, nodes: list[ast.AST]) -> set[Unit]:
    """The project units named by `nodes` of `module`: local definitions, imported names, and
    attributes of imported project modules (`m.f`, `pkg.sub.f`)."""
    mod = _parsed(module)
    out: set[Unit] = set()
    for node in nodes:
        for n in _code_nodes(node):
            if isinstance(n, ast.Attribute):
                chain, base = [], n
                while isinstance(base, ast.Attribute):
                    chain.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name) and base.id in mod.imports:
                    target, attr = mod.imports[base.id]
                    if attr is None:  # a module: walk its submodules, then name a definition
                        for a in reversed(chain):
                            if not _origin(f"{target}.{a}"):
                                out.add((target, a))
                                break
                            target = f"{target}.{a}"
            elif isinstance(n, ast.Name):
                if n.id in mod.defs:
                    out.add((module, n.id))
                elif n.id in mod.imports:
                    target, attr = mod.imports[n.id]
                    out.add((target, attr) if attr else (target, RESIDUE))
    return out


def _resolve(unit: Unit, seen: frozenset = frozenset()) -> Unit | None:
    """Where a name is defined: followed through re-exports (`from a import f` in b, b.f)."""
    module, name = unit
    if _origin(module) is None:
        raise ValueError(f"code_key: no project module named {module!r}")
    mod = _parsed(module)
    if name == RESIDUE or name in mod.defs:
        return unit
    if name in mod.imports and unit not in seen:
        target, attr = mod.imports[name]
        return _resolve((target, attr or RESIDUE), seen | {unit})
    return None  # an attribute set elsewhere, a submodule never imported: nothing to hash


def _units_of(unit: Unit) -> list[ast.AST]:
    module, name = unit
    mod = _parsed(module)
    return mod.residue if name == RESIDUE else mod.defs[name]


def _declares(module: str) -> bool:
    return any(module == d or module.startswith(d + ".") for d in DECLARATIONS)


def closure(*entries: str) -> list[Unit]:
    """Every project definition reached from `entries` ("module" for all of its definitions,
    "module:name" for one), sorted."""
    todo: list[Unit] = []
    for e in entries:
        module, _, name = e.partition(":")
        if _origin(module) is None:
            raise ValueError(f"code_key: no project module named {module!r}")
        todo += [(module, name)] if name else [(module, n) for n in _parsed(module).defs]
        todo.append((module, RESIDUE))
    seen: set[Unit] = set()
    while todo:
        unit = _resolve(todo.pop())
        if unit is None or unit in seen or _declares(unit[0]):
            continue
        seen.add(unit)
        todo.append((unit[0], RESIDUE))  # a module's own statements come with any of its names
        todo.extend(_refs(unit[0], _units_of(unit)) - seen)
    return sorted(seen)


def unit_digest(unit: Unit) -> str:
    """Hash of one definition's code (syntax tree without docstrings and positions)."""
    memo = _parsed(unit[0]).digests
    if unit[1] not in memo:
        dump = "\n".join(ast.dump(n, include_attributes=False) for n in _units_of(unit))
        memo[unit[1]] = hashlib.sha256(dump.encode()).hexdigest()
    return memo[unit[1]]


def code_key(*entries: str) -> str:
    """One key for the code of `entries` and every project definition they reach. Module names
    are not part of it, so moving code between modules keeps every key."""
    h = hashlib.sha256()
    for digest in sorted(unit_digest(u) for u in closure(*entries) if _units_of(u)):
        h.update(f"{digest}\n".encode())
    return h.hexdigest()[:KEY_LENGTH]
