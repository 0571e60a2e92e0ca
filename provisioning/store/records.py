"""Record checks and constructors shared by the stores (formats: store/base.py).

`check_workflow` / `check_task` say why a record read from disk cannot be
trusted (then it is quarantined); `new_task_record` builds the queued record
of one task of a spec (used to rebuild task files lost to a crash, and free
for the engine to use when it submits).
"""

from __future__ import annotations

import time
from typing import Any

from provisioning.engine.model import SCHEMA_VERSION, TaskStatus, WorkflowStatus, task_key
from provisioning.errors import ValidationError

Record = dict[str, Any]

_TASK_STATUSES = frozenset(s.value for s in TaskStatus)
_WORKFLOW_STATUSES = frozenset(s.value for s in WorkflowStatus)
MAX_NAME = 200  # file names are <workflow_id>.<task_id>.json: keep under NAME_MAX (255)


def check_id(value: Any, what: str) -> str:
    """An id that is safe as (part of) a file name in the data dir."""
    if (not isinstance(value, str) or not value or len(value) > MAX_NAME
            or value.startswith(".") or "/" in value or "\\" in value or "\0" in value
            or not value.isprintable()):
        raise ValidationError(f"invalid {what} {value!r}: not usable as a file name")
    return value


def _problem_common(rec: Any, kind: str) -> str | None:
    if not isinstance(rec, dict):
        return f"not a JSON object ({type(rec).__name__})"
    if rec.get("kind") != kind:
        return f"kind is {rec.get('kind')!r}, expected {kind!r}"
    if rec.get("schema") != SCHEMA_VERSION:
        return f"schema is {rec.get('schema')!r}, this version reads {SCHEMA_VERSION}"
    return None


def check_workflow(rec: Any, file_stem: str) -> str | None:
    """None if ``rec`` is a workflow record stored as ``<file_stem>.json``, else why not."""
    problem = _problem_common(rec, "workflow")
    if problem:
        return problem
    if rec.get("id") != file_stem:
        return f"id {rec.get('id')!r} does not match the file name"
    if rec.get("status") not in _WORKFLOW_STATUSES:
        return f"unknown status {rec.get('status')!r}"
    task_ids = rec.get("task_ids")
    if not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids):
        return "task_ids is not a list of strings"
    spec = rec.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("tasks"), list):
        return "spec is missing or has no task list"
    spec_ids = {t.get("id") for t in spec["tasks"] if isinstance(t, dict)}
    missing = [t for t in task_ids if t not in spec_ids]
    if missing:
        return f"task_ids {missing} are not in its spec"
    return None


def check_task(rec: Any, file_stem: str) -> str | None:
    """None if ``rec`` is a task record stored as ``<file_stem>.json``, else why not."""
    problem = _problem_common(rec, "task")
    if problem:
        return problem
    wid, tid = rec.get("workflow_id"), rec.get("id")
    if not isinstance(wid, str) or not isinstance(tid, str):
        return "workflow_id or id missing"
    if rec.get("key") != file_stem or task_key(wid, tid) != file_stem:
        return f"key {rec.get('key')!r} does not match the file name"
    if rec.get("status") not in _TASK_STATUSES:
        return f"unknown status {rec.get('status')!r}"
    return None


def new_task_record(workflow_id: str, task_spec: dict[str, Any], *, seq: int,
                    created_at: float | None = None) -> Record:
    """The queued record of one task of a spec (``TaskSpec.to_dict()`` shape)."""
    now = time.time()
    return {
        "schema": SCHEMA_VERSION, "kind": "task",
        "key": task_key(workflow_id, task_spec["id"]), "workflow_id": workflow_id,
        "id": task_spec["id"], "op": task_spec.get("op"),
        "params": task_spec.get("params") or {},
        "depends_on": list(task_spec.get("depends_on") or []),
        "priority": task_spec.get("priority", "normal"),
        "retries": task_spec.get("retries", 0), "timeout_s": task_spec.get("timeout_s"),
        "seq": seq, "status": TaskStatus.QUEUED.value, "attempts": 0, "attempt_base": 0,
        "progress": 0,
        "message": None, "result": None, "error": None, "exit_code": None, "signal": None,
        "created_at": created_at if created_at is not None else now,
        "started_at": None, "finished_at": None, "updated_at": now,
        "lease": None, "history": [], "retry_at": None,
    }


def new_workflow_record(workflow_id: str, spec: dict[str, Any], *, seq: int,
                        created_at: float | None = None) -> Record:
    """The queued record of a workflow (``WorkflowSpec.to_dict()`` shape for ``spec``)."""
    head = spec.get("workflow") or {}
    return {
        "schema": SCHEMA_VERSION, "kind": "workflow", "id": workflow_id,
        "name": head.get("name"), "status": WorkflowStatus.QUEUED.value,
        "created_at": created_at if created_at is not None else time.time(),
        "started_at": None, "finished_at": None, "max_parallel": head.get("max_parallel"),
        "task_ids": [t["id"] for t in spec.get("tasks", [])], "spec": spec, "seq": seq,
    }
