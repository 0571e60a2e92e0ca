"""Group commit of the engine's record writes (docs/performance-notes.md).

The engine changes records under its lock and hands them to a Committer
instead of writing them itself. With a store whose commits are worth grouping
(``Store.group_commit``: JsonFileStore), one committer thread writes everything
handed over since its last write in ONE store call (file fsyncs overlapping,
one fsync per directory), outside the engine lock. So:

- submissions that arrive together share their fsyncs (group commit), and
  each submitter returns only once its own batch is durable;
- task transitions of many tasks (claims, pids, completions) share theirs,
  and nothing waits for the disk while holding the engine lock.

Ordering is what keeps the guarantees: batches are written one after the
other, in the order their records were handed over, and a batch is reported
done only when every file in it and its directories are fsynced. So when a
Ticket is done, every write handed over before it is durable too (a task's
completion is durable before the claim of a dependent that was handed over
after it). Within a batch, task records are durable before workflow records.

A record handed over again before its batch was taken is simply replaced
(only its newest version is written). Records are copied when handed over,
so the engine may keep changing its dicts.

A new workflow's commit point is its workflow file, which holds its spec:
the submitter waits for that file alone. Its task files follow about
INITIAL_DELAY later, without fsync (``initial_tasks``: the store makes
them from the workflow file, so the daemon copies nothing): after a crash,
load() rebuilds a missing or torn one from the spec as queued, which is all
it said. So a submission of N tasks costs one fsynced file on the
submitter's path, and a task claimed within that delay (the common case for
a short queue) has its file written once, by its claim, not twice.

When is a batch written? At once when someone waits for it (a submitter, a
task about to start, a reader: ``wait`` makes the open batch urgent), else
at most FLUSH_DELAY after its first record was handed over. So writes nobody
waits for (a pid, a completion, a progress checkpoint) ride along with the
next urgent batch instead of costing a batch of their own.

With any other store (MemoryStore: direct mode, tests) the writer writes
inline, synchronously, in the caller: there is no disk to wait for.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from provisioning.model.storage import Store

log = logging.getLogger("provisioning.engine")

Record = dict[str, Any]
RETRY_DELAY = 1.0  # seconds before writing again after a failed batch (disk full...)
FLUSH_DELAY = 0.02  # seconds a write nobody waits for may wait for company
INITIAL_DELAY = 1.0  # seconds before a new task's first file is written (see above)


class Ticket:
    """One batch of writes. Every caller that handed over a record to the same
    batch gets the same Ticket; ``wait`` returns once it is durable."""

    __slots__ = ("adds", "done", "error", "events", "since", "tasks", "unsynced", "urgent",
                 "workflows")

    def __init__(self) -> None:
        self.adds: list[tuple[Record, list[Record]]] = []  # new workflows, their tasks
        self.tasks: dict[str, Record] = {}  # key -> snapshot
        self.workflows: dict[str, Record] = {}  # id -> snapshot
        self.unsynced: dict[str, None] = {}  # keys of new tasks whose first file is due
        self.events: list[tuple[str, Record]] = []  # (workflow id, event), in order
        self.done = False
        self.error: BaseException | None = None
        self.urgent = False  # someone waits: write it as soon as the committer is free
        self.since = 0.0  # monotonic time of its first record

    def empty(self) -> bool:
        return not (self.adds or self.tasks or self.workflows or self.unsynced or self.events)


DONE = Ticket()
DONE.done = True


class Committer:
    def __init__(self, store: Store, *, grouped: bool | None = None):
        """``grouped``: write in a committer thread (default: ``store.group_commit``;
        the shared store tests force it to run the daemon's path on every backend)."""
        self.store = store
        self.batched = store.group_commit if grouped is None else grouped
        self._cv = threading.Condition()
        self._open = Ticket()  # collecting writes for the next batch
        self._thread: threading.Thread | None = None
        self._closed = False
        self._inline_lock = threading.Lock()  # inline writes from several threads
        # Keys of new tasks whose first file is to be written, unsynced, once due
        # (lock: _cv); a newer version handed over first removes its key.
        self._initial: dict[str, None] = {}
        self._initial_due = 0.0

    # -- handing over writes (any thread; the engine's lock usually held) ----

    def save_task(self, task: Record) -> Ticket:
        """Queue the current version of a task record; returns its batch."""
        return self._queue_record("tasks", task["key"], task, self.store.save_task)

    def save_workflow(self, workflow: Record) -> Ticket:
        """Queue the current version of a workflow record; returns its batch."""
        return self._queue_record("workflows", workflow["id"], workflow,
                                  self.store.save_workflow)

    def _queue_record(self, kind: str, key: str, record: Record,
                      write_now: Callable[[Record], None]) -> Ticket:
        if not self.batched or self._closed:
            with self._inline_lock:
                write_now(record)
            return DONE
        snapshot = _copy(record)
        with self._cv:
            ticket = self._open
            getattr(ticket, kind)[key] = snapshot  # a later version replaces an earlier one
            if kind == "tasks":  # a first version still waiting is superseded
                self._initial.pop(key, None)
                ticket.unsynced.pop(key, None)
            self._kick(ticket)
            return ticket

    def append_event(self, workflow_id: str, event: Record) -> None:
        """Queue an event-log line; it is appended once the records handed over
        with or before it are durable (never ahead of them). The event is not
        copied: the engine never changes an event once made. Never raises:
        a batch logs an append that fails (events are derived from records)."""
        if not self.batched:
            with self._inline_lock:  # MemoryStore: a list append
                self.store.append_event(workflow_id, event)
            return
        if self._closed:  # after shutdown: a batch of its own, at once
            with self._inline_lock:
                self.store.commit_batch(events=[(workflow_id, event)])
            return
        with self._cv:
            ticket = self._open
            ticket.events.append((workflow_id, event))
            self._kick(ticket)

    def add_workflow(self, workflow: Record, tasks: list[Record]) -> None:
        """Persist a new workflow; returns once it is durable, raises what the
        store raised (StorageFull...). The records are not copied: the caller
        must not show or change them until this returns."""
        if not self.batched or self._closed:
            with self._inline_lock:
                self.store.add_workflow(workflow, tasks)
            return
        with self._cv:
            ticket = self._open
            ticket.adds.append((workflow, tasks))
            self._kick(ticket)
        self.wait(ticket)

    # -- waiting (never while holding a lock the committer needs: it needs none) --

    def wait(self, ticket: Ticket, *, raise_errors: bool = True) -> None:
        """Block until ``ticket``'s batch was written; raise its error if it failed."""
        if not ticket.done:
            with self._cv:
                if not ticket.urgent and not ticket.done:
                    ticket.urgent = True
                    self._cv.notify_all()
                while not ticket.done:
                    self._cv.wait()
        if raise_errors and ticket.error is not None:
            raise ticket.error

    def current(self) -> Ticket:
        """The batch collecting writes now: waiting on it waits for every write
        handed over so far."""
        with self._cv:
            return DONE if self._open.empty() else self._open

    def flush(self) -> None:
        """Wait until everything handed over so far is durable (errors ignored)."""
        self.wait(self.current(), raise_errors=False)

    def close(self) -> None:
        """Write what is pending, stop the committer; later writes are inline."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=60)

    # -- the committer -------------------------------------------------------

    def _kick(self, ticket: Ticket) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="engine-commit", daemon=True)
            self._thread.start()
        if not ticket.since:  # its first record: the committer sets its timer
            ticket.since = time.monotonic()
            self._cv.notify_all()

    def _run(self) -> None:
        delay = 0.0
        while True:
            with self._cv:
                if delay and not self._closed:
                    self._cv.wait(delay)  # after a failure: not a busy loop on a full disk
                while not self._closed:
                    batch = self._open
                    if batch.urgent:
                        break
                    now = time.monotonic()
                    if self._initial and now >= self._initial_due:
                        self._take_initial(batch)
                    initial_in = self._initial_due - now if self._initial else None
                    if batch.empty():
                        self._cv.wait(initial_in)
                        continue
                    remaining = batch.since + FLUSH_DELAY - now
                    if remaining <= 0:
                        break
                    self._cv.wait(remaining if initial_in is None else min(remaining, initial_in))
                if self._closed:
                    self._take_initial(self._open)  # nothing is left behind at close
                if self._open.empty():  # closed and nothing left
                    self._thread = None
                    return
                batch, self._open = self._open, Ticket()
            error = self._write(batch)
            with self._cv:
                batch.error = error
                if error is None:
                    self._follow_adds(batch)
                batch.done = True
                delay = 0.0
                if error is not None:
                    delay = RETRY_DELAY
                    self._requeue(batch)
                self._cv.notify_all()

    def _write(self, batch: Ticket) -> BaseException | None:
        try:
            self.store.commit_batch(adds=[(wf, []) for wf, _ in batch.adds],
                                    tasks=list(batch.tasks.values()),
                                    workflows=list(batch.workflows.values()),
                                    initial_tasks=_by_workflow(batch.unsynced),
                                    events=batch.events)
        except Exception as e:
            log.error("could not write %d task and %d workflow records, %d new workflows: %s",
                      len(batch.tasks) + len(batch.unsynced), len(batch.workflows),
                      len(batch.adds), e)
            return e
        return None

    def _follow_adds(self, batch: Ticket) -> None:
        """The task files of the workflows ``batch`` committed are written
        INITIAL_DELAY later (their keys are kept; the store makes the records).
        Called before their submitters are released, so any newer version of
        a task is handed over later and drops its key (_queue_record). Lock held."""
        if not self._initial:
            self._initial_due = time.monotonic() + INITIAL_DELAY
        for _, tasks in batch.adds:
            for task in tasks:
                self._initial[task["key"]] = None

    def _take_initial(self, ticket: Ticket) -> None:
        """Move the keys of the due first files into ``ticket`` (lock held)."""
        if not self._initial:
            return
        for key in self._initial:
            if key not in ticket.tasks:
                ticket.unsynced[key] = None
        self._initial = {}
        self._kick(ticket)

    def _requeue(self, failed: Ticket) -> None:
        """Records of a failed batch are written again with the next one, unless a
        newer version is already queued. New workflows are not: their
        submitters got the error and nothing was acknowledged."""
        for key, rec in failed.tasks.items():
            self._open.tasks.setdefault(key, rec)
        for key in failed.unsynced:
            if key not in self._open.tasks:
                self._open.unsynced[key] = None
        self._open.events[:0] = failed.events  # still in order, ahead of newer ones
        for wid, rec in failed.workflows.items():
            self._open.workflows.setdefault(wid, rec)
        if not self._open.empty() and not self._open.since:
            self._open.since = time.monotonic()


def _copy(record: Record) -> Record:
    # Records are JSON documents: a JSON round trip is a deep copy (and proves
    # the record can be written) at C speed.
    return json.loads(json.dumps(record))


def _by_workflow(keys: dict[str, None]) -> dict[str, list[str]]:
    """Task keys ("<workflow id>.<task id>"; neither has a dot) by workflow."""
    out: dict[str, list[str]] = {}
    for key in keys:
        workflow_id, _, task_id = key.partition(".")
        out.setdefault(workflow_id, []).append(task_id)
    return out
