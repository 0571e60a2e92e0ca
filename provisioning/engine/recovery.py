"""Crash recovery: bring records left by a dead engine back to a runnable state.

Per failure kind (DESIGN.md 7, PITFALLS "write down what happens"):
- queued tasks stay queued; but a process still carrying the marker of a
  queued task is killed first: the engine starts a task without waiting for
  its claim to reach the disk, so a crash may leave the process of a start
  that was never recorded (engine.py, _claim);
- tasks that were running: their process tree, if still alive (pid and
  create time match), is killed first, and any process still carrying the
  task's marker is swept, so a task never runs twice at once; then the
  task's checkpoint decides: `{"done": true}` -> succeeded with its
  "result", otherwise queued again (at-least-once; attempts are kept, the
  interrupted attempt does not use up a retry);
- succeeded tasks never run again;
- a workflow whose cancel was requested finishes as cancelled.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from provisioning import procinfo
from provisioning.engine import executor
from provisioning.fsutil import read_json
from provisioning.model import UNFINISHED_TASK, TaskStatus, add_history
from provisioning.model.storage import Store

log = logging.getLogger("provisioning.engine")


def recover_running_tasks(store: Store, workflows: dict[str, dict[str, Any]],
                          tasks: list[dict[str, Any]], *, kill_grace: float) -> None:
    """Kill what is left of unfinished tasks' processes; resolve every
    `running` task record in place and persist it."""
    unfinished = {t["key"]: t for t in tasks if t.get("status") in UNFINISHED_TASK
                  and isinstance(t.get("key"), str)}
    if not unfinished:
        return
    marked = executor.marked_processes(set(unfinished))  # one pass over the process table
    for key in marked:
        if unfinished[key].get("status") == TaskStatus.QUEUED:
            log.warning("task %s: a process of a start that was not recorded is still "
                        "alive; killing it", key)
            executor.kill_tree(None, None, key, kill_grace)
    for task in (t for t in unfinished.values() if t.get("status") == TaskStatus.RUNNING):
        lease = task.get("lease") or {}
        pid, create_time = lease.get("pid"), lease.get("pid_create_time")
        recorded_alive = procinfo.same_process(pid, create_time, zombies=True) is not None
        if recorded_alive or marked.get(task["key"]):
            log.warning("task %s: process tree of a previous run is still alive; killing it",
                        task["key"])
            # The recorded pid only while it is still that process (never a reused pid).
            executor.kill_tree(pid if recorded_alive else None, create_time, task["key"],
                               kill_grace)
        now = time.time()
        checkpoint = _read_checkpoint(store.checkpoint_path(task["workflow_id"], task["id"]))
        add_history(task, {"attempt": task.get("attempts", 0), "status": "interrupted",
                           "started_at": task.get("started_at"), "finished_at": now,
                           "owner": lease.get("owner")})
        workflow = workflows.get(task["workflow_id"]) or {}
        if checkpoint.get("done") is True:
            task.update(status=TaskStatus.SUCCEEDED, progress=100, result=checkpoint.get("result"),
                        finished_at=now, error=None)
        elif workflow.get("cancel_requested"):
            task.update(status=TaskStatus.CANCELLED, finished_at=now, error="cancelled")
        else:
            task.update(status=TaskStatus.QUEUED, started_at=None, finished_at=None, retry_at=None,
                        attempt_base=task.get("attempt_base", 0) + 1,
                        message="interrupted by an orchestrator restart; queued again")
        task.update(lease=None, updated_at=now,
                    last_lease_token=lease.get("token") or task.get("last_lease_token"))
        store.save_task(task)


def _read_checkpoint(path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
