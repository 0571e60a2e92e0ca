"""Where a task process writes its log and its checkpoint: plain files under the
data dir on every backend (a task writes them itself, without a store round trip;
the PostgreSQL backend copies finished logs into the database as well)."""

from __future__ import annotations

import threading
from pathlib import Path

from provisioning import fsutil
from provisioning.paths import DataPaths
from provisioning.store import checks
from provisioning.store.fileio import storage_errors


class TaskFiles:
    """`<logs>/<workflow id>/<task id>.log` and `<checkpoints>/.../<task id>.json`,
    their workflow directory made (0700) once per process."""

    def __init__(self, paths: DataPaths):
        self.paths = paths
        self._made_dirs: set[Path] = set()
        self._guard = threading.Lock()

    def log_path(self, workflow_id: str, task_id: str) -> Path:
        return self._file_in(self.paths.logs_dir, workflow_id, task_id, ".log")

    def checkpoint_path(self, workflow_id: str, task_id: str) -> Path:
        return self._file_in(self.paths.checkpoints_dir, workflow_id, task_id, ".json")

    def _file_in(self, base: Path, workflow_id: str, task_id: str, suffix: str) -> Path:
        d = base / checks.check_id(workflow_id, "workflow id")
        if d not in self._made_dirs:
            with storage_errors(base):
                fsutil.ensure_private_dir(d)
            with self._guard:
                self._made_dirs.add(d)
        return d / f"{checks.check_id(task_id, 'task id')}{suffix}"
