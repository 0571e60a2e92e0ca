"""The journal: how the engine's parts hand record writes and events to the committer.

Every change the engine makes to a record is followed by a save here, with
the engine lock held; the committer (commit.py) writes it outside the lock.
The journal remembers, per workflow, the batch of its latest write
(``Flow.written``): a reader about to be shown that workflow waits for it
(``settle``), so nobody is shown what the disk does not have. Events are
numbered per workflow, kept in memory for readers and monitors, and written
with the next batch.
"""

from __future__ import annotations

import time

from provisioning.engine.commit import Committer, Ticket
from provisioning.engine.flows import Flow
from provisioning.model import Record, plain


class Journal:
    def __init__(self, committer: Committer):
        self.committer = committer

    def save_task(self, flow: Flow, task: Record) -> Ticket:
        """Hand over the current version of ``task``; returns its batch."""
        flow.written = self.committer.save_task(task)
        return flow.written

    def save_workflow(self, flow: Flow) -> Ticket:
        """Hand over the current version of ``flow``'s workflow record."""
        flow.written = self.committer.save_workflow(flow.rec)
        return flow.written

    def event(self, flow: Flow, kind: str, task_id: str | None, status: str, *,
              progress: int | None = None, message: str | None = None) -> None:
        """Record event number len(flow.events) + 1 and wake whoever long-polls."""
        event = {"seq": len(flow.events) + 1, "ts": time.time(), "type": kind, "task": task_id,
                 "status": plain(status), "progress": progress, "message": message}
        flow.events.append(event)
        # With the next batch: never raises, so a full disk cannot break a
        # transition half-way nor fail a submission already committed.
        self.committer.append_event(flow.rec["id"], event)
        if flow.event_waiters is not None:
            flow.event_waiters.notify_all()

    def settle(self, written: Ticket) -> None:
        """Read barrier (engine lock NOT held): what a reader is about to be
        shown of a workflow is on disk first. Returns at once unless that
        workflow has a write in the batch being written now (a few ms); a
        failed batch does not block readers (it is written again and logged)."""
        if not written.done:
            self.committer.wait(written, raise_errors=False)

    def wait(self, ticket: Ticket) -> None:
        """Block until ``ticket``'s batch is durable; raise its error if it failed."""
        self.committer.wait(ticket)

    def add_workflow(self, workflow: Record, tasks: list[Record]) -> None:
        """A new submission, durable on return (raises StorageFull...)."""
        self.committer.add_workflow(workflow, tasks)
