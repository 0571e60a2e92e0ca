"""The code's shape as a test (issue 13, HELPERS rule 6): no module of provisioning/
over 400 lines, no function or method over 60 lines.

Read with `ast`, the op scripts under provisioning/lib/ included. A function's
length is from its `def` line to its last line (decorators aside); a nested
function counts on its own and inside the function that holds it. Data tables
are module-level constants, not functions, so they do not count; a function
that is only a big literal is split by the parts of the table it builds
(orchestrator/openapi.py shows how).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "provisioning"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# Offenders allowed for now, each in a file another piece of work owns and splits.
# An entry that no longer offends fails the test too: remove it then.
ALLOWED_LONG_FUNCTIONS: dict[str, str] = {}
ALLOWED_LONG_MODULES: dict[str, str] = {}


def python_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def function_lengths(path: Path, text: str | None = None) -> dict[str, int]:
    """'file:qualified.name' -> lines, of every function and method in ``path``
    (or in ``text``, read as if it were that file)."""
    source = path.read_text(encoding="utf-8") if text is None else text
    tree = ast.parse(source, filename=str(path))
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                assert child.end_lineno is not None
                lengths[f"{relative(path)}:{name}"] = child.end_lineno - child.lineno + 1
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return lengths


def allowance_key(qualified: str) -> str:
    """'file:Class.method' and 'file:outer.inner' are allowed by 'file:method' / 'file:inner'."""
    file, _, name = qualified.partition(":")
    return f"{file}:{name.rsplit('.', 1)[-1]}"


def test_no_module_over_400_lines():
    long = {relative(p): n for p in python_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    offenders = {f: n for f, n in long.items() if f not in ALLOWED_LONG_MODULES}
    named = ", ".join(f"{f} ({n} lines)" for f, n in sorted(offenders.items()))
    assert not offenders, f"modules over {MAX_MODULE_LINES} lines: {named}"
    stale = sorted(set(ALLOWED_LONG_MODULES) - set(long))
    assert not stale, f"no longer over {MAX_MODULE_LINES} lines, remove the allowance: {stale}"


def test_no_function_over_60_lines():
    lengths: dict[str, int] = {}
    for p in python_files():
        lengths.update(function_lengths(p))
    long = {q: n for q, n in lengths.items() if n > MAX_FUNCTION_LINES}
    offenders = {q: n for q, n in long.items() if allowance_key(q) not in ALLOWED_LONG_FUNCTIONS}
    named = ", ".join(f"{q} ({n} lines)" for q, n in sorted(offenders.items()))
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines: {named}"
    stale = sorted(set(ALLOWED_LONG_FUNCTIONS) - {allowance_key(q) for q in long})
    assert not stale, f"no longer over {MAX_FUNCTION_LINES} lines, remove the allowance: {stale}"


def test_the_measure_sees_a_long_method_and_a_nested_function():
    """The checker itself: a 61-line method and a nested function are found by name."""
    body = "\n".join(f"        x{i} = {i}" for i in range(60))
    src = (f"class C:\n    def long(self):\n{body}\n\n"
           "def outer():\n    def inner():\n        return 1\n    return inner\n")
    lengths = function_lengths(PACKAGE / "fake_shape.py", src)
    assert lengths["provisioning/fake_shape.py:C.long"] == 61
    assert lengths["provisioning/fake_shape.py:outer"] == 4
    assert lengths["provisioning/fake_shape.py:outer.inner"] == 2
    assert allowance_key("provisioning/fake_shape.py:C.long") == "provisioning/fake_shape.py:long"
