"""How this installation starts its own programs (the orchestrator, Python ops).

Three ways we can be installed, each with its own answer:
- a venv or pip install: a `provisioning-orchestrator` console script next to
  `provisioning` (or next to sys.executable);
- the shiv zipapp: one file; it answers as the orchestrator when invoked
  through a `provisioning-orchestrator` symlink or with
  PROVISIONING_ENTRY=orchestrator (see provisioning/zipapp.py);
- neither (a source checkout): `python -m provisioning.orchestrator.main`.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from typing import Any

ENTRY_ENV = "PROVISIONING_ENTRY"


def running_from_zipapp() -> bool:
    arg0 = sys.argv[0] if sys.argv else ""
    return bool(arg0) and os.path.isfile(arg0) and zipfile.is_zipfile(arg0)


def orchestrator_command() -> tuple[list[str], dict[str, str]]:
    """argv (and extra env) that start `provisioning-orchestrator`."""
    arg0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    candidates = []
    if arg0 is not None:
        candidates.append(arg0.parent / "provisioning-orchestrator")
    candidates.append(Path(sys.executable).parent / "provisioning-orchestrator")
    if running_from_zipapp() and arg0 is not None:
        return [sys.executable, str(arg0.resolve())], {ENTRY_ENV: "orchestrator"}
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return [str(c)], {}
    return [sys.executable, "-m", "provisioning.orchestrator.main"], {}


def looks_like_orchestrator(proc: Any) -> bool:
    """Whether a psutil.Process runs one of the command lines above (the check
    before a pidfile's pid is trusted: pids get reused)."""
    try:
        if any("orchestrator" in part for part in proc.cmdline()):
            return True
        # the zipapp runs as `python provisioning.pyz` with PROVISIONING_ENTRY=orchestrator
        return proc.environ().get(ENTRY_ENV) == "orchestrator"
    except Exception:  # psutil.Error: gone, or not ours to inspect
        return False


def package_parent_dir() -> str:
    """The directory holding the `provisioning` package (for a child's PYTHONPATH)."""
    return str(Path(__file__).resolve().parent.parent)
