"""The Store interface (huey's BaseStorage is the model).

Records are plain dicts with "schema": SCHEMA_VERSION.

Workflow record keys: schema, kind="workflow", id, name, status, created_at,
started_at, finished_at, max_parallel, task_ids (ordered), spec (the whole
validated WorkflowSpec.to_dict(), so tasks can be rebuilt), seq.

Task record keys: schema, kind="task", key (workflow_id.task_id), workflow_id,
id, op, params, depends_on, priority, retries, timeout_s, seq (global
submission order), status, attempts, progress, message, result, error,
exit_code, signal, created_at, started_at, finished_at, updated_at,
lease ({"token", "owner", "pid", "pid_create_time"} or None), history.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

Record = dict[str, Any]


class Store(abc.ABC):
    """Durable (or not) home of records. Callers serialize their own threads."""

    @abc.abstractmethod
    def add_workflow(self, workflow: Record, tasks: list[Record]) -> None:
        """Persist a new workflow and its tasks. The workflow record is written
        last: it is the commit point (tasks without one are orphans)."""

    @abc.abstractmethod
    def save_workflow(self, workflow: Record) -> None: ...

    @abc.abstractmethod
    def save_task(self, task: Record) -> None: ...

    @abc.abstractmethod
    def load(self) -> tuple[list[Record], list[Record]]:
        """All workflows and tasks (recovery at start). Corrupt or foreign
        files are moved aside (quarantine) and logged, never raised."""

    @abc.abstractmethod
    def append_event(self, workflow_id: str, event: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def load_events(self, workflow_id: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def task_log_path(self, workflow_id: str, task_id: str) -> Path:
        """Where the task's captured output goes (parent dir exists)."""

    def quarantined_count(self) -> int:
        """How many files sit in quarantine (shown by /health so an operator
        notices without reading the log). Stores without files have none."""
        return 0

    @abc.abstractmethod
    def checkpoint_path(self, workflow_id: str, task_id: str) -> Path:
        """The PROVISIONING_CHECKPOINT file of a task (parent dir exists)."""
