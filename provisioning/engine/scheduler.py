"""The scheduler: which ready task starts next, its claim, its process, its end.

One scheduler thread sleeps on a Condition of the engine lock and wakes for
submissions, cancels and retries, or at a deadline (a retry's backoff, a
progress checkpoint, a pid record); one task thread per running task
(workers.py, reused) runs its process and hands its end to the transitions,
then starts the next ready tasks itself, without waking the scheduler (a
thread hand-off per task cost ~10% of a trivial task's run).

The scheduler owns what runs: the handle of every running task (its
process, lease and token), the lease numbering, and draining at shutdown.
Everything but the task threads' waits runs with the engine lock held.
"""

from __future__ import annotations

import logging
import threading
import time

from provisioning.engine.commit import Committer, Ticket
from provisioning.engine.executor import TaskOutcome
from provisioning.engine.flows import Flow, FlowIndex, Running
from provisioning.engine.launch import TaskLauncher
from provisioning.engine.transitions import SHUTDOWN, UNRECORDED, Transitions
from provisioning.engine.workers import TaskThreads
from provisioning.errors import ValidationError
from provisioning.model import Record, TaskStatus

log = logging.getLogger("provisioning.engine")

# A task's pid is written this long after its claim if it still runs. A
# shorter task never costs that write (its completion record replaces it):
# each durable record write costs ~0.6 ms of kernel CPU on our VMs and the pid
# writes were a third of them. Until then recovery finds the tree by its marker.
PID_WRITE_DELAY = 0.2
# With no deadline at all the scheduler sleeps until notified, but looks at least
# this often (s): a notify missed by a bug costs a minute, not a hung workflow.
IDLE_WAKE = 60.0


class Scheduler:
    def __init__(self, lock: threading.Lock, flows: FlowIndex, transitions: Transitions,
                 launcher: TaskLauncher, committer: Committer, *, max_running: int, owner: str):
        """``committer``: only to wait for a task's gate before its process
        starts; ``owner``: the instance id written into every lease."""
        self._lock = lock
        self._wake = threading.Condition(lock)  # the scheduler thread sleeps on it
        self._ended = threading.Condition(lock)  # drain() waits on it for runs to end
        self.flows = flows
        self.transitions = transitions
        self.launcher = launcher
        self.committer = committer
        self.max_running = max_running
        self.owner = owner
        self.running: dict[str, Running] = {}
        self.last_lease = 0  # lease tokens only grow, across restarts too
        self.draining = False  # no task starts any more
        self.stopping = False  # the scheduler thread ends
        self._pid_unsaved: dict[str, tuple[float, int]] = {}  # key -> (deadline, lease token)
        self._threads = TaskThreads()
        self._thread: threading.Thread | None = None

    # -- lifecycle (lock held) -------------------------------------------------------

    def start(self, last_lease: int) -> None:
        self.last_lease = max(self.last_lease, last_lease)
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.notify_all()

    def drain(self, grace: float, kill_grace: float) -> None:
        """Start nothing more; let running tasks finish for up to ``grace``
        seconds, then stop the rest (they go back to queued) and wait for them."""
        deadline = time.monotonic() + max(0.0, grace)
        self.draining = True
        self._wake.notify_all()
        while self.running and time.monotonic() < deadline:
            self._ended.wait(deadline - time.monotonic())
        for handle in self.running.values():
            handle.process.stop(SHUTDOWN)
        kill_deadline = time.monotonic() + kill_grace + 10
        while self.running and time.monotonic() < kill_deadline:
            self._ended.wait(kill_deadline - time.monotonic())

    def stop(self) -> None:
        """The scheduler thread ends at its next wake-up (join() waits for it)."""
        self.stopping = True
        self._wake.notify_all()

    def join(self, timeout: float) -> None:
        """Lock NOT held."""
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    # -- what runs (lock held) -------------------------------------------------------

    def stop_task(self, key: str, reason: str) -> None:
        handle = self.running.get(key)
        if handle is not None:
            handle.process.stop(reason)

    def live_pid(self, task: Record) -> int | None:
        """The pid of a running task's process before its record has it."""
        handle = self.running.get(task["key"]) if task["status"] == TaskStatus.RUNNING else None
        return handle.process.pid if handle is not None else None

    # -- the scheduler thread ----------------------------------------------------------

    def _loop(self) -> None:
        with self._lock:
            while not self.stopping:
                try:
                    timeout = self._tick()
                except Exception:  # keep scheduling; a bug must not stop the daemon
                    log.exception("engine scheduler error")
                    timeout = 1.0
                if not self.stopping:
                    self._wake.wait(timeout)

    def _tick(self) -> float:
        """Release due retries, save due progress, start what can start;
        returns how long to sleep."""
        now = time.monotonic()
        self.flows.release_due(now)
        self.transitions.flush_progress()
        if not self.draining:
            self.start_ready()
        deadlines = [now + IDLE_WAKE, self._flush_pids(), self.flows.next_retry(),
                     self.transitions.progress_deadline()]
        return max(0.01, min(d for d in deadlines if d is not None) - time.monotonic())

    def start_ready(self) -> None:
        """Claim and start ready tasks while fewer than max_running run."""
        while len(self.running) < self.max_running:
            picked = self.flows.pop_ready()
            if picked is None:
                return
            self._claim(*picked)

    def _claim(self, flow: Flow, task: Record) -> None:
        try:
            argv = self.launcher.resolve(task["op"])
        except ValidationError as e:
            self.transitions.unstartable(flow, task, str(e))
            return
        self.last_lease += 1
        gate = self.transitions.claim(flow, task, self.last_lease, self.owner)
        self.running[task["key"]] = self._launch(task, argv, self.last_lease, gate)
        if not self._pid_unsaved:  # the scheduler's timeout must now cover a pid write
            self._wake.notify_all()
        self._pid_unsaved[task["key"]] = (time.monotonic() + PID_WRITE_DELAY, self.last_lease)

    def _launch(self, task: Record, argv: list[str], lease_token: int, gate: Ticket) -> Running:
        """The task's process, started in a task thread."""
        key = task["key"]
        process, task_token = self.launcher.prepare(
            task, argv, lambda p, m: self._on_progress(key, lease_token, p, m))
        handle = Running(process=process, lease_token=lease_token, task_token=task_token,
                         gate=gate)
        self._threads.run(lambda: self._run(key, handle))
        return handle

    def _flush_pids(self) -> float | None:
        """Record the pid of tasks still running PID_WRITE_DELAY after their
        claim; returns the next such deadline. Entries are in deadline order
        (one delay)."""
        now = time.monotonic()
        while self._pid_unsaved:
            key, (deadline, lease_token) = next(iter(self._pid_unsaved.items()))
            if deadline > now:
                return deadline
            del self._pid_unsaved[key]
            found = self.transitions.current(key, lease_token)
            handle = self.running.get(key)
            if found is None or handle is None:
                continue
            process = handle.process
            if process.pid is None:  # not started yet (waiting for its dependencies)
                if not process.finished:
                    self._pid_unsaved[key] = (now + PID_WRITE_DELAY, lease_token)
                continue
            if not process.finished:  # else its completion record is on its way
                self.transitions.record_pid(*found, process.pid)
        return None

    # -- task threads ------------------------------------------------------------------

    def _run(self, key: str, handle: Running) -> None:
        try:
            # A dependent never starts before its dependencies' completions are
            # on disk (after a crash they are not run again behind its back).
            # Its own claim is not waited for: recovery kills any live process
            # of an unfinished task by its marker, recorded claim or not.
            self.committer.wait(handle.gate)
        except Exception as e:
            log.error("task %s: its dependencies' completions could not be recorded, "
                      "not started: %s", key, e)
            # Never started: not a failed attempt. Queued again (reliability suite fix).
            outcome = TaskOutcome(stop_reason=UNRECORDED, finished_at=time.time(),
                                  error=f"could not record its dependencies' completion: {e}")
        else:
            try:
                outcome = handle.process.run()
            except Exception as e:  # an executor bug must still finish the task
                log.exception("task %s: executor error", key)
                outcome = TaskOutcome(error=f"executor error: {e}", finished_at=time.time())
        with self._lock:
            self._ended_run(key, handle.lease_token, outcome)

    def _ended_run(self, key: str, lease_token: int, outcome: TaskOutcome) -> None:
        """A run ended (lock held): apply it, then start what is ready now, in
        this thread."""
        handle = self.running.get(key)
        if handle is not None and handle.lease_token == lease_token:
            del self.running[key]
        self._pid_unsaved.pop(key, None)  # the completion's record carries the pid
        if self.transitions.complete(key, lease_token, outcome) is not None \
                and not self.draining:
            try:
                self.start_ready()
            except Exception:  # as in the scheduler: a bug must not lose this completion
                log.exception("engine error while starting ready tasks")
        if self.flows.next_retry() is not None:
            self._wake.notify_all()  # the scheduler owns the retry deadlines
        self._ended.notify_all()  # drain() waits for running to empty

    def _on_progress(self, key: str, lease_token: int, progress: int,
                     message: str | None) -> None:
        with self._lock:
            self.transitions.progress_of_run(key, lease_token, progress, message)
