"""Engine: the public face of the workflow engine, over a Store.

The daemon and direct mode call only this class (docs/INTERNALS.md lists its
API). It owns the one lock and builds the parts, each of which owns its own
state and can be built and tested alone:

- FlowIndex (flows.py): the workflows in memory, which tasks are ready;
- Transitions (transitions.py): every state change and what follows from it;
- Scheduler (scheduler.py): the scheduler thread, claims, processes, drain;
- Committer (commit.py): group commit of record writes, outside the lock;
  Journal (journal.py) is how the other parts hand it their writes and events;
- TaskLauncher (launch.py): a task record to a process, by the task protocol
  (Python ops forked from the daemon's zygote, zygote.py, when it has one).

What must be durable before something happens waits for its batch: a
submission before its 202, a task's dependencies' completions before its
process starts, a workflow's writes before a reader is shown them. See
recovery.py for what happens after a crash, and docs/performance-notes.md
for which write is fsynced when.
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
from provisioning.engine.commit import Committer
from provisioning.engine.flows import Flow, FlowIndex
from provisioning.engine.journal import Journal
from provisioning.engine.launch import TaskLauncher
from provisioning.engine.recovery import recover_running_tasks
from provisioning.engine.scheduler import Scheduler
from provisioning.engine.transitions import CANCELLED, Transitions
from provisioning.engine.zygote import supported as zygote_supported
from provisioning.engine.zygotes import Zygotes
from provisioning.errors import Conflict, NotFound, ServiceUnavailable, UsageError, ValidationError
from provisioning.model import NOT_SUCCEEDED, Record, TaskStatus, WorkflowSpec, WorkflowStatus
from provisioning.model.storage import Store
from provisioning.ops.registry import OpRegistry

log = logging.getLogger("provisioning.engine")

MAX_EVENTS_PER_CALL = 1000


class Engine:
    scheduler_class = Scheduler  # benchmarks swap in one that runs no processes

    def __init__(self, store: Store, config: Config, *, registry: OpRegistry | None = None,
                 instance_id: str = "direct", endpoint: str | None = None,
                 python_zygote: bool = False):
        self.store = store
        self.config = config
        self.registry = registry or OpRegistry.from_config(config)
        self.instance_id = instance_id
        self.endpoint = endpoint
        executor = config.executor
        self._lock = threading.Lock()
        self._writer = Committer(store)
        self.journal = Journal(self._writer)
        self.flows = FlowIndex(default_limit=executor.max_concurrent_tasks)
        self.transitions = Transitions(self.flows, self.journal,
                                       checkpoint_interval=executor.checkpoint_interval_seconds,
                                       wake_scheduler=lambda: self.scheduler.wake())
        self.launcher = TaskLauncher(self.registry, store, data_dir=config.storage.data_dir,
                                     endpoint=endpoint,
                                     task_timeout_s=executor.task_timeout_seconds,
                                     kill_grace_s=executor.kill_grace_seconds)
        self.scheduler = self.scheduler_class(
            self._lock, self.flows, self.transitions, self.launcher, self._writer,
            max_running=executor.max_concurrent_tasks, owner=instance_id)
        self._last_seq = 0  # submission numbering (model.new_submission)
        self._accepting = True
        self._started = False
        self._want_zygote = python_zygote  # the daemon's; direct mode: README "Decisions"
        self.zygotes = Zygotes()  # fork Python ops (zygotes.py), once started

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Recover from the store, then start the scheduler thread."""
        with self._lock:
            if self._started:
                return
            self.launcher.capture_env()
            last_lease = self._take_in(*self.store.load())
            self._start_zygote()
            self._started = True
            self.scheduler.start(last_lease)

    def adopt(self, workflows: list[Record], tasks: list[Record], *,
              refresh: bool = False) -> None:
        """Take in workflows another daemon left (several daemons on one
        database, README "Running several orchestrators"): recovered as at a
        start after a crash (in-flight tasks run again, finished ones never),
        then scheduled. Ignored once shutting down, and for workflows known
        (but a finished one with ``refresh``: a peer may have retried it)."""
        with self._lock:
            if not self._accepting or not self._started:
                return
            fresh = {w.get("id") for w in workflows} - {f.id for f in self.flows
                                                        if not (refresh and f.finished)}
            last_lease = self._take_in([w for w in workflows if w.get("id") in fresh],
                                       [t for t in tasks if t.get("workflow_id") in fresh])
            self.scheduler.last_lease = max(self.scheduler.last_lease, last_lease)
            self.scheduler.wake()

    def forget(self, workflow_id: str) -> None:
        """Drop a finished workflow another daemon reopened (read from the store now)."""
        with self._lock:
            self.flows.drop_finished(workflow_id)

    def _take_in(self, workflows: list[Record], tasks: list[Record]) -> int:
        """Recover and index records read from the store (lock held); the
        highest lease token among them (tokens must only grow)."""
        by_id = {w["id"]: w for w in workflows if model.valid_workflow_id(w.get("id"))}
        last_lease = 0
        for t in tasks:  # before recovery clears leases: tokens must only grow
            self._last_seq = max(self._last_seq, _int(t.get("seq")))
            last_lease = max(last_lease, _int((t.get("lease") or {}).get("token")),
                             _int(t.get("last_lease_token")))
        recover_running_tasks(self.store, by_id, tasks,
                              kill_grace=self.config.executor.kill_grace_seconds)
        grouped: dict[str, list[Record]] = {}
        for t in tasks:
            grouped.setdefault(t.get("workflow_id"), []).append(t)
        for w in sorted(by_id.values(), key=lambda w: w.get("seq") or 0):
            self._last_seq = max(self._last_seq, _int(w.get("seq")))
            self._restore(w, grouped.get(w["id"], []))
        self._writer.flush()  # what recovery rewrote is durable before we go on
        return last_lease

    def _start_zygote(self) -> None:
        if self._want_zygote and self.config.executor.python_zygote and zygote_supported():
            env = {**self.launcher.base_env(),
                   "PROVISIONING_STORAGE_DATA_DIR": str(self.config.storage.data_dir)}
            self.zygotes.start(self.config, env=env)
            self.launcher.zygotes = self.zygotes

    def _restore(self, wrec: Record, task_recs: list[Record]) -> None:
        """Index a workflow read back from the store (lock held)."""
        by_id = {t["id"]: t for t in task_recs}
        flow = self.flows.add(wrec, [by_id[tid] for tid in wrec.get("task_ids", [])
                                     if tid in by_id])
        flow.events = self.store.load_events(wrec["id"])
        for i, e in enumerate(flow.events, 1):
            e["seq"] = i
        if not flow.finished:
            self.transitions.skip_blocked(flow)
            self.transitions.maybe_finish(flow)

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def shutdown(self, grace: float) -> None:
        """Stop starting tasks, let running ones finish for up to `grace` seconds,
        stop the rest (they go back to queued), persist, stop the scheduler."""
        with self._lock:
            self._accepting = False
            self.scheduler.drain(grace, self.config.executor.kill_grace_seconds)
            self.transitions.flush_progress(force=True)
            self.scheduler.stop()
            for flow in self.flows:
                flow.wake_readers()
        self.scheduler.join(timeout=10)
        self.zygotes.close()  # after the tasks: they report their exits
        self._writer.close()  # write what is pending; later writes are synchronous
        self.store.close()  # its helper process, open files (later writes still work)

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
            wrec, task_recs = model.new_submission(str(uuid.uuid4()), spec,
                                                   last_seq=self._last_seq, now=time.time())
            self._last_seq = wrec["seq"]
        # Group commit: submissions arriving together are written by one batch,
        # outside the engine lock; this returns once OUR submission is durable.
        # Until then nobody else knows the workflow (not listed, not scheduled).
        self.journal.add_workflow(wrec, task_recs)
        with self._lock:
            flow = self.flows.add(wrec, task_recs)
            self.journal.event(flow, "workflow", None, WorkflowStatus.QUEUED,
                               message=f"{len(task_recs)} tasks")
            self.scheduler.wake()
            return self._view(flow)

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        with self._lock:
            flow = self.flows.get(workflow_id)
            if flow is not None:
                view, written = self._view(flow), flow.written
        if flow is None:  # another daemon's (storage.postgres_shared): as stored now
            found = (self.store.read_workflow(workflow_id)
                     if model.valid_workflow_id(workflow_id) else None)
            if found is not None:
                return views.workflow_view(*found)
            with self._lock:  # NotFound, or adopted meanwhile
                flow = self._flow(workflow_id)
                view, written = self._view(flow), flow.written
        self.journal.settle(written)
        return view

    def list_workflows(self, status: str | None = None) -> list[dict[str, Any]]:
        if status is not None and status not in model.WORKFLOW_STATUSES:
            raise UsageError(f"unknown workflow status '{status}'",
                             hint="one of: " + ", ".join(model.WORKFLOW_STATUSES))
        with self._lock:
            flows = [f for f in self.flows if status in (None, f.rec["status"])]
            flows.sort(key=lambda f: (f.rec.get("created_at") or 0, f.rec.get("seq") or 0),
                       reverse=True)
            shown = [self._view(f, with_tasks=False) for f in flows]
            pending = [f.written for f in flows if not f.written.done]
        for written in pending:
            self.journal.settle(written)
        return shown

    def get_task(self, key: str) -> dict[str, Any]:
        with self._lock:
            flow, task = self._task(key)
            view, written = views.task_view(task, self.scheduler.live_pid(task)), flow.written
        self.journal.settle(written)
        return view

    def task_log_path(self, key: str) -> Path:
        with self._lock:
            _, task = self._task(key)
            return self.store.task_log_path(task["workflow_id"], task["id"])

    def stored_task_log(self, key: str) -> bytes | None:
        """The backend's copy of a finished task's log when its local file is
        missing (Store.stored_task_log); None otherwise. Store I/O: no lock held."""
        with self._lock:
            _, task = self._task(key)
            if task["status"] not in model.FINISHED_TASK:
                return None
        workflow_id, task_id = model.split_task_key(key)
        return self.store.stored_task_log(workflow_id, task_id)

    def cancel(self, workflow_id: str) -> dict[str, Any]:
        """Kill running task trees, mark pending tasks cancelled."""
        with self._lock:
            flow = self._flow(workflow_id)
            if flow.finished:
                raise Conflict(f"workflow {workflow_id} already finished "
                               f"({flow.rec['status']}); nothing to cancel")
            self.transitions.request_cancel(flow)
            for key in self.transitions.cancel_queued(flow):
                self.scheduler.stop_task(key, CANCELLED)
            self.transitions.maybe_finish(flow)
            self.scheduler.wake()
            view, written = self._view(flow), flow.written
        self.journal.wait(written)  # the cancel is acknowledged once it is durable
        return view

    def retry(self, workflow_id: str) -> dict[str, Any]:
        """Re-queue failed, cancelled and skipped tasks; succeeded ones never run again."""
        with self._lock:
            flow = self._flow(workflow_id)
            if not flow.finished:
                raise Conflict(f"workflow {workflow_id} is still {flow.rec['status']}",
                               hint="wait for it to finish, or cancel it, then retry")
            again = [t for t in flow.tasks.values() if t["status"] in NOT_SUCCEEDED]
            if not again:
                raise Conflict(f"workflow {workflow_id} has nothing to retry: every task "
                               "succeeded")
            self.transitions.rerun(flow, again)
            self.scheduler.wake()
            view, written = self._view(flow), flow.written
        self.journal.wait(written)
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
            if task["status"] != TaskStatus.RUNNING:
                raise Conflict(f"task {key} is {task['status']}, not running")
            handle = self.scheduler.running.get(key)
            if handle is not None:  # the same secrets as its output (ops/redact.py)
                message = handle.process.redact(message) if message else message
                status = handle.process.redact(status) if status else status
            self.transitions.set_progress(flow, task, progress, message or status)
            return views.task_view(task, self.scheduler.live_pid(task))

    def check_task_token(self, key: str, token: str) -> bool:
        """True only for the token handed to the current run of this very task."""
        if not isinstance(token, str) or not model.valid_task_key(key):
            return False
        with self._lock:
            handle = self.scheduler.running.get(key)
            return handle is not None and hmac.compare_digest(handle.task_token, token)

    def events(self, workflow_id: str, after: int = 0, timeout: float = 0) -> list[dict[str, Any]]:
        """Events with seq > after; blocks up to `timeout` s until there are some."""
        after = max(0, int(after))
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            flow = self._flow(workflow_id)
            while len(flow.events) <= after and not self.scheduler.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (flow.finished and after >= len(flow.events)):
                    break
                if flow.event_waiters is None:
                    flow.event_waiters = threading.Condition(self._lock)
                flow.event_waiters.wait(remaining)
            events = [dict(e) for e in flow.events[after:after + MAX_EVENTS_PER_CALL]]
            written = flow.written
        self.journal.settle(written)
        return events

    def wait(self, workflow_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the workflow finishes (or `timeout`); returns its view."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            flow = self._flow(workflow_id)
            while not flow.finished and not self.scheduler.stopping:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                if flow.end_waiters is None:
                    flow.end_waiters = threading.Condition(self._lock)
                flow.end_waiters.wait(remaining)
            view, written = self._view(flow), flow.written
        self.journal.settle(written)
        return view

    def stats(self) -> dict[str, Any]:
        quarantined = self.store.quarantined_count()  # may be I/O: outside the lock
        with self._lock:
            workflows = dict.fromkeys((s.value for s in WorkflowStatus), 0)
            queued = 0
            for f in self.flows:
                workflows[f.rec["status"]] += 1
                if not f.finished:
                    queued += sum(1 for t in f.tasks.values() if t["status"] == TaskStatus.QUEUED)
            return {"workflows": workflows, "tasks_queued": queued,
                    "tasks_running": len(self.scheduler.running),
                    "max_concurrent_tasks": self.config.executor.max_concurrent_tasks,
                    "accepting": self._accepting,
                    "quarantined_files": quarantined}

    # -- lookups (lock held) -----------------------------------------------

    def _flow(self, workflow_id: str) -> Flow:
        if not model.valid_workflow_id(workflow_id):
            raise NotFound(f"no workflow '{workflow_id}' (ids look like "
                           f"{model.WORKFLOW_ID_EXAMPLE})")
        flow = self.flows.get(workflow_id)
        if flow is None:
            raise NotFound(f"no workflow {workflow_id}",
                           hint="`provisioning workflow list` shows the known ones")
        return flow

    def _task(self, key: str) -> tuple[Flow, Record]:
        if not model.valid_task_key(key):
            raise NotFound(f"no task '{key}' (task ids look like <workflow id>.<task id>)")
        workflow_id, task_id = model.split_task_key(key)
        flow = self._flow(workflow_id)
        task = flow.tasks.get(task_id)
        if task is None:
            raise NotFound(f"workflow {workflow_id} has no task '{task_id}'")
        return flow, task

    def _view(self, flow: Flow, with_tasks: bool = True) -> dict[str, Any]:
        pids = {t["id"]: self.scheduler.live_pid(t) for t in flow.tasks.values()
                if t["status"] == TaskStatus.RUNNING} if with_tasks else None
        return views.workflow_view(flow.rec, list(flow.tasks.values()), with_tasks=with_tasks,
                                   live_pids=pids)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
