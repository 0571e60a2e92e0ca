"""In-memory index of workflows: dependency counts, ready heaps, restore from records.

The engine keeps one _Flow per workflow: its records (the same dicts it
persists), who depends on whom, how many dependencies of each task have not
succeeded yet, and a heap of ready tasks ordered by (priority, submission seq).
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from provisioning import model
from provisioning.engine.commit import DONE, Ticket
from provisioning.model import PRIORITIES, WorkflowSpec

if TYPE_CHECKING:
    from provisioning.engine.executor import TaskProcess


@dataclass
class _Flow:
    """In-memory index of one workflow."""

    rec: dict[str, Any]
    tasks: dict[str, dict[str, Any]]  # task id -> record, in spec order
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
    def finished(self) -> bool:
        return self.rec["status"] in ("succeeded", "failed", "cancelled")


@dataclass
class _Running:
    process: TaskProcess
    lease_token: int
    task_token: str
    # The batch its process waits for before it starts: the one holding its
    # dependencies' completions (DONE for a task without dependencies).
    gate: Ticket = DONE


class FlowIndex:
    """Mixin of Engine: building and indexing flows (engine lock held)."""

    def _new_records(self, workflow_id: str, spec: WorkflowSpec,
                     now: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Records of a new submission, numbered (lock held; nothing written yet)."""
        wrec, task_recs = model.new_submission(workflow_id, spec, last_seq=self._seq, now=now)
        self._seq = wrec["seq"]
        return wrec, task_recs

    def _publish_flow(self, wrec: dict[str, Any], task_recs: list[dict[str, Any]]) -> _Flow:
        """Make a durably added workflow known to the scheduler and readers."""
        flow = self._make_flow(wrec, task_recs)
        self._event(flow, "workflow", None, "queued", message=f"{len(task_recs)} tasks")
        return flow

    def _restore_flow(self, wrec: dict[str, Any], task_recs: list[dict[str, Any]]) -> None:
        by_id = {t["id"]: t for t in task_recs}
        if any(tid not in by_id for tid in wrec.get("task_ids", [])):
            # Tasks are written before their workflow, so this is damage: rebuild them.
            missing = [tid for tid in wrec.get("task_ids", []) if tid not in by_id]
            for task in model.first_task_records(wrec, missing):
                by_id[task["id"]] = task
                self._save_task(task)
        ordered = [by_id[tid] for tid in wrec.get("task_ids", []) if tid in by_id]
        flow = self._make_flow(wrec, ordered)
        flow.events = self.store.load_events(wrec["id"])
        for i, e in enumerate(flow.events, 1):
            e["seq"] = i
        if not flow.finished:
            self._skip_blocked(flow)
            self._maybe_finish(flow)

    def _make_flow(self, wrec: dict[str, Any], task_recs: list[dict[str, Any]]) -> _Flow:
        tasks = {t["id"]: t for t in task_recs}
        dependents: dict[str, list[str]] = {tid: [] for tid in tasks}
        for t in task_recs:
            for dep in t.get("depends_on", []):
                if dep in dependents:
                    dependents[dep].append(t["id"])
        flow = _Flow(rec=wrec, tasks=tasks, dependents=dependents)
        flow.limit = wrec.get("max_parallel") or self.config.executor.max_concurrent_tasks
        self._flows[wrec["id"]] = flow
        self._index(flow)
        return flow

    def _index(self, flow: _Flow) -> None:
        """Recompute dependency counts, the ready heap and backoff entries."""
        flow.ready = []
        flow.unfinished = 0
        now_wall, now_mono = time.time(), time.monotonic()
        for tid, t in flow.tasks.items():
            if t["status"] not in model.FINISHED_TASK:
                flow.unfinished += 1
            flow.waiting[tid] = sum(1 for d in t.get("depends_on", [])
                                    if flow.tasks.get(d, {}).get("status") != "succeeded")
            if t["status"] == "queued" and flow.waiting[tid] == 0:
                if t.get("retry_at") and t["retry_at"] > now_wall:
                    heapq.heappush(self._backoff, (now_mono + t["retry_at"] - now_wall, t["key"]))
                else:
                    self._push_ready(flow, t)

    def _push_ready(self, flow: _Flow, task: dict[str, Any]) -> None:
        heapq.heappush(flow.ready, (-PRIORITIES.get(task.get("priority"), 1),
                                    task.get("seq") or 0, task["id"]))
        self._schedulable[flow.rec["id"]] = flow

    def _skip_blocked(self, flow: _Flow) -> None:
        """Queued tasks behind a failed/cancelled/skipped dependency are skipped."""
        for t in flow.tasks.values():
            if t["status"] in ("failed", "cancelled", "skipped"):
                self._skip_dependents(flow, t, time.time())

    # -- record writes (lock held): handed to the group committer ------------

    def _save_task(self, task: dict[str, Any]) -> Ticket:
        return self._written(task["workflow_id"], self._writer.save_task(task))

    def _save_workflow(self, wrec: dict[str, Any]) -> Ticket:
        return self._written(wrec["id"], self._writer.save_workflow(wrec))

    def _written(self, workflow_id: str, ticket: Ticket) -> Ticket:
        """Remember ``ticket`` as the workflow's latest write (its read barrier)."""
        flow = self._flows.get(workflow_id)
        if flow is not None:
            flow.written = ticket
        return ticket

    def _lookup_key(self, key: str) -> tuple[_Flow, dict[str, Any]] | None:
        workflow_id, _, task_id = key.partition(".")
        flow = self._flows.get(workflow_id)
        task = flow.tasks.get(task_id) if flow else None
        return (flow, task) if task else None
