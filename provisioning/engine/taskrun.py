"""What one attempt of one task is given (TaskRun) and what came of it (TaskOutcome)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioning.selfexec import package_parent_dir

KEPT_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR")


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The task environment: a few harmless inherited variables, PYTHONPATH, and `extra`."""
    env = {k: v for k, v in os.environ.items() if k in KEPT_ENV or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    pythonpath = [package_parent_dir()]
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    env.update(extra)
    return env


@dataclass
class TaskRun:
    """Everything needed to run one attempt of one task."""

    key: str
    argv: list[str]
    params: dict[str, Any]
    env: dict[str, str]  # PROVISIONING_* for the task; see clean_env
    log_path: Path
    attempt: int
    timeout_s: float
    kill_grace_s: float
    cwd: str | None = None
    send_params: bool = True  # False: stdin is closed at once (argv run directly)
    run_marker: str | None = None  # this run's marker (proctree.py); None: TaskProcess makes one


@dataclass
class TaskOutcome:
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    stop_reason: str | None = None  # "cancelled", "shutdown": stopped on request
    result: Any = None
    error: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def succeeded(self) -> bool:
        return (self.exit_code == 0 and not self.timed_out and self.stop_reason is None
                and self.error is None)
