"""MemoryStore: records in dicts. Direct mode and tests; nothing survives the process.

Task logs and checkpoints still go to real files (a directory given at
construction) because task processes write them. Everything else of the
Store contract holds within the process: copies in and out, a batch applied
in the documented order, load() in submission order.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from provisioning.model import first_task_records, task_key
from provisioning.model.storage import Event, NewWorkflow, Record, Store


def _copy(record: Any) -> Any:
    # Records are plain JSON; a JSON round trip is several times faster than
    # copy.deepcopy, and it also proves the record would serialize.
    return json.loads(json.dumps(record))


class MemoryStore(Store):
    group_commit = False  # a dict assignment: nothing to group, the engine writes inline

    def __init__(self, files_dir: Path | None = None):
        self.files_dir = Path(files_dir) if files_dir else Path(tempfile.mkdtemp(prefix="prov-"))
        self.workflows: dict[str, Record] = {}
        self.tasks: dict[str, Record] = {}
        self.events: dict[str, list[Event]] = {}
        self._made_dirs: set[Path] = set()  # mkdir once per workflow, not per task

    # -- writes --------------------------------------------------------------------

    def commit_batch(self, *, adds: list[NewWorkflow] = (), tasks: list[Record] = (),
                     workflows: list[Record] = (),
                     initial_tasks: dict[str, list[str]] | None = None,
                     events: list[tuple[str, Event]] = ()) -> None:
        # Copied first: a record JSON cannot encode fails the batch before anything changed.
        new = [(_copy(w), [_copy(t) for t in ts]) for w, ts in adds]
        replaced_tasks = [_copy(t) for t in tasks]
        replaced_workflows = [_copy(w) for w in workflows]
        for workflow_id, task_ids in (initial_tasks or {}).items():
            workflow = self.workflows.get(workflow_id)
            if workflow is not None:  # as in JsonFileStore: load() would rebuild them anyway
                for task in first_task_records(workflow, task_ids):
                    self.tasks[task["key"]] = _copy(task)
        for workflow, new_tasks in new:
            for task in new_tasks:
                self.tasks[task["key"]] = task
            self.workflows[workflow["id"]] = workflow
        for task in replaced_tasks:
            self.tasks[task["key"]] = task
        for workflow in replaced_workflows:
            self.workflows[workflow["id"]] = workflow
        for workflow_id, event in events:
            self.append_event(workflow_id, event)

    def add_workflow(self, workflow: Record, tasks: list[Record]) -> None:
        self.commit_batch(adds=[(workflow, tasks)])

    def save_workflow(self, workflow: Record) -> None:
        self.workflows[workflow["id"]] = _copy(workflow)

    def save_task(self, task: Record) -> None:
        self.tasks[task["key"]] = _copy(task)

    def append_event(self, workflow_id: str, event: Event) -> None:
        self.events.setdefault(workflow_id, []).append(dict(event))

    # -- reads -----------------------------------------------------------------------

    def load(self) -> tuple[list[Record], list[Record]]:
        workflows = sorted(self.workflows.values(),
                           key=lambda w: (w.get("seq") or 0, w.get("created_at") or 0))
        tasks = []
        for workflow in workflows:
            keys = [task_key(workflow["id"], tid) for tid in workflow["task_ids"]]
            missing = [tid for tid, key in zip(workflow["task_ids"], keys, strict=True)
                       if key not in self.tasks]
            rebuilt = {t["key"]: t for t in first_task_records(workflow, missing)}
            tasks += [self.tasks.get(key) or rebuilt[key] for key in keys]
        return [_copy(w) for w in workflows], [_copy(t) for t in tasks]

    def load_events(self, workflow_id: str) -> list[Event]:
        return [dict(e) for e in self.events.get(workflow_id, [])]

    def quarantined_count(self) -> int:
        return 0  # nothing is read back from anywhere it could have been damaged

    # -- files written by task processes ---------------------------------------------

    def task_log_path(self, workflow_id: str, task_id: str) -> Path:
        return self._dir("logs", workflow_id) / f"{task_id}.log"

    def checkpoint_path(self, workflow_id: str, task_id: str) -> Path:
        return self._dir("checkpoints", workflow_id) / f"{task_id}.json"

    def prune_files(self, max_age_seconds: float) -> int:
        """Delete the log and checkpoint dirs of workflows untouched for longer
        than ``max_age_seconds`` (direct runs keep no queue to say when a run
        is over, so age decides); returns how many were removed."""
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

    # -- lifecycle -------------------------------------------------------------------

    @property
    def writer_pid(self) -> int | None:
        return None

    def close(self) -> None:
        """Nothing to release: the records stay readable until the object goes."""
