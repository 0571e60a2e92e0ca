"""Engine: the workflow state machine and scheduler over a Store.

The engine is three mixins over one lock: scheduling.py (the scheduler
thread, claims, spawns), transitions.py (what a task's end changes) and
flows.py (the in-memory index); this file holds the public API.

Threads: one scheduler thread and one thread per running task (executor;
reused for the next task, workers.py). All state lives behind one lock; the
scheduler sleeps on a Condition and wakes for submissions, task exits,
cancels and retries, or at a deadline (retry backoff, progress checkpoint,
pid records).

Every transition is handed to the group committer (commit.py) under the
lock and written outside it; what must be durable before something happens
waits for its batch: a submission before its 202, a task's dependencies'
completions before its process starts, a workflow's writes before a reader
is shown them. A task's completion is applied only if its lease token is
still the current one (fencing). See recovery.py for what happens after a
crash, and docs/performance-notes.md for which write is fsynced when.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from provisioning import model
from provisioning.config import Config
from provisioning.engine import views
from provisioning.engine.commit import RecordWriter
from provisioning.engine.executor import clean_env
from provisioning.engine.flows import FlowIndex, _Flow, _Running
from provisioning.engine.scheduling import Scheduling
from provisioning.engine.transitions import TaskTransitions
from provisioning.engine.workers import TaskThreads
from provisioning.engine.zygote import Zygote
from provisioning.engine.zygote import supported as zygote_supported
from provisioning.errors import (
    Conflict,
    NotFound,
    ServiceUnavailable,
    UsageError,
    ValidationError,
)
from provisioning.model import WorkflowSpec, WorkflowStatus
from provisioning.ops.registry import OpRegistry
from provisioning.store.base import Store

log = logging.getLogger("provisioning.engine")

MAX_EVENTS_PER_CALL = 1000


class Engine(Scheduling, FlowIndex, TaskTransitions):
    def __init__(self, store: Store, config: Config, *, registry: OpRegistry | None = None,
                 instance_id: str = "direct", endpoint: str | None = None,
                 python_zygote: bool = False):
        self.store = store
        self._writer = RecordWriter(store)  # group commit of record writes (commit.py)
        self.config = config
        self.registry = registry or OpRegistry.from_config(config)
        self.instance_id = instance_id
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # scheduler
        self._changed = threading.Condition(self._lock)  # shutdown: a task ended
        self._threads = TaskThreads()
        self._flows: dict[str, _Flow] = {}
        # Flows that may have a ready task: the scheduler looks only at these, never
        # at every workflow the daemon knows (thousands of finished ones are common).
        self._schedulable: dict[str, _Flow] = {}
        self._running: dict[str, _Running] = {}
        self._backoff: list[tuple[float, str]] = []  # (monotonic deadline, key)
        self._progress_saved: dict[str, float] = {}  # key -> monotonic time of last save
        self._progress_dirty: set[str] = set()
        self._pid_unsaved: dict[str, tuple[float, int]] = {}  # key -> (deadline, lease token)
        self._seq = 0
        self._lease_seq = 0
        self._accepting = True
        self._draining = False
        self._stopping = False
        self._started = False
        self._thread: threading.Thread | None = None
        self._base_env: dict[str, str] | None = None  # clean_env({}), once per start
        self._want_zygote = python_zygote  # the daemon's; direct mode: README "Decisions"
        self.zygote: Zygote | None = None  # forks Python ops (zygote.py), once started

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Recover from the store, then start the scheduler thread."""
        from provisioning.engine.recovery import recover_running_tasks

        with self._lock:
            if self._started:
                return
            self._base_env = clean_env({})
            workflows, tasks = self.store.load()
            by_id = {w["id"]: w for w in workflows if model.valid_workflow_id(w.get("id"))}
            for t in tasks:  # before recovery clears leases: tokens must only grow
                self._seq = max(self._seq, _int(t.get("seq")))
                self._lease_seq = max(self._lease_seq, _int((t.get("lease") or {}).get("token")),
                                      _int(t.get("last_lease_token")))
            recover_running_tasks(self.store, by_id, tasks,
                                  kill_grace=self.config.executor.kill_grace_seconds)
            grouped: dict[str, list[dict[str, Any]]] = {}
            for t in tasks:
                grouped.setdefault(t.get("workflow_id"), []).append(t)
            for w in sorted(by_id.values(), key=lambda w: w.get("seq") or 0):
                self._seq = max(self._seq, _int(w.get("seq")))
                self._restore_flow(w, grouped.get(w["id"], []))
            self._writer.flush()  # what recovery rewrote is durable before we go on
            self._start_zygote()
            self._started = True
            self._thread = threading.Thread(target=self._scheduler, name="engine-scheduler",
                                            daemon=True)
            self._thread.start()

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def shutdown(self, grace: float) -> None:
        """Stop starting tasks, let running ones finish for up to `grace` seconds,
        stop the rest (they go back to queued), persist, stop the scheduler."""
        deadline = time.monotonic() + max(0.0, grace)
        with self._lock:
            self._accepting = False
            self._draining = True
            self._wake.notify_all()
            while self._running and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            for handle in self._running.values():
                handle.process.stop("shutdown")
            kill_deadline = time.monotonic() + self.config.executor.kill_grace_seconds + 10
            while self._running and time.monotonic() < kill_deadline:
                self._changed.wait(kill_deadline - time.monotonic())
            self._flush_progress(force=True)
            self._stopping = True
            self._wake.notify_all()
            for flow in self._flows.values():
                for waiters in (flow.event_waiters, flow.end_waiters):
                    if waiters is not None:
                        waiters.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.zygote is not None:  # after the tasks: it reports their exits
            self.zygote.close()
        self._writer.close()  # write what is pending; later writes are synchronous
        self.store.close()  # its helper process, open files (later writes still work)

    def _start_zygote(self) -> None:
        if self._want_zygote and self.config.executor.python_zygote and zygote_supported():
            env = {**self._base_env,
                   "PROVISIONING_STORAGE_DATA_DIR": str(self.config.storage.data_dir)}
            self.zygote = Zygote.from_config(self.config, env=env)
            self.zygote.start()

    # -- public API --------------------------------------------------------

    def submit(self, spec: WorkflowSpec) -> dict[str, Any]:
        """Accept a validated workflow; returns its view (status "queued")."""
        for op in {t.op for t in spec.tasks}:
            try:
                self.registry.resolve(op)
            except ValidationError as e:
                raise ValidationError(f"workflow '{spec.name}': {e.message}", hint=e.hint) from None
        with self._lock:
            if not self._accepting:
                raise ServiceUnavailable("the orchestrator is shutting down and takes no new "
                                         "workflows", hint="retry once it has restarted")
            wrec, task_recs = self._new_records(str(uuid.uuid4()), spec, time.time())
        # Group commit: submissions arriving together are written by one batch,
        # outside the engine lock; this returns once OUR submission is durable.
        # Until then nobody else knows the workflow (not listed, not scheduled).
        self._writer.add_workflow(wrec, task_recs)
        with self._lock:
            flow = self._publish_flow(wrec, task_recs)
            self._wake.notify_all()
            return self._view(flow)

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        with self._lock:
            flow = self._flow(workflow_id)
            view, written = self._view(flow), flow.written
        self._durable(written)
        return view

    def list_workflows(self, status: str | None = None) -> list[dict[str, Any]]:
        if status is not None and status not in {s.value for s in WorkflowStatus}:
            raise UsageError(f"unknown workflow status '{status}'",
                             hint="one of: " + ", ".join(s.value for s in WorkflowStatus))
        with self._lock:
            flows = [f for f in self._flows.values() if status in (None, f.rec["status"])]
            flows.sort(key=lambda f: (f.rec.get("created_at") or 0, f.rec.get("seq") or 0),
                       reverse=True)
            views = [self._view(f, with_tasks=False) for f in flows]
            pending = [f.written for f in flows if not f.written.done]
        for written in pending:
            self._durable(written)
        return views

    def get_task(self, key: str) -> dict[str, Any]:
        with self._lock:
            flow, task = self._task(key)
            view, written = views.task_view(task, self._live_pid(task)), flow.written
        self._durable(written)
        return view

    def task_log_path(self, key: str) -> Path:
        with self._lock:
            _, task = self._task(key)
            return self.store.task_log_path(task["workflow_id"], task["id"])

    def cancel(self, workflow_id: str) -> dict[str, Any]:
        """Kill running task trees, mark pending tasks cancelled."""
        with self._lock:
            flow = self._flow(workflow_id)
            if flow.finished:
                raise Conflict(f"workflow {workflow_id} already finished "
                               f"({flow.rec['status']}); nothing to cancel")
            if not flow.rec.get("cancel_requested"):
                flow.rec["cancel_requested"] = True
                # Durable before any task is marked cancelled (rare: wait with the lock).
                self._writer.wait(self._save_workflow(flow.rec))
                self._event(flow, "workflow", None, flow.rec["status"],
                            message="cancel requested")
            now = time.time()
            for task in flow.tasks.values():
                if task["status"] == "queued":
                    self._finish_task(flow, task, "cancelled", now, error="cancelled")
                elif task["status"] == "running":
                    handle = self._running.get(task["key"])
                    if handle is not None:
                        handle.process.stop("cancelled")
            self._maybe_finish(flow)
            self._wake.notify_all()
            view, written = self._view(flow), flow.written
        self._writer.wait(written)  # the cancel is acknowledged once it is durable
        return view

    def retry(self, workflow_id: str) -> dict[str, Any]:
        """Re-queue failed, cancelled and skipped tasks; succeeded ones never run again."""
        with self._lock:
            flow = self._flow(workflow_id)
            if not flow.finished:
                raise Conflict(f"workflow {workflow_id} is still {flow.rec['status']}",
                               hint="wait for it to finish, or cancel it, then retry")
            again = [t for t in flow.tasks.values()
                     if t["status"] in ("failed", "cancelled", "skipped")]
            if not again:
                raise Conflict(f"workflow {workflow_id} has nothing to retry: every task "
                               "succeeded")
            now = time.time()
            for task in again:
                model.reset_for_rerun(task, now)
                self._save_task(task)
                self._event(flow, "task", task["id"], "queued", message="retry requested")
            flow.rec.update(status="queued", finished_at=None, cancel_requested=False)
            self._save_workflow(flow.rec)
            self._event(flow, "workflow", None, "queued", message="retry requested")
            self._index(flow)
            self._wake.notify_all()
            view, written = self._view(flow), flow.written
        self._writer.wait(written)
        return view

    def report_progress(self, key: str, progress: int, status: str | None = None,
                        message: str | None = None) -> dict[str, Any]:
        """Progress POSTed by a running task (the API checks its token first)."""
        if not isinstance(progress, int) or isinstance(progress, bool) or not (
                0 <= progress <= 100):
            raise UsageError("progress must be an integer from 0 to 100")
        for name, value in (("status", status), ("message", message)):
            if value is not None and (not isinstance(value, str) or len(value) > 1000):
                raise UsageError(f"{name} must be a string of at most 1000 characters")
        with self._lock:
            flow, task = self._task(key)
            if task["status"] != "running":
                raise Conflict(f"task {key} is {task['status']}, not running")
            self._set_progress(flow, task, progress, message or status)
            return views.task_view(task, self._live_pid(task))

    def check_task_token(self, key: str, token: str) -> bool:
        """True only for the token handed to the current run of this very task."""
        if not isinstance(token, str) or not model.valid_task_key(key):
            return False
        with self._lock:
            handle = self._running.get(key)
            return handle is not None and hmac.compare_digest(handle.task_token, token)

    def events(self, workflow_id: str, after: int = 0, timeout: float = 0) -> list[dict[str, Any]]:
        """Events with seq > after; blocks up to `timeout` s until there are some."""
        after = max(0, int(after))
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            flow = self._flow(workflow_id)
            while len(flow.events) <= after and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (flow.finished and after >= len(flow.events)):
                    break
                if flow.event_waiters is None:
                    flow.event_waiters = threading.Condition(self._lock)
                flow.event_waiters.wait(remaining)
            events = [dict(e) for e in flow.events[after:after + MAX_EVENTS_PER_CALL]]
            written = flow.written
        self._durable(written)
        return events

    def wait(self, workflow_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the workflow finishes (or `timeout`); returns its view."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            flow = self._flow(workflow_id)
            while not flow.finished and not self._stopping:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                if flow.end_waiters is None:
                    flow.end_waiters = threading.Condition(self._lock)
                flow.end_waiters.wait(remaining)
            view, written = self._view(flow), flow.written
        self._durable(written)
        return view

    def stats(self) -> dict[str, Any]:
        quarantined = self.store.quarantined_count()  # file I/O: outside the lock
        with self._lock:
            workflows = dict.fromkeys((s.value for s in WorkflowStatus), 0)
            queued = 0
            for f in self._flows.values():
                workflows[f.rec["status"]] += 1
                if not f.finished:
                    queued += sum(1 for t in f.tasks.values() if t["status"] == "queued")
            return {"workflows": workflows, "tasks_queued": queued,
                    "tasks_running": len(self._running),
                    "max_concurrent_tasks": self.config.executor.max_concurrent_tasks,
                    "accepting": self._accepting,
                    "quarantined_files": quarantined}

    # -- lookups (lock held) -----------------------------------------------

    def _flow(self, workflow_id: str) -> _Flow:
        if not model.valid_workflow_id(workflow_id):
            raise NotFound(f"no workflow '{workflow_id}' (ids look like "
                           "3f2b8c1e-0d4a-4e1b-9c7d-2a6f5e4d3c2b)")
        flow = self._flows.get(workflow_id)
        if flow is None:
            raise NotFound(f"no workflow {workflow_id}",
                           hint="`provisioning workflow list` shows the known ones")
        return flow

    def _task(self, key: str) -> tuple[_Flow, dict[str, Any]]:
        if not model.valid_task_key(key):
            raise NotFound(f"no task '{key}' (task ids look like <workflow id>.<task id>)")
        workflow_id, _, task_id = key.partition(".")
        flow = self._flow(workflow_id)
        task = flow.tasks.get(task_id)
        if task is None:
            raise NotFound(f"workflow {workflow_id} has no task '{task_id}'")
        return flow, task

    def _view(self, flow: _Flow, with_tasks: bool = True) -> dict[str, Any]:
        pids = {t["id"]: self._live_pid(t) for t in flow.tasks.values()
                if t["status"] == "running"} if with_tasks else None
        return views.workflow_view(flow.rec, list(flow.tasks.values()), with_tasks=with_tasks,
                               live_pids=pids)

    def _live_pid(self, task: dict[str, Any]) -> int | None:
        """The pid of a running task's process before its record has it (_flush_pids)."""
        handle = self._running.get(task["key"]) if task["status"] == "running" else None
        return handle.process.pid if handle is not None else None

    def _durable(self, written) -> None:
        """Read barrier (lock NOT held): what a reader is about to be shown of a
        workflow is on disk first. Returns at once unless that workflow has a
        write in the batch being written now (a few ms); a failed batch does
        not block readers (it is written again and logged)."""
        if not written.done:
            self._writer.wait(written, raise_errors=False)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
