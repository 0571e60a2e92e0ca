"""MemoryStore: records in dicts. Direct mode and tests; nothing survives the process.

Task logs and checkpoints still go to real files (a directory given at
construction) because task processes write them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from provisioning.store.base import Record, Store


def _copy(record: Any) -> Any:
    # Records are plain JSON; a JSON round trip is several times faster than
    # copy.deepcopy, and it also proves the record would serialize.
    return json.loads(json.dumps(record))


class MemoryStore(Store):
    def __init__(self, files_dir: Path | None = None):
        self.files_dir = Path(files_dir) if files_dir else Path(tempfile.mkdtemp(prefix="prov-"))
        self.workflows: dict[str, Record] = {}
        self.tasks: dict[str, Record] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self._made_dirs: set[Path] = set()  # mkdir once per workflow, not per task

    def add_workflow(self, workflow: Record, tasks: list[Record]) -> None:
        for task in tasks:
            self.save_task(task)
        self.save_workflow(workflow)

    def save_workflow(self, workflow: Record) -> None:
        self.workflows[workflow["id"]] = _copy(workflow)

    def save_task(self, task: Record) -> None:
        self.tasks[task["key"]] = _copy(task)

    def load(self) -> tuple[list[Record], list[Record]]:
        return ([_copy(w) for w in self.workflows.values()],
                [_copy(t) for t in self.tasks.values()])

    def append_event(self, workflow_id: str, event: dict[str, Any]) -> None:
        self.events.setdefault(workflow_id, []).append(dict(event))

    def load_events(self, workflow_id: str) -> list[dict[str, Any]]:
        return [dict(e) for e in self.events.get(workflow_id, [])]

    def task_log_path(self, workflow_id: str, task_id: str) -> Path:
        return self._dir("logs", workflow_id) / f"{task_id}.log"

    def checkpoint_path(self, workflow_id: str, task_id: str) -> Path:
        return self._dir("checkpoints", workflow_id) / f"{task_id}.json"

    def prune_files(self, max_age_seconds: float) -> int:
        """Delete the log and checkpoint dirs of workflows untouched for longer
        than ``max_age_seconds`` (direct runs keep no queue to say when a run
        is over, so age decides); returns how many were removed."""
        import shutil
        import time

        cutoff = time.time() - max_age_seconds
        removed = 0
        for kind in ("logs", "checkpoints"):
            base = self.files_dir / kind
            try:
                entries = list(os.scandir(base))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False) and \
                            entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        shutil.rmtree(entry.path)
                        removed += 1
                except OSError:
                    continue  # in use or gone: next time
        return removed

    def _dir(self, kind: str, workflow_id: str) -> Path:
        d = self.files_dir / kind / workflow_id
        if d not in self._made_dirs:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._made_dirs.add(d)
        return d
