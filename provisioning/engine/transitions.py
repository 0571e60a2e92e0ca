"""Task state transitions: progress, completion (fenced by lease), retry backoff,
skipping dependents, finishing workflows, events. A mixin of Engine; every
method runs with the engine lock held unless it takes it itself."""

from __future__ import annotations

import heapq
import logging
import time
from typing import Any

from provisioning import model, procinfo
from provisioning.engine.executor import TaskOutcome
from provisioning.engine.flows import _Flow, _Running

log = logging.getLogger("provisioning.engine")
BACKOFF_BASE, BACKOFF_CAP = 0.5, 60.0
UNRECORDED = "unrecorded"  # stop reason: what it waited for could not be written
UNRECORDED_RETRY_S = 2.0  # then start it again after this pause (disk full)
# A task's pid is written this long after its claim if it still runs. A
# shorter task never costs that write (its completion record replaces it):
# each durable record write costs ~0.6 ms of kernel CPU on our VMs and the pid
# writes were a third of them. Until then recovery finds the tree by its marker.
PID_WRITE_DELAY = 0.2


class TaskTransitions:
    # -- task thread callbacks ---------------------------------------------

    def _run_task(self, key: str, handle: _Running) -> None:
        try:
            # A dependent never starts before its dependencies' completions are
            # on disk (after a crash they are not run again behind its back).
            # Its own claim is not waited for: recovery kills any live process
            # of an unfinished task by its marker, recorded claim or not.
            self._writer.wait(handle.gate)
        except Exception as e:
            log.error("task %s: its dependencies' completions could not be recorded, "
                      "not started: %s", key, e)
            # Never started: not a failed attempt. Queued again (reliability suite fix).
            outcome = TaskOutcome(stop_reason=UNRECORDED, finished_at=time.time(),
                                  error=f"could not record its dependencies' completion: {e}")
            with self._lock:
                self._complete(key, handle.lease_token, outcome)
            return
        try:
            outcome = handle.process.run()
        except Exception as e:  # an executor bug must still finish the task
            log.exception("task %s: executor error", key)
            outcome = TaskOutcome(error=f"executor error: {e}", finished_at=time.time())
        with self._lock:
            self._complete(key, handle.lease_token, outcome)

    def _current(self, key: str, lease_token: int) -> tuple[_Flow, dict[str, Any]] | None:
        found = self._lookup_key(key)
        if found is None:
            return None
        lease = found[1].get("lease") or {}
        return found if lease.get("token") == lease_token else None

    def _flush_pids(self) -> float | None:
        """Record the pid (and create time) of tasks still running PID_WRITE_DELAY
        after their claim; returns the next such deadline. Entries are in
        deadline order (one delay). Scheduler thread, lock held."""
        now = time.monotonic()
        while self._pid_unsaved:
            key, (deadline, lease_token) = next(iter(self._pid_unsaved.items()))
            if deadline > now:
                return deadline
            del self._pid_unsaved[key]
            found = self._current(key, lease_token)
            handle = self._running.get(key)
            if found is None or handle is None:
                continue
            process = handle.process
            if process.pid is None:  # not started yet (waiting for its dependencies)
                if not process.finished:
                    self._pid_unsaved[key] = (now + PID_WRITE_DELAY, lease_token)
                continue
            if process.finished:
                continue  # its completion record is on its way
            # Not reaped yet, so the pid is still ours: its create time tells a
            # reused pid apart at recovery.
            found[1]["lease"].update(pid=process.pid,
                                     pid_create_time=procinfo.create_time(process.pid))
            self._save_task(found[1])
        return None

    def _on_progress(self, key: str, lease_token: int, progress: int, message: str | None) -> None:
        with self._lock:
            found = self._current(key, lease_token)
            if found is not None:
                self._set_progress(found[0], found[1], progress, message)

    def _set_progress(self, flow: _Flow, task: dict[str, Any], progress: int,
                      message: str | None) -> None:
        if task.get("progress") == progress and task.get("message") == message:
            return
        task.update(progress=progress, message=message, updated_at=time.time())
        self._event(flow, "progress", task["id"], task["status"], progress=progress,
                    message=message)
        key = task["key"]
        now = time.monotonic()
        if now - self._progress_saved.get(key, 0) >= \
                self.config.executor.checkpoint_interval_seconds:
            self._progress_saved[key] = now
            self._progress_dirty.discard(key)
            self._save_task(task)
        elif key not in self._progress_dirty:
            self._progress_dirty.add(key)
            self._wake.notify_all()  # the scheduler owns the flush deadline

    def _flush_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        interval = self.config.executor.checkpoint_interval_seconds
        for key in list(self._progress_dirty):
            if force or now - self._progress_saved.get(key, 0) >= interval:
                self._progress_dirty.discard(key)
                self._progress_saved[key] = now
                found = self._lookup_key(key)
                if found:
                    self._save_task(found[1])

    # -- transitions (lock held) -------------------------------------------

    def _complete(self, key: str, lease_token: int, outcome: TaskOutcome) -> None:
        handle = self._running.get(key)
        if handle is not None and handle.lease_token == lease_token:
            del self._running[key]
        self._pid_unsaved.pop(key, None)  # the completion's record carries the pid
        found = self._current(key, lease_token)
        if found is None:
            log.warning("task %s: ignoring the completion of a lease that is no longer "
                        "current (token %s)", key, lease_token)
            self._changed.notify_all()
            return
        flow, task = found
        flow.running -= 1
        now = time.time()
        task.update(exit_code=outcome.exit_code, signal=outcome.signal, lease=None)
        self._progress_dirty.discard(key)
        self._progress_saved.pop(key, None)
        model.add_history(task, {"attempt": task["attempts"], "started_at": task.get("started_at"),
                             "finished_at": now, "exit_code": outcome.exit_code,
                             "signal": outcome.signal,
                             "status": "succeeded" if outcome.succeeded else (
                                 outcome.stop_reason or "failed"),
                             "error": outcome.error})
        if outcome.stop_reason == UNRECORDED and flow.rec.get("cancel_requested"):
            self._finish_task(flow, task, "cancelled", now, error="cancelled")
            self._skip_dependents(flow, task, now)
        elif outcome.stop_reason == UNRECORDED:
            # Its claim could not be written (disk full): it never ran. Queue it again
            # and try once more after a pause, without using up a retry.
            task.update(status="queued", started_at=None, updated_at=now,
                        attempt_base=task.get("attempt_base", 0) + 1,
                        retry_at=now + UNRECORDED_RETRY_S,
                        message=f"{outcome.error}; trying again in {UNRECORDED_RETRY_S:g}s")
            self._save_task(task)
            heapq.heappush(self._backoff, (time.monotonic() + UNRECORDED_RETRY_S, key))
            self._event(flow, "task", task["id"], "queued", message=task["message"])
        elif outcome.stop_reason == "shutdown":
            task.update(status="queued", started_at=None, updated_at=now,
                        attempt_base=task.get("attempt_base", 0) + 1,
                        message="stopped by orchestrator shutdown; queued again")
            self._save_task(task)
            self._event(flow, "task", task["id"], "queued", message=task["message"])
        elif outcome.stop_reason == "cancelled":
            self._finish_task(flow, task, "cancelled", now, error="cancelled while running")
            self._skip_dependents(flow, task, now)
        elif outcome.succeeded:
            task["result"] = outcome.result
            self._finish_task(flow, task, "succeeded", now, progress=100)
            for child in flow.dependents.get(task["id"], []):
                flow.waiting[child] -= 1
                ct = flow.tasks[child]
                if flow.waiting[child] == 0 and ct["status"] == "queued":
                    self._push_ready(flow, ct)
        else:
            self._failed_attempt(flow, task, outcome, now)
        self._maybe_finish(flow)
        if not self._draining:
            # Start what is ready now, in this thread: waking the scheduler for
            # it cost a thread hand-off per task (trivial tasks: ~10% of the run).
            try:
                self._start_ready()
            except Exception:  # as in the scheduler: a bug must not lose this completion
                log.exception("engine error while starting ready tasks")
        if self._backoff:
            self._wake.notify_all()  # the scheduler owns the retry deadlines
        self._changed.notify_all()  # shutdown waits for _running to empty

    def _failed_attempt(self, flow: _Flow, task: dict[str, Any], outcome: TaskOutcome,
                        now: float) -> None:
        if outcome.error:
            error = outcome.error
        elif outcome.signal is not None:
            error = f"killed by signal {outcome.signal}"
        else:
            error = f"exit code {outcome.exit_code}"
        used = task["attempts"] - task.get("attempt_base", 0)
        if used <= task.get("retries", 0) and not flow.rec.get("cancel_requested"):
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (used - 1))
            task.update(status="queued", error=error, retry_at=now + delay, updated_at=now,
                        message=f"attempt {task['attempts']} failed ({error}); retry "
                                f"{used}/{task['retries']} in {delay:g}s")
            self._save_task(task)
            heapq.heappush(self._backoff, (time.monotonic() + delay, task["key"]))
            self._event(flow, "task", task["id"], "queued", message=task["message"])
            return
        self._finish_task(flow, task, "failed", now, error=error)
        self._skip_dependents(flow, task, now)

    def _finish_task(self, flow: _Flow, task: dict[str, Any], status: str, now: float, *,
                     error: str | None = None, progress: int | None = None) -> None:
        if task["status"] not in model.FINISHED_TASK:
            flow.unfinished -= 1
        task.update(status=status, finished_at=now, updated_at=now, retry_at=None)
        if error is not None:
            task["error"] = error
        if progress is not None:
            task["progress"] = progress
        self._save_task(task)
        self._event(flow, "task", task["id"], status, progress=task.get("progress"),
                    message=error)

    def _skip_dependents(self, flow: _Flow, failed: dict[str, Any], now: float) -> None:
        """Every queued task downstream of `failed` is skipped (iterative walk)."""
        stack = [(failed["id"], child) for child in flow.dependents.get(failed["id"], [])]
        while stack:
            parent, tid = stack.pop()
            task = flow.tasks[tid]
            if task["status"] != "queued":
                continue
            self._finish_task(flow, task, "skipped", now,
                              error=f"dependency '{parent}' {flow.tasks[parent]['status']}")
            stack.extend((tid, child) for child in flow.dependents.get(tid, []))

    def _maybe_finish(self, flow: _Flow) -> None:
        if flow.finished or flow.unfinished > 0 or flow.running > 0:
            return
        statuses = {t["status"] for t in flow.tasks.values()}
        if flow.rec.get("cancel_requested") and "cancelled" in statuses:
            status = "cancelled"
        elif statuses == {"succeeded"}:
            status = "succeeded"
        else:
            status = "failed"
        now = time.time()
        flow.rec.update(status=status, finished_at=now)
        flow.rec["started_at"] = flow.rec.get("started_at") or now
        self._save_workflow(flow.rec)
        self._event(flow, "workflow", None, status)
        if flow.end_waiters is not None:
            flow.end_waiters.notify_all()

    def _event(self, flow: _Flow, kind: str, task_id: str | None, status: str, *,
               progress: int | None = None, message: str | None = None) -> None:
        event = {"seq": len(flow.events) + 1, "ts": time.time(), "type": kind, "task": task_id,
                 "status": status, "progress": progress, "message": message}
        flow.events.append(event)
        # With the next batch: never raises, so a full disk cannot break a
        # transition half-way nor fail a submission already committed.
        self._writer.append_event(flow.rec["id"], event)
        if flow.event_waiters is not None:
            flow.event_waiters.notify_all()

