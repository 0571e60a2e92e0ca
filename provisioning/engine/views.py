"""The views the API and CLI show of records (docs/INTERNALS.md): what callers get.

Records are what the Store keeps (provisioning.model builds them); a view is
a copy shaped for readers, with computed fields (durations, counts, the live
pid of a task whose record does not have it yet).
"""

from __future__ import annotations

from typing import Any

from provisioning.model import DEFAULT_PRIORITY, TASK_STATUSES, Record, plain


def _duration(started: float | None, finished: float | None) -> float | None:
    if started is None or finished is None:
        return None
    return round(max(0.0, finished - started), 3)


def task_view(task: Record, live_pid: int | None = None) -> dict[str, Any]:
    lease = task.get("lease") or {}
    return {"key": task["key"], "workflow_id": task["workflow_id"], "id": task["id"],
            "op": task["op"], "params": task.get("params", {}),
            "depends_on": list(task.get("depends_on", [])),
            "priority": task.get("priority", DEFAULT_PRIORITY), "status": plain(task["status"]),
            "progress": task.get("progress", 0), "message": task.get("message"),
            "attempts": task.get("attempts", 0), "retries": task.get("retries", 0),
            "started_at": task.get("started_at"), "finished_at": task.get("finished_at"),
            "duration_s": _duration(task.get("started_at"), task.get("finished_at")),
            "exit_code": task.get("exit_code"), "signal": task.get("signal"),
            "error": task.get("error"), "result": task.get("result"),
            "pid": lease.get("pid") or live_pid}


def workflow_view(workflow: Record, tasks: list[Record], *,
                  with_tasks: bool = True,
                  live_pids: dict[str, int | None] | None = None) -> dict[str, Any]:
    counts = dict.fromkeys((s.value for s in TASK_STATUSES), 0)
    for t in tasks:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    spec_head = (workflow.get("spec") or {}).get("workflow") or {}
    view = {"workflow_id": workflow["id"], "name": workflow["name"],
            "kind": spec_head.get("kind", "workflow"), "status": plain(workflow["status"]),
            "created_at": workflow.get("created_at"), "started_at": workflow.get("started_at"),
            "finished_at": workflow.get("finished_at"),
            "duration_s": _duration(workflow.get("started_at"), workflow.get("finished_at")),
            "max_parallel": workflow.get("max_parallel"), "counts": counts}
    if with_tasks:
        live_pids = live_pids or {}
        view["tasks"] = [task_view(t, live_pids.get(t["id"])) for t in tasks]
    return view
