"""The flow index: which workflows the engine knows, and which tasks are ready.

One Flow per workflow: its records (the very dicts the engine changes and
hands to the committer), who depends on whom, how many dependencies of each
task have not succeeded yet, and a heap of ready tasks ordered by
(priority, submission seq). The FlowIndex holds every Flow, the few that may
have a ready task (the scheduler looks only at those, never at the
thousands of finished workflows a daemon keeps), and the retry timers of
tasks backing off. It decides nothing about states: transitions.py does.

Not thread-safe: the engine calls it with its lock held.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from provisioning.engine.commit import DONE, Ticket
from provisioning.engine.executor import TaskProcess
from provisioning.model import FINISHED_TASK, FINISHED_WORKFLOW, Record, TaskStatus, priority_rank


@dataclass
class Flow:
    """One workflow in memory."""

    rec: Record
    tasks: dict[str, Record]  # task id -> record, in spec order
    dependents: dict[str, list[str]]
    waiting: dict[str, int] = field(default_factory=dict)  # deps not yet succeeded
    ready: list[tuple[int, int, str]] = field(default_factory=list)  # (-prio, seq, id)
    running: int = 0
    unfinished: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    limit: int = 1
    written: Ticket = DONE  # batch of this workflow's latest record write (read barrier)
    # Made when someone first waits: long-polls for events, wait() for the end.
    event_waiters: threading.Condition | None = None
    end_waiters: threading.Condition | None = None

    @property
    def id(self) -> str:
        return self.rec["id"]

    @property
    def finished(self) -> bool:
        return self.rec["status"] in FINISHED_WORKFLOW

    def wake_readers(self) -> None:
        """Everyone waiting for this workflow's events or end looks again."""
        for waiters in (self.event_waiters, self.end_waiters):
            if waiters is not None:
                waiters.notify_all()


@dataclass
class Running:
    """A claimed task whose process the scheduler started (or is about to)."""

    process: TaskProcess
    lease_token: int
    task_token: str
    # The batch its process waits for before it starts: the one holding its
    # dependencies' completions (DONE for a task without dependencies).
    gate: Ticket = DONE


class FlowIndex:
    def __init__(self, default_limit: int):
        """``default_limit``: a workflow's parallel tasks when its spec sets none."""
        self.default_limit = default_limit
        self._flows: dict[str, Flow] = {}
        # Flows that may have a ready task (a stale entry is dropped when looked at).
        self._schedulable: dict[str, Flow] = {}
        self._retries: list[tuple[float, str]] = []  # (monotonic deadline, task key)

    # -- lookups -------------------------------------------------------------------

    def __iter__(self) -> Iterator[Flow]:
        return iter(self._flows.values())

    def __len__(self) -> int:
        return len(self._flows)

    def get(self, workflow_id: str) -> Flow | None:
        return self._flows.get(workflow_id)

    def lookup(self, key: str) -> tuple[Flow, Record] | None:
        """The flow and record of task ``key`` ("<workflow id>.<task id>")."""
        workflow_id, _, task_id = key.partition(".")
        flow = self._flows.get(workflow_id)
        task = flow.tasks.get(task_id) if flow else None
        return (flow, task) if task else None

    # -- building --------------------------------------------------------------------

    def add(self, wrec: Record, task_recs: list[Record]) -> Flow:
        """Index a workflow and its tasks (records in task_ids order)."""
        tasks = {t["id"]: t for t in task_recs}
        dependents: dict[str, list[str]] = {tid: [] for tid in tasks}
        for t in task_recs:
            for dep in t.get("depends_on", []):
                if dep in dependents:
                    dependents[dep].append(t["id"])
        flow = Flow(rec=wrec, tasks=tasks, dependents=dependents)
        flow.limit = wrec.get("max_parallel") or self.default_limit
        self._flows[wrec["id"]] = flow
        self.reindex(flow)
        return flow

    def drop_finished(self, workflow_id: str) -> None:
        """Forget a finished workflow (another daemon reopened it); not an unfinished one."""
        flow = self._flows.get(workflow_id)
        if flow is not None and flow.finished:
            del self._flows[workflow_id]
            self._schedulable.pop(workflow_id, None)

    def reindex(self, flow: Flow) -> None:
        """Recompute dependency counts, the ready heap and retry timers from the records."""
        flow.ready = []
        flow.unfinished = 0
        now_wall, now_mono = time.time(), time.monotonic()
        for tid, t in flow.tasks.items():
            if t["status"] not in FINISHED_TASK:
                flow.unfinished += 1
            flow.waiting[tid] = sum(1 for d in t.get("depends_on", [])
                                    if flow.tasks.get(d, {}).get("status") != TaskStatus.SUCCEEDED)
            if t["status"] == TaskStatus.QUEUED and flow.waiting[tid] == 0:
                if t.get("retry_at") and t["retry_at"] > now_wall:
                    self.retry_at(t["key"], now_mono + t["retry_at"] - now_wall)
                else:
                    self.push_ready(flow, t)

    # -- readiness -------------------------------------------------------------------

    def push_ready(self, flow: Flow, task: Record) -> None:
        heapq.heappush(flow.ready, (-priority_rank(task.get("priority")), task.get("seq") or 0,
                                    task["id"]))
        self._schedulable[flow.rec["id"]] = flow  # (hot path: no property call)

    def succeeded(self, flow: Flow, task: Record) -> None:
        """``task`` succeeded: dependents with nothing left to wait for are ready."""
        for child in flow.dependents.get(task["id"], []):
            flow.waiting[child] -= 1
            ct = flow.tasks[child]
            if flow.waiting[child] == 0 and ct["status"] == TaskStatus.QUEUED:
                self.push_ready(flow, ct)

    def pop_ready(self) -> tuple[Flow, Record] | None:
        """The next task to start: highest priority, then oldest submission,
        over every workflow still under its parallel limit and not being
        cancelled; taken off its heap. None if nothing can start."""
        best: tuple[tuple[int, int, str], Flow] | None = None
        for workflow_id, flow in list(self._schedulable.items()):
            while flow.ready:  # drop stale entries (cancelled, already started)
                tid = flow.ready[0][2]
                t = flow.tasks[tid]
                if t["status"] == TaskStatus.QUEUED and not t.get("retry_at") and \
                        flow.waiting.get(tid, 0) == 0:
                    break
                heapq.heappop(flow.ready)
            if flow.finished or not flow.ready:
                del self._schedulable[workflow_id]  # push_ready adds it back
                continue
            if flow.running >= flow.limit or flow.rec.get("cancel_requested"):
                continue
            if best is None or flow.ready[0] < best[0]:
                best = (flow.ready[0], flow)
        if best is None:
            return None
        heapq.heappop(best[1].ready)
        return best[1], best[1].tasks[best[0][2]]

    # -- retry timers ----------------------------------------------------------------

    def retry_at(self, key: str, deadline: float) -> None:
        """Task ``key`` (queued, backing off) becomes ready at monotonic ``deadline``."""
        heapq.heappush(self._retries, (deadline, key))

    def release_due(self, now: float) -> None:
        """Tasks whose retry time has come are ready again."""
        while self._retries and self._retries[0][0] <= now:
            _, key = heapq.heappop(self._retries)
            found = self.lookup(key)
            if found and found[1]["status"] == TaskStatus.QUEUED:
                flow, task = found
                task["retry_at"] = None
                if flow.waiting.get(task["id"], 0) == 0:
                    self.push_ready(flow, task)

    def next_retry(self) -> float | None:
        """The monotonic time of the next retry timer, if any."""
        return self._retries[0][0] if self._retries else None
