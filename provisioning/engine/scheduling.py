"""Scheduling: which ready task starts next, its claim, and its process.

A mixin of Engine (engine.py); every method runs with the engine lock held.
The scheduler thread sleeps on a Condition and wakes for submissions,
cancels and retries, or at a deadline (retry backoff, progress checkpoint,
pid records). A task that ends starts
the next ready ones itself (transitions.py), without waking it.
"""

from __future__ import annotations

import heapq
import logging
import os
import secrets
import time
from typing import Any

from provisioning.engine.commit import DONE, Ticket
from provisioning.engine.executor import TaskProcess, TaskRun, clean_env
from provisioning.engine.flows import _Flow, _Running
from provisioning.engine.transitions import PID_WRITE_DELAY
from provisioning.errors import ValidationError

log = logging.getLogger("provisioning.engine")

# With no deadline at all the scheduler sleeps until notified, but looks at least
# this often (s): a notify missed by a bug costs a minute, not a hung workflow.
IDLE_WAKE = 60.0


class Scheduling:
    """Mixin of Engine: the scheduler thread, claims, spawns."""

    def _scheduler(self) -> None:
        with self._lock:
            while not self._stopping:
                try:
                    timeout = self._tick()
                except Exception:  # keep scheduling; a bug must not stop the daemon
                    log.exception("engine scheduler error")
                    timeout = 1.0
                if not self._stopping:
                    self._wake.wait(timeout)

    def _tick(self) -> float:
        now = time.monotonic()
        while self._backoff and self._backoff[0][0] <= now:
            _, key = heapq.heappop(self._backoff)
            flow_task = self._lookup_key(key)
            if flow_task and flow_task[1]["status"] == "queued":
                flow, task = flow_task
                task["retry_at"] = None
                if flow.waiting.get(task["id"], 0) == 0:
                    self._push_ready(flow, task)
        self._flush_progress()
        if not self._draining:
            self._start_ready()
        pid_deadline = self._flush_pids()  # after the claims: it covers theirs
        deadlines = [now + IDLE_WAKE]
        if pid_deadline is not None:
            deadlines.append(pid_deadline)
        if self._backoff:
            deadlines.append(self._backoff[0][0])
        if self._progress_dirty:
            deadlines.append(min(self._progress_saved.get(k, 0) for k in self._progress_dirty)
                             + self.config.executor.checkpoint_interval_seconds)
        return max(0.01, min(deadlines) - time.monotonic())

    def _start_ready(self) -> None:
        limit = self.config.executor.max_concurrent_tasks
        while len(self._running) < limit:
            best: tuple[tuple[int, int, str], _Flow] | None = None
            for workflow_id, flow in list(self._schedulable.items()):
                while flow.ready:  # drop stale entries (cancelled, already started)
                    tid = flow.ready[0][2]
                    t = flow.tasks[tid]
                    if t["status"] == "queued" and not t.get("retry_at") and \
                            flow.waiting.get(tid, 0) == 0:
                        break
                    heapq.heappop(flow.ready)
                if flow.finished or not flow.ready:
                    del self._schedulable[workflow_id]  # _push_ready adds it back
                    continue
                if flow.running >= flow.limit or flow.rec.get("cancel_requested"):
                    continue
                if best is None or flow.ready[0] < best[0]:
                    best = (flow.ready[0], flow)
            if best is None:
                return
            heapq.heappop(best[1].ready)
            self._claim(best[1], best[1].tasks[best[0][2]])

    def _claim(self, flow: _Flow, task: dict[str, Any]) -> None:
        now = time.time()
        try:
            argv = self.registry.resolve(task["op"])
        except ValidationError as e:
            task["attempts"] = task.get("attempts", 0) + 1
            self._finish_task(flow, task, "failed", now, error=str(e))
            self._skip_dependents(flow, task, now)
            self._maybe_finish(flow)
            return
        self._lease_seq += 1
        task.update(status="running", attempts=task.get("attempts", 0) + 1, started_at=now,
                    finished_at=None, updated_at=now, error=None, exit_code=None, signal=None,
                    message=None, progress=0, last_lease_token=self._lease_seq,
                    lease={"token": self._lease_seq, "owner": self.instance_id, "pid": None,
                           "pid_create_time": None})
        # The batch with its dependencies' completions (written before anything
        # handed over later): the process waits for it. The claim itself is
        # handed to the committer and not waited for (see _run_task).
        gate = flow.written if task.get("depends_on") else DONE
        self._save_task(task)
        flow.running += 1
        if flow.rec["status"] == "queued":
            flow.rec["status"] = "running"
            flow.rec["started_at"] = flow.rec.get("started_at") or now
            self._save_workflow(flow.rec)
            self._event(flow, "workflow", None, "running")
        self._event(flow, "task", task["id"], "running",
                    message=f"attempt {task['attempts']}")
        handle = self._spawn(flow, task, argv, gate)
        self._running[task["key"]] = handle
        if not self._pid_unsaved:  # the scheduler's timeout must now cover a pid write
            self._wake.notify_all()
        self._pid_unsaved[task["key"]] = (time.monotonic() + PID_WRITE_DELAY, self._lease_seq)

    def _spawn(self, flow: _Flow, task: dict[str, Any], argv: list[str],
               gate: Ticket) -> _Running:
        key, lease_token = task["key"], self._lease_seq
        task_token = secrets.token_urlsafe(32)
        env = {"PROVISIONING_TASK_ID": key, "PROVISIONING_WORKFLOW_ID": flow.rec["id"],
               "PROVISIONING_TASK_TOKEN": task_token,
               "PROVISIONING_LIB": os.pathsep.join(str(d) for d in self.registry.lib_dirs),
               "PROVISIONING_CHECKPOINT": str(self.store.checkpoint_path(flow.rec["id"],
                                                                         task["id"])),
               "PROVISIONING_STORAGE_DATA_DIR": str(self.config.storage.data_dir)}
        if self.endpoint:
            env["PROVISIONING_ENDPOINT"] = self.endpoint
        params = task.get("params") or {}
        base = self._base_env if self._base_env is not None else clean_env({})
        run = TaskRun(key=key, argv=argv, params=params, env={**base, **env},
                      log_path=self.store.task_log_path(flow.rec["id"], task["id"]),
                      attempt=task["attempts"],
                      timeout_s=task.get("timeout_s") or self.config.executor.task_timeout_seconds,
                      kill_grace_s=self.config.executor.kill_grace_seconds)
        if task["op"] == "shell.run" and _valid_shell_run(params):
            # Fast path with the same contract as builtin/shell_run.py: the argv is the
            # task's process itself (no interpreter start), params env under ours.
            run.argv, run.cwd, run.send_params = list(params["argv"]), params.get("cwd"), False
            run.env = {**base, **(params.get("env") or {}), **env}
        process = TaskProcess(
            run, on_progress=lambda p, m: self._on_progress(key, lease_token, p, m),
            zygote=self.zygote)
        handle = _Running(process=process, lease_token=lease_token, task_token=task_token,
                          gate=gate)
        self._threads.run(lambda: self._run_task(key, handle))
        return handle

def _valid_shell_run(params: dict[str, Any]) -> bool:
    argv, cwd, env = params.get("argv"), params.get("cwd"), params.get("env")
    return (isinstance(argv, list) and bool(argv) and all(isinstance(a, str) for a in argv)
            and (cwd is None or isinstance(cwd, str))
            and (env is None or (isinstance(env, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()))))
