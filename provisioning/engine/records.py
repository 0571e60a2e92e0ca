"""Persisted records (store/base.py formats) and the views the API and CLI show.

Records are what the Store keeps; views are what callers get (docs/INTERNALS.md).
Keys beyond store/base.py's list (all optional on read, so older records load):
workflow `cancel_requested`; task `attempt_base` (attempts before the current
run, so a user `retry` gets the full retry budget again), `retry_at` (epoch of
the next attempt while backing off).
"""

from __future__ import annotations

import re
from typing import Any

from provisioning.engine.model import (
    SCHEMA_VERSION,
    TaskSpec,
    TaskStatus,
    WorkflowSpec,
    task_key,
)

WORKFLOW_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
FINISHED_TASK = frozenset(s.value for s in TaskStatus if s.finished)
HISTORY_LIMIT = 50
COUNT_KEYS = ("queued", "running", "succeeded", "failed", "cancelled", "skipped")


def valid_workflow_id(value: Any) -> bool:
    return isinstance(value, str) and bool(WORKFLOW_ID_RE.match(value))


def valid_task_key(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    workflow_id, dot, task_id = value.partition(".")
    return bool(dot) and valid_workflow_id(workflow_id) and bool(TASK_ID_RE.match(task_id))


def new_workflow_record(workflow_id: str, spec: WorkflowSpec, *, seq: int,
                        now: float) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "kind": "workflow", "id": workflow_id, "name": spec.name,
            "status": "queued", "created_at": now, "started_at": None, "finished_at": None,
            "max_parallel": spec.max_parallel, "task_ids": [t.id for t in spec.tasks],
            "spec": spec.to_dict(), "seq": seq, "cancel_requested": False}


def new_task_record(workflow_id: str, spec: TaskSpec, *, seq: int, now: float) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "kind": "task", "key": task_key(workflow_id, spec.id),
            "workflow_id": workflow_id, "id": spec.id, "op": spec.op, "params": spec.params,
            "depends_on": list(spec.depends_on), "priority": spec.priority,
            "retries": spec.retries, "timeout_s": spec.timeout_s, "seq": seq,
            "status": "queued", "attempts": 0, "attempt_base": 0, "progress": 0,
            "message": None, "result": None, "error": None, "exit_code": None, "signal": None,
            "created_at": now, "started_at": None, "finished_at": None, "updated_at": now,
            "lease": None, "history": [], "retry_at": None}


def reset_for_rerun(task: dict[str, Any], now: float) -> None:
    """Back to queued for a user retry: fresh retry budget, attempts kept."""
    task.update(status="queued", attempt_base=task.get("attempts", 0), progress=0, message=None,
                result=None, error=None, exit_code=None, signal=None, started_at=None,
                finished_at=None, updated_at=now, lease=None, retry_at=None)


def add_history(task: dict[str, Any], entry: dict[str, Any]) -> None:
    history = task.setdefault("history", [])
    history.append(entry)
    del history[:-HISTORY_LIMIT]


def _duration(started: float | None, finished: float | None) -> float | None:
    if started is None or finished is None:
        return None
    return round(max(0.0, finished - started), 3)


def task_view(task: dict[str, Any], live_pid: int | None = None) -> dict[str, Any]:
    lease = task.get("lease") or {}
    return {"key": task["key"], "workflow_id": task["workflow_id"], "id": task["id"],
            "op": task["op"], "params": task.get("params", {}),
            "depends_on": list(task.get("depends_on", [])),
            "priority": task.get("priority", "normal"), "status": task["status"],
            "progress": task.get("progress", 0), "message": task.get("message"),
            "attempts": task.get("attempts", 0), "retries": task.get("retries", 0),
            "started_at": task.get("started_at"), "finished_at": task.get("finished_at"),
            "duration_s": _duration(task.get("started_at"), task.get("finished_at")),
            "exit_code": task.get("exit_code"), "signal": task.get("signal"),
            "error": task.get("error"), "result": task.get("result"),
            "pid": lease.get("pid") or live_pid}


def workflow_view(workflow: dict[str, Any], tasks: list[dict[str, Any]], *,
                  with_tasks: bool = True,
                  live_pids: dict[str, int | None] | None = None) -> dict[str, Any]:
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for t in tasks:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    spec_head = (workflow.get("spec") or {}).get("workflow") or {}
    view = {"workflow_id": workflow["id"], "name": workflow["name"],
            "kind": spec_head.get("kind", "workflow"), "status": workflow["status"],
            "created_at": workflow.get("created_at"), "started_at": workflow.get("started_at"),
            "finished_at": workflow.get("finished_at"),
            "duration_s": _duration(workflow.get("started_at"), workflow.get("finished_at")),
            "max_parallel": workflow.get("max_parallel"), "counts": counts}
    if with_tasks:
        live_pids = live_pids or {}
        view["tasks"] = [task_view(t, live_pids.get(t["id"])) for t in tasks]
    return view
