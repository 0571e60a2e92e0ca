"""The transitions: every change of a task's or workflow's state, and what follows.

queued -> running (a claim, under a new lease), running -> succeeded |
failed | cancelled, back to queued (a retry after backoff, a shutdown, a
claim that could not be recorded), queued -> skipped behind a dependency
that did not succeed, and a workflow's end once nothing is left. Each change
is saved (journal.py) and announced as an event. A completion is applied
only if its lease is still the current one (fencing): a run the engine gave
up on cannot overwrite what came after it. Progress reports are kept in
memory and saved at most every ``checkpoint_interval`` seconds per task.

Not thread-safe: the engine calls it with its lock held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from provisioning import procinfo
from provisioning.engine.commit import DONE, Ticket
from provisioning.engine.executor import TaskOutcome
from provisioning.engine.flows import Flow, FlowIndex
from provisioning.engine.journal import Journal
from provisioning.model import (
    FINISHED_TASK,
    NOT_SUCCEEDED,
    Record,
    TaskStatus,
    WorkflowStatus,
    add_history,
    reset_for_rerun,
)

log = logging.getLogger("provisioning.engine")
BACKOFF_BASE, BACKOFF_CAP = 0.5, 60.0
UNRECORDED = "unrecorded"  # stop reason: what it waited for could not be written
UNRECORDED_RETRY_S = 2.0  # then start it again after this pause (disk full)
SHUTDOWN = "shutdown"  # stop reason: the orchestrator drains; the task is queued again
CANCELLED = "cancelled"  # stop reason: its workflow is being cancelled


class Transitions:
    def __init__(self, flows: FlowIndex, journal: Journal, *, checkpoint_interval: float,
                 wake_scheduler: Callable[[], None]):
        """``wake_scheduler``: called when a progress save falls due (the
        scheduler owns that deadline)."""
        self.flows = flows
        self.journal = journal
        self.checkpoint_interval = checkpoint_interval
        self._wake_scheduler = wake_scheduler
        self._progress_saved: dict[str, float] = {}  # key -> monotonic time of last save
        self._progress_dirty: set[str] = set()

    def current(self, key: str, lease_token: int) -> tuple[Flow, Record] | None:
        """The task ``key`` if ``lease_token`` is still its lease (fencing)."""
        found = self.flows.lookup(key)
        if found is None:
            return None
        lease = found[1].get("lease") or {}
        return found if lease.get("token") == lease_token else None

    # -- claims ----------------------------------------------------------------------

    def claim(self, flow: Flow, task: Record, lease_token: int, owner: str) -> Ticket:
        """queued -> running under lease ``lease_token``. Returns the batch its
        process must wait for: the one with its dependencies' completions
        (handed over before anything later). The claim itself is not waited
        for: recovery kills any live process of an unfinished task."""
        now = time.time()
        task.update(status=TaskStatus.RUNNING, attempts=task.get("attempts", 0) + 1,
                    started_at=now, finished_at=None, updated_at=now, error=None,
                    exit_code=None, signal=None, message=None, progress=0,
                    last_lease_token=lease_token,
                    lease={"token": lease_token, "owner": owner, "pid": None,
                           "pid_create_time": None})
        gate = flow.written if task.get("depends_on") else DONE
        self.journal.save_task(flow, task)
        flow.running += 1
        if flow.rec["status"] == WorkflowStatus.QUEUED:
            flow.rec["status"] = WorkflowStatus.RUNNING
            flow.rec["started_at"] = flow.rec.get("started_at") or now
            self.journal.save_workflow(flow)
            self.journal.event(flow, "workflow", None, WorkflowStatus.RUNNING)
        self.journal.event(flow, "task", task["id"], TaskStatus.RUNNING,
                           message=f"attempt {task['attempts']}")
        return gate

    def unstartable(self, flow: Flow, task: Record, error: str) -> None:
        """A task that cannot even be claimed (its op no longer resolves)
        fails at once: one attempt, no process."""
        now = time.time()
        task["attempts"] = task.get("attempts", 0) + 1
        self.finish_task(flow, task, TaskStatus.FAILED, now, error=error)
        self.skip_dependents(flow, task, now)
        self.maybe_finish(flow)

    def record_pid(self, flow: Flow, task: Record, pid: int) -> None:
        """The running task's process, recorded so recovery can find its tree
        (its create time tells a reused pid apart). Only asked while the
        process is not reaped, so the pid is still ours."""
        task["lease"].update(pid=pid, pid_create_time=procinfo.create_time(pid))
        self.journal.save_task(flow, task)

    # -- ends ------------------------------------------------------------------------

    def complete(self, key: str, lease_token: int, outcome: TaskOutcome) -> Flow | None:
        """Apply the end of run ``lease_token`` of task ``key``; returns its flow,
        or None if that lease is no longer current (the end is ignored)."""
        found = self.current(key, lease_token)
        if found is None:
            log.warning("task %s: ignoring the completion of a lease that is no longer "
                        "current (token %s)", key, lease_token)
            return None
        flow, task = found
        flow.running -= 1
        now = time.time()
        task.update(exit_code=outcome.exit_code, signal=outcome.signal, lease=None)
        self._progress_dirty.discard(key)
        self._progress_saved.pop(key, None)
        add_history(task, {"attempt": task["attempts"], "started_at": task.get("started_at"),
                           "finished_at": now, "exit_code": outcome.exit_code,
                           "signal": outcome.signal,
                           "status": TaskStatus.SUCCEEDED if outcome.succeeded else (
                               outcome.stop_reason or TaskStatus.FAILED),
                           "error": outcome.error})
        cancelling = flow.rec.get("cancel_requested")
        if outcome.stop_reason == CANCELLED or (outcome.stop_reason == UNRECORDED and cancelling):
            error = "cancelled while running" if outcome.stop_reason == CANCELLED else "cancelled"
            self.finish_task(flow, task, TaskStatus.CANCELLED, now, error=error)
            self.skip_dependents(flow, task, now)
        elif outcome.stop_reason == UNRECORDED:
            # Its claim could not be written (disk full): it never ran. Queue it again
            # and try once more after a pause, without using up a retry.
            self._requeue(flow, task, now, f"{outcome.error}; trying again in "
                                           f"{UNRECORDED_RETRY_S:g}s", UNRECORDED_RETRY_S)
        elif outcome.stop_reason == SHUTDOWN:
            self._requeue(flow, task, now, "stopped by orchestrator shutdown; queued again")
        elif outcome.succeeded:
            task["result"] = outcome.result
            self.finish_task(flow, task, TaskStatus.SUCCEEDED, now, progress=100)
            self.flows.succeeded(flow, task)
        else:
            self._failed_attempt(flow, task, outcome, now)
        self.maybe_finish(flow)
        return flow

    def _requeue(self, flow: Flow, task: Record, now: float, message: str,
                 retry_in: float | None = None) -> None:
        """Back to queued without using up a retry (the attempt never really ran)."""
        task.update(status=TaskStatus.QUEUED, started_at=None, updated_at=now,
                    attempt_base=task.get("attempt_base", 0) + 1, message=message)
        if retry_in is not None:
            task["retry_at"] = now + retry_in
            self.flows.retry_at(task["key"], time.monotonic() + retry_in)
        self.journal.save_task(flow, task)
        self.journal.event(flow, "task", task["id"], TaskStatus.QUEUED, message=message)

    def _failed_attempt(self, flow: Flow, task: Record, outcome: TaskOutcome,
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
            task.update(status=TaskStatus.QUEUED, error=error, retry_at=now + delay,
                        updated_at=now,
                        message=f"attempt {task['attempts']} failed ({error}); retry "
                                f"{used}/{task['retries']} in {delay:g}s")
            self.journal.save_task(flow, task)
            self.flows.retry_at(task["key"], time.monotonic() + delay)
            self.journal.event(flow, "task", task["id"], TaskStatus.QUEUED,
                               message=task["message"])
            return
        self.finish_task(flow, task, TaskStatus.FAILED, now, error=error)
        self.skip_dependents(flow, task, now)

    def finish_task(self, flow: Flow, task: Record, status: TaskStatus, now: float, *,
                    error: str | None = None, progress: int | None = None) -> None:
        if task["status"] not in FINISHED_TASK:
            flow.unfinished -= 1
        task.update(status=status, finished_at=now, updated_at=now, retry_at=None)
        if error is not None:
            task["error"] = error
        if progress is not None:
            task["progress"] = progress
        self.journal.save_task(flow, task)
        self.journal.event(flow, "task", task["id"], status, progress=task.get("progress"),
                           message=error)

    def skip_dependents(self, flow: Flow, failed: Record, now: float) -> None:
        """Every queued task downstream of ``failed`` is skipped (iterative walk)."""
        stack = [(failed["id"], child) for child in flow.dependents.get(failed["id"], [])]
        while stack:
            parent, tid = stack.pop()
            task = flow.tasks[tid]
            if task["status"] != TaskStatus.QUEUED:
                continue
            self.finish_task(flow, task, TaskStatus.SKIPPED, now,
                             error=f"dependency '{parent}' {flow.tasks[parent]['status']}")
            stack.extend((tid, child) for child in flow.dependents.get(tid, []))

    def skip_blocked(self, flow: Flow) -> None:
        """Queued tasks behind a failed/cancelled/skipped dependency are skipped."""
        for t in flow.tasks.values():
            if t["status"] in NOT_SUCCEEDED:
                self.skip_dependents(flow, t, time.time())

    def maybe_finish(self, flow: Flow) -> None:
        """End the workflow once no task is left to run."""
        if flow.finished or flow.unfinished > 0 or flow.running > 0:
            return
        statuses = {t["status"] for t in flow.tasks.values()}
        if flow.rec.get("cancel_requested") and TaskStatus.CANCELLED in statuses:
            status = WorkflowStatus.CANCELLED
        elif statuses == {TaskStatus.SUCCEEDED}:
            status = WorkflowStatus.SUCCEEDED
        else:
            status = WorkflowStatus.FAILED
        now = time.time()
        flow.rec.update(status=status, finished_at=now)
        flow.rec["started_at"] = flow.rec.get("started_at") or now
        self.journal.save_workflow(flow)
        self.journal.event(flow, "workflow", None, status)
        if flow.end_waiters is not None:
            flow.end_waiters.notify_all()

    # -- what users ask for ------------------------------------------------------------

    def request_cancel(self, flow: Flow) -> None:
        """Mark the workflow as being cancelled, durably (waited for with the
        lock held: rare, and nothing may be marked cancelled before it)."""
        if flow.rec.get("cancel_requested"):
            return
        flow.rec["cancel_requested"] = True
        self.journal.wait(self.journal.save_workflow(flow))
        self.journal.event(flow, "workflow", None, flow.rec["status"],
                           message="cancel requested")

    def cancel_queued(self, flow: Flow) -> list[str]:
        """Queued tasks end cancelled; returns the keys of the running ones
        (their processes are for the scheduler to stop)."""
        now, running = time.time(), []
        for task in flow.tasks.values():
            if task["status"] == TaskStatus.QUEUED:
                self.finish_task(flow, task, TaskStatus.CANCELLED, now, error="cancelled")
            elif task["status"] == TaskStatus.RUNNING:
                running.append(task["key"])
        return running

    def rerun(self, flow: Flow, tasks: list[Record]) -> None:
        """A user retry of a finished workflow: ``tasks`` are queued again with
        a fresh retry budget (succeeded ones never run again)."""
        now = time.time()
        for task in tasks:
            reset_for_rerun(task, now)
            self.journal.save_task(flow, task)
            self.journal.event(flow, "task", task["id"], TaskStatus.QUEUED,
                               message="retry requested")
        flow.rec.update(status=WorkflowStatus.QUEUED, finished_at=None, cancel_requested=False)
        self.journal.save_workflow(flow)
        self.journal.event(flow, "workflow", None, WorkflowStatus.QUEUED,
                           message="retry requested")
        self.flows.reindex(flow)

    # -- progress --------------------------------------------------------------------

    def progress_of_run(self, key: str, lease_token: int, progress: int,
                        message: str | None) -> None:
        """A PROGRESS line of run ``lease_token`` (ignored once that run is over)."""
        found = self.current(key, lease_token)
        if found is not None:
            self.set_progress(found[0], found[1], progress, message)

    def set_progress(self, flow: Flow, task: Record, progress: int,
                     message: str | None) -> None:
        if task.get("progress") == progress and task.get("message") == message:
            return
        task.update(progress=progress, message=message, updated_at=time.time())
        self.journal.event(flow, "progress", task["id"], task["status"], progress=progress,
                           message=message)
        key = task["key"]
        now = time.monotonic()
        if now - self._progress_saved.get(key, 0) >= self.checkpoint_interval:
            self._progress_saved[key] = now
            self._progress_dirty.discard(key)
            self.journal.save_task(flow, task)
        elif key not in self._progress_dirty:
            self._progress_dirty.add(key)
            self._wake_scheduler()

    def flush_progress(self, force: bool = False) -> None:
        """Save the progress of tasks whose checkpoint interval has passed (all: ``force``)."""
        now = time.monotonic()
        for key in list(self._progress_dirty):
            if force or now - self._progress_saved.get(key, 0) >= self.checkpoint_interval:
                self._progress_dirty.discard(key)
                self._progress_saved[key] = now
                found = self.flows.lookup(key)
                if found:
                    self.journal.save_task(*found)

    def progress_deadline(self) -> float | None:
        """When the next unsaved progress falls due (monotonic), if any."""
        if not self._progress_dirty:
            return None
        return min(self._progress_saved.get(k, 0) for k in self._progress_dirty) \
            + self.checkpoint_interval
