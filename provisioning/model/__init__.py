"""The domain's vocabulary and its records: one home for both store and engine.

A *spec* is what the user asked for (immutable once validated). A *record* is
the persisted, mutable state of a workflow or a task: a plain JSON-able dict
with a schema version. This module says what the states are, which ids are
valid, and builds every new record (``new_submission``, ``first_task_records``),
so the engine that submits and the store that rebuilds a lost task file make
the very same dict. Store formats in detail: model/storage.py, the storage
interface every backend implements.

Keys beyond model/storage.py's list (all optional on read, so older records
load): workflow ``cancel_requested``; task ``attempt_base`` (attempts before
the current run, so a user ``retry`` gets the full retry budget again),
``retry_at`` (epoch of the next attempt while backing off),
``last_lease_token``.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
Record = dict[str, Any]


class _Word(str, enum.Enum):
    """A str enum whose members behave exactly like their values (==, hash,
    str(), f-strings, JSON), so a record may hold either and a set of members
    answers for plain strings read from disk."""

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class TaskStatus(_Word):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a dependency failed or was cancelled

    @property
    def finished(self) -> bool:
        return self not in (TaskStatus.QUEUED, TaskStatus.RUNNING)


class WorkflowStatus(_Word):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_WORKFLOW


# A state as a plain str (views, events: what readers get): str.__str__ is C code,
# so this costs no Python call per record, unlike str(member).
plain = str.__str__

TASK_STATUSES: tuple[TaskStatus, ...] = tuple(TaskStatus)
WORKFLOW_STATUSES: tuple[WorkflowStatus, ...] = tuple(WorkflowStatus)
FINISHED_TASK = frozenset(s for s in TaskStatus if s.finished)
UNFINISHED_TASK = frozenset(s for s in TaskStatus if not s.finished)
FINISHED_WORKFLOW = frozenset({WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED,
                               WorkflowStatus.CANCELLED})
# A task that ended like this makes its dependents `skipped`; a user retry re-runs it.
NOT_SUCCEEDED = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.SKIPPED})

# Higher runs first. FIFO (submission order) within one priority.
PRIORITIES: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "critical": 3}
DEFAULT_PRIORITY = "normal"


def priority_rank(priority: Any) -> int:
    return PRIORITIES.get(priority, PRIORITIES[DEFAULT_PRIORITY])


# -- ids -------------------------------------------------------------------------

# Workflow ids are minted here (uuid4, lower-case); task ids come from the
# user: 1-64 letters, digits, '-' or '_', starting with a letter or digit. No
# dots in either, so a task key "<workflow id>.<task id>" splits at its dot.
WORKFLOW_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TASK_ID_MAX = 64
TASK_ID_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{TASK_ID_MAX - 1}}}$")
TASK_ID_RULE = "use 1-64 letters, digits, '-' or '_', starting with a letter or digit (no dots)"
WORKFLOW_ID_EXAMPLE = "3f2b8c1e-0d4a-4e1b-9c7d-2a6f5e4d3c2b"


def valid_workflow_id(value: Any) -> bool:
    return isinstance(value, str) and bool(WORKFLOW_ID_RE.match(value))


def valid_task_id(value: Any) -> bool:
    return isinstance(value, str) and bool(TASK_ID_RE.match(value))


def valid_task_key(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    workflow_id, dot, task_id = value.partition(".")
    return bool(dot) and valid_workflow_id(workflow_id) and valid_task_id(task_id)


def task_id_from(*parts: str) -> str:
    """A task id made of ``parts`` joined by '-' (each part already letters,
    digits, '-' or '_'), shortened with a hash of the whole when longer than
    TASK_ID_MAX, so it stays unique and still reads like its parts."""
    raw = "-".join(parts)
    if len(raw) <= TASK_ID_MAX:
        return raw
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{raw[:TASK_ID_MAX - len(digest) - 1]}-{digest}"


def task_key(workflow_id: str, task_id: str) -> str:
    """Global task id used by the API (/tasks/{key}) and as the queue file name."""
    return f"{workflow_id}.{task_id}"


def split_task_key(key: str) -> tuple[str, str]:
    workflow_id, _, task_id = key.partition(".")
    return workflow_id, task_id


# -- specs -----------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    id: str
    op: str
    params: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    priority: str = DEFAULT_PRIORITY
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


# -- records ---------------------------------------------------------------------

HISTORY_LIMIT = 50


def new_submission(workflow_id: str, spec: WorkflowSpec, *, last_seq: int,
                   now: float) -> tuple[Record, list[Record]]:
    """The records of a new workflow and its tasks, all queued.

    Numbering (the global submission order, FIFO within a priority): the
    tasks take ``last_seq + 1 .. last_seq + n`` in spec order and the
    workflow ``last_seq + n + 1``, so a task's number follows from its
    workflow's (first_task_records) and the next submission starts after it.
    """
    spec_doc = spec.to_dict()
    workflow = {"schema": SCHEMA_VERSION, "kind": "workflow", "id": workflow_id,
                "name": spec.name, "status": WorkflowStatus.QUEUED, "created_at": now,
                "started_at": None, "finished_at": None, "max_parallel": spec.max_parallel,
                "task_ids": [t.id for t in spec.tasks], "spec": spec_doc,
                "seq": last_seq + len(spec.tasks) + 1, "cancel_requested": False}
    return workflow, _task_records(workflow, enumerate(spec_doc["tasks"]))


def first_task_records(workflow: Record, task_ids: Iterable[str] | None = None) -> list[Record]:
    """The records ``new_submission`` made for tasks of ``workflow`` (queued,
    same numbers), for ``task_ids`` (default: all, in order): how a store
    rebuilds task files it lost or never wrote. KeyError for an id the
    workflow record does not have."""
    position = {tid: i for i, tid in enumerate(workflow["task_ids"])}
    specs = {t["id"]: t for t in workflow["spec"]["tasks"] if isinstance(t, dict) and "id" in t}
    wanted = workflow["task_ids"] if task_ids is None else task_ids
    return _task_records(workflow, ((position[tid], specs[tid]) for tid in wanted))


def _task_records(workflow: Record, tasks: Iterable[tuple[int, dict[str, Any]]]) -> list[Record]:
    """The queued record of each (index in task_ids, task spec): THE constructor."""
    first_seq = _number(workflow.get("seq")) - len(workflow["task_ids"])
    workflow_id, created = workflow["id"], workflow.get("created_at")
    records = []
    for index, task in tasks:
        params = task.get("params")  # the spec's own dict: no copy per task (10,000-task DAGs)
        records.append({
            "schema": SCHEMA_VERSION, "kind": "task", "key": task_key(workflow_id, task["id"]),
            "workflow_id": workflow_id, "id": task["id"], "op": task.get("op"),
            "params": params if isinstance(params, dict) else {},
            "depends_on": list(task.get("depends_on") or []),
            "priority": task.get("priority", DEFAULT_PRIORITY),
            "retries": task.get("retries", 0), "timeout_s": task.get("timeout_s"),
            "seq": max(first_seq + index, 0), "status": TaskStatus.QUEUED, "attempts": 0,
            "attempt_base": 0, "progress": 0, "message": None, "result": None, "error": None,
            "exit_code": None, "signal": None, "created_at": created, "started_at": None,
            "finished_at": None, "updated_at": created, "lease": None, "history": [],
            "retry_at": None})
    return records


def reset_for_rerun(task: Record, now: float) -> None:
    """Back to queued for a user retry: fresh retry budget, attempts kept."""
    task.update(status=TaskStatus.QUEUED, attempt_base=task.get("attempts", 0), progress=0,
                message=None, result=None, error=None, exit_code=None, signal=None,
                started_at=None, finished_at=None, updated_at=now, lease=None, retry_at=None)


def add_history(task: Record, entry: dict[str, Any]) -> None:
    """One finished attempt (the newest HISTORY_LIMIT are kept)."""
    history = task.setdefault("history", [])
    history.append(entry)
    del history[:-HISTORY_LIMIT]


def _number(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
