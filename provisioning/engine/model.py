"""Workflow and task definitions, and their states.

A *spec* is what the user asked for (immutable once validated). A *record* is
the persisted, mutable state of a workflow or task: a plain JSON-able dict
with a schema version, as stored by provisioning.store.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class TaskStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a dependency failed or was cancelled

    @property
    def finished(self) -> bool:
        return self not in (TaskStatus.QUEUED, TaskStatus.RUNNING)


class WorkflowStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED,
                        WorkflowStatus.CANCELLED)


# Higher runs first. FIFO (submission order) within one priority.
PRIORITIES: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "critical": 3}


@dataclass(frozen=True)
class TaskSpec:
    id: str
    op: str
    params: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    priority: str = "normal"
    retries: int = 0
    timeout_s: int | None = None  # None: executor.task_timeout_seconds

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "op": self.op, "params": self.params,
                "depends_on": list(self.depends_on), "priority": self.priority,
                "retries": self.retries, "timeout_s": self.timeout_s}


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    tasks: tuple[TaskSpec, ...]
    max_parallel: int | None = None  # None: executor.max_concurrent_tasks
    kind: str = "workflow"  # workflow | batch | server.create | ... (what submitted it)

    def to_dict(self) -> dict[str, Any]:
        return {"workflow": {"name": self.name, "max_parallel": self.max_parallel,
                             "kind": self.kind},
                "tasks": [t.to_dict() for t in self.tasks]}


def task_key(workflow_id: str, task_id: str) -> str:
    """Global task id used by the API (/tasks/{key}) and as the queue file name."""
    return f"{workflow_id}.{task_id}"


def split_task_key(key: str) -> tuple[str, str]:
    workflow_id, _, task_id = key.partition(".")
    return workflow_id, task_id
