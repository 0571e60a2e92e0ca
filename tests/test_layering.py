"""The layering (DESIGN.md section 2; README "How it fits together") as a test.

Every import of our own modules in provisioning/ is read with `ast`: module
level, function level, `if TYPE_CHECKING:` blocks, and the "module:attribute"
strings of our lazy tables (cli/main.py COMMANDS, ops/providers BUILTIN). It
fails on an import the table below does not allow, and on any import cycle
between modules, naming the files and lines. The op scripts under
provisioning/lib/ are checked as the layer "lib".

Type-only imports (under TYPE_CHECKING) must obey the table too, but do not
make cycles: nothing runs them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

# -- the rules -------------------------------------------------------------------------
#
# layer          modules (longest prefix wins)            may import (besides its own layer)
# ------------   ---------------------------------------  ----------------------------------
# base           errors paths config versions fsutil      nothing of ours above it
#                locks polling procinfo model selfexec
#                transport (the SSH client: ops' providers and the daemon use it)
# ops            ops/ (business logic, op registry)       base
# lib            lib/ (op scripts run as tasks)           base, ops
# store          store/ (Store and its backends)          base
# engine         engine/ (model, scheduler, executor)     base, ops
# planner        planner/ (commands as workflows)         base, ops, model
# client         client, autostart                        base
# orchestrator   orchestrator/ (the daemon)               base, ops, store, engine, planner, client
# cli            cli/ (the click commands)                everything below it
# entry          __main__, zipapp (pick an entry point)   everything
#
# So: ops never import the engine; the engine never imports orchestrator/ or cli/;
# store/ and engine/ do not import each other (both use the shared model); base
# modules import nothing of ours above them; the client knows no engine,
# orchestrator or CLI.

BASE = ("errors", "paths", "config", "versions", "fsutil", "locks", "polling", "procinfo",
        "model", "selfexec", "transport")

LAYER_OF: dict[str, str] = {
    "provisioning": "base",  # the package's __init__: __version__
    **{f"provisioning.{name}": "base" for name in BASE},
    "provisioning.ops": "ops",
    "provisioning.lib": "lib",
    "provisioning.store": "store",
    "provisioning.engine": "engine",
    "provisioning.planner": "planner",
    "provisioning.client": "client",
    "provisioning.autostart": "client",
    "provisioning.orchestrator": "orchestrator",
    "provisioning.cli": "cli",
    "provisioning.__main__": "entry",
    "provisioning.zipapp": "entry",
}

MAY_IMPORT: dict[str, set[str]] = {
    "base": {"base"},
    "ops": {"base", "ops"},
    "lib": {"base", "ops", "lib"},
    "store": {"base", "store"},
    "engine": {"base", "ops", "engine"},
    "planner": {"base", "ops", "planner"},
    "client": {"base", "client"},
    "orchestrator": {"base", "ops", "store", "engine", "planner", "client", "orchestrator"},
    "cli": {"base", "ops", "store", "engine", "planner", "client", "orchestrator", "cli"},
    "entry": {"base", "ops", "store", "engine", "planner", "client", "orchestrator", "cli",
              "entry"},
}

# Edges allowed only until the architecture work of arch-core (issue 13) is merged:
# none left (the store interface is provisioning/model/storage.py, base level).
PENDING_ARCH_CORE: set[tuple[str, str]] = set()

PACKAGE = REPO / "provisioning"


# -- reading the imports ------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    file: Path
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`: checked against the table, no cycle

    def where(self, root: Path) -> str:
        return f"{self.file.relative_to(root.parent)}:{self.line}"


def module_name(file: Path, root: Path) -> str:
    parts = list(file.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(f, root): f for f in sorted(root.rglob("*.py"))
            if "__pycache__" not in f.parts}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module `name` means: itself, or the nearest package above it (an
    attribute of a package's __init__); None if it is not ours."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.AST, importer: str, is_package: bool) -> Iterator[str]:
    root = importer.split(".")[0]
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names if a.name.split(".")[0] == root)
        return
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    if module.split(".")[0] != root:
        return
    for alias in node.names:  # `from pkg import mod` imports pkg.mod when it is a module
        yield f"{module}.{alias.name}"


def edges_of(file: Path, importer: str, known: dict[str, Path]) -> Iterator[Edge]:
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    is_package = file.name == "__init__.py"
    root = importer.split(".")[0]

    def walk(node: ast.AST, type_only: bool) -> Iterator[Edge]:
        for child in ast.iter_child_nodes(node):
            inner = type_only or (isinstance(child, ast.If) and _is_type_checking(child))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, importer, is_package):
                    resolved = _resolve(target, known)
                    if resolved is not None and resolved != importer:
                        yield Edge(importer, resolved, file, child.lineno, type_only)
            elif (isinstance(child, ast.Constant) and isinstance(child.value, str)
                  and child.value.startswith(root + ".") and ":" in child.value):
                resolved = _resolve(child.value.split(":")[0], known)  # a lazy table entry
                if resolved is not None and resolved != importer:
                    yield Edge(importer, resolved, file, child.lineno, type_only)
            yield from walk(child, inner)

    yield from walk(tree, False)


def all_edges(root: Path) -> list[Edge]:
    known = modules(root)
    return [e for name, f in known.items() for e in edges_of(f, name, known)]


def layer_of(module: str) -> str:
    best = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")),
               key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYER_OF in this test")
    return LAYER_OF[best]


# -- the checks ----------------------------------------------------------------------------


def forbidden(edges: list[Edge], root: Path, pending: set[tuple[str, str]]) -> list[str]:
    problems = []
    for e in edges:
        src, dst = layer_of(e.importer), layer_of(e.imported)
        if dst in MAY_IMPORT[src] or (e.importer, e.imported) in pending:
            continue
        allowed = ", ".join(sorted(MAY_IMPORT[src] - {src})) or "nothing of ours above it"
        problems.append(f"{e.where(root)}: {e.importer} ({src}) imports {e.imported} ({dst}); "
                        f"{src} may import: {allowed}")
    return problems


def cycles(edges: list[Edge], root: Path, pending: set[tuple[str, str]]) -> list[str]:
    """Each import cycle between modules, as the chain of files and lines that makes it."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        if not e.type_only and (e.importer, e.imported) not in pending:
            graph.setdefault(e.importer, {}).setdefault(e.imported, e)
    found, seen = [], set()
    for component in _strongly_connected(graph):
        start = min(component)
        path = _cycle_through(graph, start, set(component))
        key = frozenset(component)
        if key not in seen:
            seen.add(key)
            chain = " -> ".join(f"{e.where(root)} ({e.importer} imports {e.imported})"
                                for e in path)
            found.append(f"import cycle between {', '.join(sorted(component))}: {chain}")
    return found


def _strongly_connected(graph: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only components of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(component)
    return out


def _cycle_through(graph: dict[str, dict[str, Edge]], start: str,
                   members: set[str]) -> list[Edge]:
    """A shortest chain of edges from `start` back to itself inside one component."""
    previous: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child, edge in sorted(graph.get(node, {}).items()):
                if child not in members:
                    continue
                if child == start:
                    chain = [edge]
                    while chain[0].importer != start:
                        chain.insert(0, previous[chain[0].importer])
                    return chain
                if child not in previous:
                    previous[child] = edge
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def unexplained_lazy_imports(edges: list[Edge], root: Path) -> list[str]:
    """Function-level imports of our modules outside engine/ and store/ need a
    one-line reason: a comment with "lazy" on the import's line, or in the
    comment lines right above it (or above the group of imports it is in)."""
    problems = []
    for e in edges:
        if e.type_only or layer_of(e.importer) in ("engine", "store"):
            continue
        lines = e.file.read_text(encoding="utf-8").splitlines()
        text = lines[e.line - 1]
        if not text.startswith((" ", "\t")) or text.lstrip().startswith(('"', "'")):
            continue  # module level, or a lazy-table string
        said = "#" in text and "lazy" in text.split("#", 1)[1].lower()
        above = e.line - 2
        while not said and above >= 0 and lines[above].lstrip().startswith(
                ("#", "from ", "import ")):
            said = lines[above].lstrip().startswith("#") and "lazy" in lines[above].lower()
            above -= 1
        if not said:
            problems.append(f"{e.where(root)}: {e.importer} imports {e.imported} inside a "
                            "function without a '# lazy: why' comment")
    return problems


# -- the tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return all_edges(PACKAGE)


def test_every_module_has_a_layer(edges):
    for module in modules(PACKAGE):
        layer_of(module)


def test_no_forbidden_imports(edges):
    problems = forbidden(edges, PACKAGE, PENDING_ARCH_CORE)
    assert not problems, "imports against the layering:\n  " + "\n  ".join(problems)


def test_no_import_cycles(edges):
    problems = cycles(edges, PACKAGE, PENDING_ARCH_CORE)
    assert not problems, "\n".join(problems)


def test_lazy_imports_say_why(edges):
    problems = unexplained_lazy_imports(edges, PACKAGE)
    assert not problems, "\n".join(problems)


def test_pending_edges_still_exist(edges):
    """An allowance nobody needs any more is removed, so the set shrinks to empty."""
    present = {(e.importer, e.imported) for e in edges}
    stale = sorted(PENDING_ARCH_CORE - present)
    assert not stale, f"remove from PENDING_ARCH_CORE (no such import any more): {stale}"


def test_the_checks_catch_what_they_are_for(tmp_path):
    """On a made-up package: a forbidden edge at module level, one inside a
    function, a type-only one, and a cycle hidden in function-level imports."""
    pkg = tmp_path / "provisioning"
    files = {
        "__init__.py": "",
        "errors.py": "from provisioning.cli import main\n",  # base -> cli
        "ops/__init__.py": "",
        "ops/a.py": "def f():\n    from provisioning.engine import model\n",  # ops -> engine
        "ops/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from provisioning.orchestrator import daemon\n",  # type-only
        "ops/c.py": "def g():\n    import provisioning.ops.d\n",
        "ops/d.py": "from provisioning.ops import c\n",  # c <-> d
        "engine/__init__.py": "", "engine/model.py": "",
        "orchestrator/__init__.py": "", "orchestrator/daemon.py": "",
        "cli/__init__.py": "", "cli/main.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    found = all_edges(pkg)
    problems = "\n".join(forbidden(found, pkg, set()))
    assert "provisioning/errors.py:1: provisioning.errors (base) imports provisioning.cli.main" \
        in problems
    assert "provisioning/ops/a.py:2: provisioning.ops.a (ops) imports provisioning.engine.model" \
        in problems
    assert "provisioning/ops/b.py:3" in problems
    cycle = cycles(found, pkg, set())
    assert len(cycle) == 1 and "provisioning/ops/c.py:2" in cycle[0] \
        and "provisioning/ops/d.py:1" in cycle[0]
    assert unexplained_lazy_imports(found, pkg)[0].startswith("provisioning/ops/a.py:2")
    assert not cycles(found, pkg, {("provisioning.ops.d", "provisioning.ops.c")})
