"""Nickel files (`.ncl`) -> the data they export (DESIGN.md 14).

One loader for every Nickel file the tool reads: workflow and batch files,
and infra `settings.ncl`. It evaluates with the Nickel library from PyPI
(`py-nickel`, extra `provisioning[nickel]`) when it is importable, else with
the `nickel` binary on PATH (`nickel export --format json`), else it stops
with exit 2 naming both ways to get one.

Evaluation is bounded: it runs in a child process (provisioning/nickel_worker.py)
with a deadline and an address-space limit, because py-nickel holds the GIL
for a whole evaluation and a runaway recursion grows memory until the
process aborts; in a child, a non-terminating file is a clear error and never
a hung or crashed CLI or daemon. The child runs in the file's directory;
relative imports resolve against the importing file, then against the
contracts shipped in provisioning/ncl/ (`import "provisioning/workflow.ncl"`).

A Nickel error becomes a NickelError (exit 2): the first line names the file,
line and column in the user's files and what was wrong (the contract or the
field), then Nickel's own report (colours only on a terminal, see
NickelError.render). When a shipped contract refused the file, the file is
evaluated once more with permissive stand-ins for the contracts, and the
caller's Python validation lists every problem of that export in the same
report, as for a TOML file.

Only errors is imported from the package: this is a base module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisioningError, UsageError, ValidationError

CONTRACTS_DIR = Path(__file__).resolve().parent / "ncl"  # holds provisioning/*.ncl
LENIENT_DIR = CONTRACTS_DIR / "lenient"  # the same names, accepting anything
TIMEOUT_ENV = "PROVISIONING_NICKEL_TIMEOUT_SECONDS"
MEMORY_ENV = "PROVISIONING_NICKEL_MEMORY_MB"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MEMORY_MB = 1024
EXIT_NICKEL_ERROR = 1  # provisioning.nickel_worker's codes
EXIT_NO_LIBRARY = 3

HOW_TO_GET_NICKEL = ("install the Nickel library with `pip install 'provisioning[nickel]'` "
                     "(py-nickel, Python >= 3.11), or put the `nickel` binary on PATH "
                     "(https://nickel-lang.org/getting-started), or write the file as TOML")
# The child's first words: the parent's sys.path, then the worker. Constant code;
# the request (file, paths, limits) goes on stdin as JSON.
BOOT = ("import json, sys; request = json.load(sys.stdin); sys.path[:] = request['sys_path']; "
        "from provisioning.nickel_worker import main; sys.exit(main(request))")

ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LOCATION_RE = re.compile(r"┌─ (.+?):(\d+):(\d+)\s*$")
NOTE_RE = re.compile(r"^\s*= (.*)$")


class NickelError(ValidationError):
    """Nickel refused a file: a located headline, then Nickel's report."""

    def __init__(self, headline: str, report: str, *, colored_report: str | None = None,
                 problems: str | None = None, hint: str | None = None):
        super().__init__(headline, hint=hint)
        self.headline = headline
        self.report = report
        self.colored_report = colored_report
        self.problems = problems

    def with_problems(self, problems: str) -> NickelError:
        return NickelError(self.headline, self.report, colored_report=self.colored_report,
                           problems=problems, hint=self.hint)

    def _text(self, report: str) -> str:
        parts = [self.headline, _indent(report)]
        if self.problems:
            listed = [ln.strip() for ln in self.problems.splitlines()]
            if len(listed) > 1 and listed[0].endswith(" problems:"):
                listed = listed[1:]
            parts.append("  every problem of the file, checked without the contracts:\n"
                         + "\n".join(f"    {ln}" for ln in listed if ln))
        text = "\n".join(p for p in parts if p.strip())
        return text if not self.hint else f"{text}\n  hint: {self.hint}"

    def __str__(self) -> str:
        return self._text(self.report)

    def render(self, *, color: bool = False) -> str:
        return self._text(self.colored_report if color and self.colored_report else self.report)


@dataclass(frozen=True)
class Location:
    path: str
    line: int
    column: int


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line.strip() else "" for line in text.rstrip().splitlines())


def strip_ansi(text: str) -> str:
    return ANSI_RE.sub("", text)


def timeout_seconds() -> float:
    return _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, minimum=0.1)


def memory_limit_bytes() -> int:
    return int(_env_number(MEMORY_ENV, DEFAULT_MEMORY_MB, minimum=0) * 1024 * 1024)


def _env_number(name: str, default: float, *, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"environment {name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise UsageError(f"environment {name}: must be >= {minimum:g}, got {raw!r}")
    return value


def library_available() -> bool:
    """py-nickel can be found (not imported: that happens in the child)."""
    try:
        return importlib.util.find_spec("nickel") is not None
    except (ImportError, ValueError):
        return False


def binary_path() -> str | None:
    return shutil.which("nickel")


def export(path: str | os.PathLike[str], *,
           validate: Callable[[Any], object] | None = None) -> Any:
    """Evaluate a Nickel file and return what it exports (parsed JSON).

    `validate` is the caller's Python check of the exported data; it runs only
    when a shipped contract refused the file, on the export without contracts,
    so that the report lists every problem and not only Nickel's first one.
    """
    file = Path(path)
    try:
        return _evaluate(file, CONTRACTS_DIR)
    except NickelError as refused:
        if validate is None or not _contract_refused(refused):
            raise
        problems = _problems_without_contracts(file, validate)
        raise (refused.with_problems(problems) if problems else refused) from None


def _contract_refused(error: NickelError) -> bool:
    return "contract broken" in error.report or str(CONTRACTS_DIR) in error.report


def _problems_without_contracts(file: Path, validate: Callable[[Any], object]) -> str | None:
    try:
        data = _evaluate(file, LENIENT_DIR)
    except ProvisioningError:  # refused by something other than our contracts
        return None
    try:
        validate(data)
    except UsageError as e:  # any input problem (an unknown provider is a UsageError)
        return e.message
    return None


def _evaluate(file: Path, contracts: Path) -> Any:
    use_library = library_available()
    binary = binary_path()
    if not use_library and binary is None:
        raise UsageError(f"{file}: reading a Nickel file needs the Nickel library or the "
                         "`nickel` binary, and neither is installed", hint=HOW_TO_GET_NICKEL)
    import_paths = [str(contracts)]
    if use_library:
        proc = _run_child({"mode": "library"}, file, import_paths)
        if proc.returncode != EXIT_NO_LIBRARY:
            return _result(file, proc)
        if binary is None:
            raise UsageError(f"{file}: the Nickel library cannot be loaded by Python "
                             f"{sys.version.split()[0]} ({proc.stderr.strip()}; built for "
                             "another Python?), and there is no `nickel` binary on PATH",
                             hint=HOW_TO_GET_NICKEL)
    return _result(file, _run_child({"mode": "binary", "binary": binary}, file, import_paths))


def _child_sys_path() -> list[str]:
    # Absolute entries only: the child runs in the file's directory, where a
    # relative entry ('' or '.') could shadow the library with a user's file.
    package_parent = str(Path(__file__).resolve().parent.parent)
    entries = [os.path.abspath(p) for p in sys.path if p and os.path.isabs(p)]
    return list(dict.fromkeys([package_parent, *entries]))


def _run_child(request: dict[str, Any], file: Path,
               import_paths: list[str]) -> subprocess.CompletedProcess[str]:
    if not file.is_file():
        raise UsageError(f"{file}: file not found")
    request = {**request, "file": str(file.resolve()), "import_paths": import_paths,
               "sys_path": _child_sys_path(), "memory_bytes": memory_limit_bytes()}
    timeout = timeout_seconds()
    try:
        return subprocess.run([sys.executable, "-I", "-S", "-c", BOOT], input=json.dumps(request),
                              capture_output=True, text=True, encoding="utf-8",
                              errors="replace", timeout=timeout, cwd=file.resolve().parent)
    except subprocess.TimeoutExpired:
        raise ValidationError(
            f"{file}: Nickel evaluation did not finish within {timeout:g} s and was stopped "
            "(a recursion that never ends?)",
            hint=f"if the file is just large, raise {TIMEOUT_ENV}") from None
    except OSError as e:
        raise UsageError(f"{file}: cannot start the Nickel evaluation: {e}") from e


def _result(file: Path, proc: subprocess.CompletedProcess[str]) -> Any:
    if proc.returncode == 0:
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError as e:
            raise ValidationError(f"{file}: Nickel did not export JSON: {e}") from e
    if proc.returncode < 0 or not proc.stderr.strip():
        raise _stopped(file, proc)
    raise located_error(file, proc.stderr)


def _stopped(file: Path, proc: subprocess.CompletedProcess[str]) -> ValidationError:
    last = strip_ansi(proc.stderr).strip().splitlines()[-1:] or ["no output"]
    limit = memory_limit_bytes() // (1024 * 1024)
    return ValidationError(
        f"{file}: Nickel evaluation was stopped (exit {proc.returncode}: {last[0]}); "
        f"it ran out of its {limit} MiB of memory or stack (a recursion that never ends?)",
        hint=f"if the file really needs more, raise {MEMORY_ENV}")


def located_error(file: Path, raw_report: str) -> NickelError:
    """A NickelError from Nickel's report: headline at the user's line and column."""
    report = strip_ansi(raw_report).rstrip()
    headline, locations = parse_report(report)
    where = _user_location(file, locations)
    shown = str(file)
    if where is None:
        first = f"{shown}: {headline}"
    else:
        if Path(where.path).resolve() != file.resolve():
            shown = where.path
        first = f"{shown}:{where.line}:{where.column}: {headline}"
    colored = raw_report.rstrip() if raw_report != report else None
    return NickelError(first, report, colored_report=colored, hint=_hint_for(headline, report))


def _hint_for(headline: str, report: str) -> str | None:
    """The fix, where Nickel's own notes do not make it obvious."""
    if headline == "infinite recursion" and "recursive reference" in report:
        return ("in a record, a field that names itself means that very field "
                "(`{ server = server.hostname }`): rename the variable it should mean")
    if "could not find import" in headline and "provisioning/" in headline:
        return f"the shipped contracts are imported as \"provisioning/workflow.ncl\" or " \
               f"\"provisioning/infra.ncl\" (from {CONTRACTS_DIR})"
    return None


def parse_report(report: str) -> tuple[str, list[Location]]:
    """(headline, locations) of a plain Nickel error report; its notes (`= ...`,
    Nickel's and our contracts' hints at the fix) stay in the report."""
    lines = report.splitlines()
    head: list[str] = []
    for line in lines:
        if "┌─" in line or "│" in line or NOTE_RE.match(line):
            break
        text = line.strip()
        if text:
            head.append(text[len("error:"):].strip() if text.startswith("error:") else text)
    locations = [Location(m.group(1), int(m.group(2)), int(m.group(3)))
                 for m in (LOCATION_RE.search(line) for line in lines) if m]
    return ": ".join(head) or "Nickel evaluation failed", locations


def _user_location(file: Path, locations: list[Location]) -> Location | None:
    """The first location in a file of the user's (not in our contracts, not generated)."""
    contracts = str(CONTRACTS_DIR)
    for loc in locations:
        if loc.path.startswith(contracts) or not os.path.isabs(loc.path):
            continue
        return loc
    return None
