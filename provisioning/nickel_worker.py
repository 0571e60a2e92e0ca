"""The child process that evaluates one Nickel file (see provisioning/nickel.py).

Evaluation runs here, not in the caller, so that it can be bounded: py-nickel
holds the GIL for a whole evaluation (a thread could not even be timed out)
and a runaway recursion grows memory until the allocator aborts the process.
The parent kills this process at its deadline; the address-space limit set
here turns a runaway recursion into a quick abort of this child alone.

Started as `python -I -S -c BOOT` with a JSON request on stdin (BOOT puts the
parent's sys.path in place first, so `import nickel` finds what the parent
would find and nothing of the caller's environment leaks in). Only the
standard library and py-nickel are imported here.

Exit codes: 0 the exported JSON is on stdout; 1 Nickel reported an error
(its report on stderr); 3 py-nickel cannot be imported (the reason on stderr).
In binary mode the process becomes the `nickel` binary (exec), whose own
exit code and output the parent reads the same way.
"""

from __future__ import annotations

import os
import sys
from typing import Any

EXIT_OK = 0
EXIT_NICKEL_ERROR = 1
EXIT_NO_LIBRARY = 3


def limit_memory(limit_bytes: int) -> None:
    """Cap this process's address space (inherited across exec)."""
    if limit_bytes <= 0:
        return
    try:
        import resource
    except ImportError:  # not on this OS: the parent's timeout still bounds evaluation
        return
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    except (ValueError, OSError):  # a lower hard limit is already in force: keep it
        pass


def nickel_string(text: str) -> str:
    """`text` as a Nickel string literal (no interpolation)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "\\%")
    return f'"{escaped}"'


def run_library(file: str, import_paths: list[str]) -> int:
    try:
        import nickel
    except ImportError as e:
        sys.stderr.write(f"{e}\n")
        return EXIT_NO_LIBRARY
    try:
        out = nickel.run(f"import {nickel_string(file)}", import_paths=import_paths)
    except nickel.NickelException as e:
        sys.stderr.write(str(e))
        return EXIT_NICKEL_ERROR
    sys.stdout.write(out)
    return EXIT_OK


def main(request: dict[str, Any]) -> int:
    limit_memory(int(request.get("memory_bytes", 0)))
    if request["mode"] == "binary":
        argv = [request["binary"], "export", "--format", "json"]
        for p in request["import_paths"]:
            argv += ["--import-path", p]
        argv.append(request["file"])
        # exec, not a child: the parent's kill at the deadline reaches the binary itself
        os.execv(argv[0], argv)  # noqa: S606 - an argv list, no shell; never returns
    return run_library(request["file"], request["import_paths"])
