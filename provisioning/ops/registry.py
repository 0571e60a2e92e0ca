"""The op registry: an op name (`server.create`) -> the argv that runs it.

Lookup order (first hit wins):
1. built-in ops of the package (provisioning/ops/builtin: `noop`, `shell.run`);
2. the package's own lib dir (provisioning/lib, business logic shipped with it);
3. each extension dir in order (PROVISIONING_LIB, then executor.lib_dirs).

In a dir, op `area.verb` is `<area>/<verb>.py` (run with this Python),
`<area>/<verb>.nu` (run with Nushell), or `<area>/<verb>` if executable;
`<area>` is tried as given and with an `s` appended (`server` -> `servers`).
Files in world-writable places are refused: anyone could swap the code the
orchestrator runs.

A Python op (a built-in, or a `.py` file in a lib dir) resolves to exactly
`[sys.executable, "<file>.py"]`; python_script() recognises that argv, so the
executor may fork it from the daemon's pre-imported Python zygote instead of
starting an interpreter (engine/zygote.py).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
from pathlib import Path

from provisioning import paths
from provisioning.errors import ValidationError

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_OPS: dict[str, str] = {"noop": "noop.py", "shell.run": "shell_run.py"}

# Dotted names of safe path components: no '..', no '/', nothing hidden.
_OP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*)+$")

NU_INSTALL_HINT = ("install Nushell (https://www.nushell.sh/book/installation.html) or set "
                   "executor.nushell_binary to its path")


def python_script(argv: list[str]) -> str | None:
    """The script of a Python op's argv (as resolve() makes it), or None."""
    if len(argv) == 2 and argv[0] == sys.executable and argv[1].endswith(".py"):
        return argv[1]
    return None


class OpRegistry:
    """Resolve op names to argv lists (see the module docstring for the order)."""

    def __init__(self, lib_dirs: list[Path], *, nushell_binary: str = "nu"):
        self.lib_dirs = [Path(d) for d in lib_dirs]
        self.nushell_binary = nushell_binary
        self._cache: dict[str, list[str]] = {}  # positive hits only: new ops appear live

    @classmethod
    def from_config(cls, config) -> OpRegistry:
        """The registry a Config describes (PROVISIONING_LIB, then executor.lib_dirs)."""
        return cls(config.lib_dirs(), nushell_binary=config.executor.nushell_binary)

    def search_dirs(self) -> list[Path]:
        dirs = [paths.package_lib_dir(), *self.lib_dirs]
        return list(dict.fromkeys(dirs))

    def has(self, op: str) -> bool:
        """True if some file implements `op` (even one that cannot run here, e.g. .nu)."""
        if op in BUILTIN_OPS:
            return True
        return self._find(op) is not None

    def resolve(self, op: str) -> list[str]:
        """argv that runs `op`. ValidationError says why when it cannot."""
        cached = self._cache.get(op)
        if cached is not None:
            return list(cached)
        if op in BUILTIN_OPS:
            argv = [sys.executable, str(BUILTIN_DIR / BUILTIN_OPS[op])]
        else:
            found = self._find(op)
            if found is None:
                raise ValidationError(f"unknown op '{op}'", hint=self._lookup_hint(op))
            argv = self._argv_for(op, found)
        self._cache[op] = argv
        return list(argv)

    def names(self) -> list[str]:
        """Every op name available, sorted (built-ins, then lib dirs)."""
        found = set(BUILTIN_OPS)
        for d in self.search_dirs():
            if not d.is_dir():
                continue
            for area_dir in d.iterdir():
                if not area_dir.is_dir() or area_dir.name.startswith((".", "_")):
                    continue
                for f in area_dir.iterdir():
                    verb, ext = os.path.splitext(f.name)
                    if f.name.startswith((".", "_")) or not f.is_file():
                        continue
                    if ext in (".py", ".nu") or (not ext and os.access(f, os.X_OK)):
                        area = area_dir.name
                        found.add(f"{area[:-1] if area.endswith('s') else area}.{verb}")
        return sorted(found)

    # -- internals ---------------------------------------------------------

    def _candidates(self, op: str) -> list[tuple[Path, Path]]:
        """(lib dir, file) pairs to try, in order."""
        if not _OP_RE.match(op):
            return []
        *area_parts, verb = op.split(".")
        areas = [area_parts[0]]
        if not area_parts[0].endswith("s"):
            areas.append(area_parts[0] + "s")
        out = []
        for d in self.search_dirs():
            for area in areas:
                base = d.joinpath(area, *area_parts[1:])
                for name in (f"{verb}.py", f"{verb}.nu", verb):
                    out.append((d, base / name))
        return out

    def _find(self, op: str) -> tuple[Path, Path] | None:
        for lib_dir, f in self._candidates(op):
            try:
                st = f.stat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if f.suffix in (".py", ".nu") or os.access(f, os.X_OK):
                return lib_dir, f
        return None

    def _argv_for(self, op: str, found: tuple[Path, Path]) -> list[str]:
        lib_dir, f = found
        _refuse_world_writable(op, lib_dir, f)
        if f.suffix == ".py":
            return [sys.executable, str(f)]
        if f.suffix == ".nu":
            nu = shutil.which(self.nushell_binary)
            if nu is None:
                raise ValidationError(
                    f"op '{op}' is a Nushell script ({f}) but '{self.nushell_binary}' "
                    "is not installed", hint=NU_INSTALL_HINT)
            # --stdin: without it a script's `main` sees no input, and the params
            # of the task protocol arrive on stdin.
            return [nu, "--stdin", str(f)]
        return [str(f)]

    def _lookup_hint(self, op: str) -> str:
        if not _OP_RE.match(op):
            return ("op names look like 'area.verb' (letters, digits, '-', '_'); built-in: "
                    + ", ".join(sorted(BUILTIN_OPS)))
        dirs = ", ".join(str(d) for d in self.search_dirs())
        area, _, verb = op.rpartition(".")
        return (f"looked for {area.replace('.', '/')}[s]/{verb}(.py|.nu|executable) in: {dirs}; "
                "add extension dirs with PROVISIONING_LIB or executor.lib_dirs")


def _refuse_world_writable(op: str, lib_dir: Path, f: Path) -> None:
    """The file and every dir from the lib dir down to it must not be world-writable."""
    checks = [f]
    parent = f.parent
    while True:
        checks.append(parent)
        if parent == lib_dir or parent == parent.parent:
            break
        parent = parent.parent
    for p in checks:
        try:
            mode = p.stat().st_mode
        except OSError:
            continue
        if mode & stat.S_IWOTH:
            raise ValidationError(
                f"refusing op '{op}': {p} is world-writable, so anyone could change what it runs",
                hint=f"chmod o-w {p}")
