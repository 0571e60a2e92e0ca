"""Entry point of the shiv zipapp: one file, two programs.

shiv's bootstrap unpacks the bundled site-packages and then calls `main()`
here. Invoked through a `provisioning-orchestrator` symlink, or with
PROVISIONING_ENTRY=orchestrator (what provisioning/selfexec.py sets when the
CLI auto-starts the daemon from inside the zipapp), it runs the daemon;
otherwise the CLI.

Before either, it checks that this interpreter can load the C extensions the
zipapp was built with (psutil, linkedin/shiv#10): a pyz built for another OS,
CPU, libc or Python ABI would otherwise die later with an ImportError
traceback. The facts come from `_zipapp_build.json`, which packaging/build
writes next to this module in the zipapp only (a venv install has none and
skips the check).

Keep this module cheap and free of newer syntax: it runs on every start, and
possibly under an interpreter too old for the rest of the package.
"""

from __future__ import annotations

import os
import sys

ENTRY_ENV = "PROVISIONING_ENTRY"  # same name as provisioning.selfexec.ENTRY_ENV
ORCHESTRATOR_NAME = "provisioning-orchestrator"
BUILD_INFO_NAME = "_zipapp_build.json"
MIN_PYTHON = (3, 10)
EXIT_BAD_PLATFORM = 2  # an installation problem the operator must fix (wrong bundle)

MSG_OLD_PYTHON = (
    "provisioning: needs Python >= {need}, but {exe} is Python {have}.\n"
    "  hint: install python3 >= {need} and put it first on PATH (the zipapp runs "
    "'/usr/bin/env python3')"
)
MSG_WRONG_PLATFORM = (
    "provisioning: this zipapp was built for {built} but is running on {here}: {what}.\n"
    "  hint: install the bundle named for this platform "
    "(provisioning-core-<version>-{here_tag}.tar.gz) or rebuild with packaging/build here"
)
MSG_EXTENSION_FAILED = (
    "provisioning: the bundled C extension {name} cannot be loaded by {exe} "
    "(Python {have}, {here}): {error}\n"
    "  hint: the zipapp was built for {built}; install the bundle for this platform"
)


def normalize_machine(machine: str) -> str:
    """One name per CPU family, as uname(1) spells it on Linux."""
    m = machine.lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def platform_tag() -> str:
    """`<os>-<machine>` of this host, e.g. `linux-x86_64` (bundle names use it)."""
    return f"{sys.platform}-{os.uname().machine}" if hasattr(os, "uname") else sys.platform


def _glibc_version() -> tuple[int, ...] | None:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; absent on musl
    except (AttributeError, ValueError, OSError):
        return None
    if not text or not text.startswith("glibc "):
        return None
    try:
        return tuple(int(p) for p in text.split()[1].split("."))
    except ValueError:
        return None


def _load_build_info() -> dict | None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), BUILD_INFO_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            import json

            return json.load(f)
    except (OSError, ValueError):
        return None


def platform_problem(info: dict | None) -> str | None:
    """Why this interpreter cannot run this build, or None if it can.

    Cheap checks only (no import of the extensions): Python version, OS, CPU,
    libc, and that each bundled extension's file suffix is one this
    interpreter loads (`.abi3.so`, `.cpython-311-x86_64-linux-gnu.so`, ...).
    """
    if sys.version_info[:2] < MIN_PYTHON:
        return MSG_OLD_PYTHON.format(need=".".join(map(str, MIN_PYTHON)), exe=sys.executable,
                                     have=sys.version.split()[0])
    if not info:
        return None
    here = platform_tag()
    built = info.get("platform_tag", "?")

    def wrong(what: str) -> str:
        return MSG_WRONG_PLATFORM.format(built=built, here=here, what=what,
                                         here_tag=here + "-" + str(info.get("abi_tag", "py3")))

    if info.get("sys_platform") and info["sys_platform"] != sys.platform:
        return wrong(f"operating system {sys.platform}, need {info['sys_platform']}")
    machine = os.uname().machine if hasattr(os, "uname") else ""
    if info.get("machine") and normalize_machine(info["machine"]) != normalize_machine(machine):
        return wrong(f"CPU {machine}, need {info['machine']}")
    if info.get("libc") == "glibc":
        have = _glibc_version()
        need = tuple(info.get("min_glibc") or (0,))
        if have is None:
            return wrong("no glibc (musl?), the bundled extensions need glibc")
        if have < need:
            return wrong("glibc {}, need >= {}".format(".".join(map(str, have)),
                                                     ".".join(map(str, need))))
    from importlib.machinery import EXTENSION_SUFFIXES

    for ext in info.get("extensions", []):
        # the whole tag after the module name: "_psutil_linux.abi3.so" -> ".abi3.so"
        base = os.path.basename(ext)
        if base[base.find("."):] not in EXTENSION_SUFFIXES:
            return wrong(f"Python {sys.version.split()[0]} cannot load {ext} "
                         f"(it loads {', '.join(EXTENSION_SUFFIXES)})")
    return None


def _wants_orchestrator(argv0: str, environ: dict[str, str]) -> bool:
    entry = environ.get(ENTRY_ENV, "")
    if entry:
        return entry == "orchestrator"
    name = os.path.basename(argv0)
    return name == ORCHESTRATOR_NAME or name.startswith(ORCHESTRATOR_NAME + ".")


def main() -> int:
    """Check the platform, then run the orchestrator or the CLI."""
    info = _load_build_info()
    problem = platform_problem(info)
    if problem:
        sys.stderr.write(problem + "\n")
        return EXIT_BAD_PLATFORM
    orchestrator = _wants_orchestrator(sys.argv[0] if sys.argv else "", os.environ)
    # Our children (task ops, a re-launched CLI) pick their own entry.
    os.environ.pop(ENTRY_ENV, None)
    try:
        # lazy (both): only the entry point asked for, once the platform check passed
        if orchestrator:
            from provisioning.orchestrator.main import main as entry  # lazy
        else:
            from provisioning.cli.main import main as entry  # lazy
        return entry()
    except ImportError as e:
        # The cheap checks passed but the loader still refused (an exotic
        # libc, a stripped system): say which extension, not a traceback.
        name = getattr(e, "name", "") or ""
        if "psutil" not in name and "psutil" not in str(e):
            raise
        sys.stderr.write(MSG_EXTENSION_FAILED.format(
            name=name or "psutil", exe=sys.executable, have=sys.version.split()[0],
            here=platform_tag(), error=e, built=(info or {}).get("platform_tag", "?")) + "\n")
        return EXIT_BAD_PLATFORM
