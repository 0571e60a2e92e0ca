"""The Store interface: where the engine keeps its records (huey's BaseStorage
is the model). Written for whoever implements the next backend.

It lives beside the records (provisioning/model/, base level), not in
store/: the engine holds a Store without importing any backend, and the
backends (store/memory.py, store/jsonfile.py, and PostgreSQL next) import
this and the model, never the engine (tests/test_layering.py).

A Store persists two kinds of records and one log per workflow:

- a workflow record: schema, kind="workflow", id, name, status, created_at,
  started_at, finished_at, max_parallel, task_ids (ordered), spec (the
  whole validated ``WorkflowSpec.to_dict()``, so its tasks can be rebuilt),
  seq, cancel_requested;
- a task record: schema, kind="task", key ("<workflow_id>.<task_id>"),
  workflow_id, id, op, params, depends_on, priority, retries, timeout_s, seq
  (global submission order), status, attempts, attempt_base, progress,
  message, result, error, exit_code, signal, created_at, started_at,
  finished_at, updated_at, lease ({"token", "owner", "pid",
  "pid_create_time"} or None), last_lease_token, history, retry_at;
- events: per workflow, an ordered list of small dicts the engine appends.

Records are plain JSON documents (``"schema": SCHEMA_VERSION``), built by
provisioning.model and changed by the engine; a store keeps them whole and
gives back equal copies, never the objects it was handed. It never decides
anything about them: no state changes, no scheduling. States, ids and the
one record constructor live in provisioning.model.

Who calls what. The engine (engine/engine.py) calls ``load`` once at start,
before any write; from then on its committer (engine/commit.py) hands
``commit_batch`` everything the engine changed, one batch at a time (calls
never overlap), and waits for the ones somebody depends on: a submitter for
its 202, a task for its dependencies' completions before it starts, a reader
before it is shown a workflow. ``close`` comes once at shutdown; writes after
it are still allowed (``commit_batch``, ``save_*``), synchronously. Other
methods may be called from any thread, concurrently, but never two writes of
the same record at once.

Promises a backend makes (tests/test_store.py checks each, on every backend):

- Atomic records: after a crash at any moment, every record is its old or
  its new version, never a mix, never torn.
- Durable on return: when ``commit_batch``/``add_workflow``/``save_*``
  return, what they wrote survives a crash (kill -9, power loss), unless
  the method says otherwise (``initial_tasks``, events).
- The commit point of a submission is its workflow record: a new workflow
  exists once that record is durable, and from then on ``load`` returns it
  with ALL of its tasks (a task record that did not survive is rebuilt as
  queued with ``model.first_task_records``: that is all it said). Task
  records of a workflow whose record never became durable are orphans and
  must never be returned (delete them or ignore them).
- Ordering within a batch: task records are durable before workflow records
  (a workflow marked succeeded always has its tasks' completions on disk);
  events are appended only once the records of their batch are durable (an
  event log never runs ahead of the records). Batches are durable in the
  order they were committed.
- A failed ``commit_batch`` raises (StorageFull for a full disk or quota,
  HTTP 507; anything else as it is) and leaves no new workflow half-added:
  either it and its tasks are there after a restart, or none of it. Replaced
  records may keep their new version (each one is atomic); the engine
  writes them again with its next batch, so writes must be idempotent.
- ``load`` after a crash returns the last durable version of every record,
  checked: a record that cannot be trusted (unreadable, foreign, another
  schema) is set aside (quarantined, logged on "provisioning.store") and
  counted by ``quarantined_count``, never raised. Workflows come in
  submission order (seq); tasks grouped by workflow in that same order,
  each workflow's in its task_ids order.

What may be lost: events are derived from records and may lose their newest
entries in a power loss (never reorder, never tear one); an append that
fails (disk full) is logged and skipped by the store, never raised from
``commit_batch``. ``initial_tasks`` are written without being made durable
(see commit_batch).

Files: task processes write their own log and checkpoint files
(``task_log_path``, ``checkpoint_path``), so every backend hands out local
paths for those, under the data dir, even one whose records live elsewhere.

To add a backend: subclass Store, implement every abstract method, set
``group_commit``, and add it to the ``BACKENDS`` table of tests/test_store.py:
the whole shared suite (the daemon's commit path included) then runs on it.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from provisioning.model import Record

Event = dict[str, Any]
NewWorkflow = tuple[Record, list[Record]]  # (workflow record, its task records)


class Store(abc.ABC):
    """Durable (or not) home of records; see the module docstring for the contract."""

    # True when a commit costs enough (fsyncs, a round trip) that the engine
    # should group its writes in a committer thread and wait only for the
    # batches it depends on; False: the engine calls the store inline.
    group_commit: bool = False

    # -- writes ------------------------------------------------------------------

    @abc.abstractmethod
    def commit_batch(self, *, adds: list[NewWorkflow] = (), tasks: list[Record] = (),
                     workflows: list[Record] = (),
                     initial_tasks: dict[str, list[str]] | None = None,
                     events: list[tuple[str, Event]] = ()) -> None:
        """One group commit, durable on return, in this order:

        1. ``initial_tasks`` ``{workflow_id: [task_id, ...]}``: the first
           records of tasks of workflows committed in an EARLIER batch, made
           by the store from the stored workflow (``model.first_task_records``),
           atomically but not necessarily durably (load() rebuilds them
           anyway). A task listed here is never also in ``tasks``.
        2. ``adds``: new workflows with their task records (often none: the
           engine's committer sends ``(workflow, [])`` and the tasks later as
           ``initial_tasks``); each workflow record is its commit point.
        3. ``tasks``, then ``workflows``: new versions of existing records.
        4. ``events`` ``(workflow_id, event)``, appended in order once the
           records above are durable; failures logged, not raised.

        Raises what the backend raised; see "A failed commit_batch" above.
        """

    @abc.abstractmethod
    def add_workflow(self, workflow: Record, tasks: list[Record]) -> None:
        """Persist one new workflow and its tasks (``commit_batch(adds=...)``)."""

    @abc.abstractmethod
    def save_workflow(self, workflow: Record) -> None:
        """Replace one workflow record, durably."""

    @abc.abstractmethod
    def save_task(self, task: Record) -> None:
        """Replace one task record, durably."""

    @abc.abstractmethod
    def append_event(self, workflow_id: str, event: Event) -> None:
        """Append one event to the workflow's log (may raise, unlike commit_batch)."""

    # -- reads ---------------------------------------------------------------------

    @abc.abstractmethod
    def load(self) -> tuple[list[Record], list[Record]]:
        """Every workflow and every task (the engine's recovery at start); see
        the contract for order, rebuilt tasks and what is set aside."""

    @abc.abstractmethod
    def load_events(self, workflow_id: str) -> list[Event]:
        """A workflow's events in order ([] if it has none)."""

    @abc.abstractmethod
    def quarantined_count(self) -> int:
        """How many records were set aside as untrustworthy (shown by /health,
        so an operator notices without reading the log)."""

    # -- files written by task processes ---------------------------------------------

    @abc.abstractmethod
    def task_log_path(self, workflow_id: str, task_id: str) -> Path:
        """Where the task's captured output goes (parent dir exists)."""

    @abc.abstractmethod
    def checkpoint_path(self, workflow_id: str, task_id: str) -> Path:
        """The PROVISIONING_CHECKPOINT file of a task (parent dir exists)."""

    def read_workflow(self, workflow_id: str) -> tuple[Record, list[Record]] | None:
        """A workflow that another daemon runs (several daemons on one
        database): its record and its tasks' as stored now, read-only; None
        when there is none (the default: all of this store's are the engine's)."""
        return None

    def stored_task_log(self, workflow_id: str, task_id: str) -> bytes | None:
        """A finished task's log kept by the backend itself, for when the local
        file is not on this host (the task ran under another daemon, or the
        data dir is new); None: the local file is all there is (the default)."""
        return None

    # -- other daemons' workflows (several daemons on one database) ----------------
    # Defaults: no peers. Every workflow of the store is the engine's, so the
    # engine's own answer (or its NotFound) is the whole answer. The PostgreSQL
    # shared mode (store/postgres_shared.py) implements them; the API routes a
    # call through them (orchestrator/peers.py) when the engine does not hold
    # the workflow.

    def peer_workflows(self, known: set[str]) -> list[tuple[Record, dict[str, int]]]:
        """Every stored workflow whose id is not in ``known`` (the engine's),
        with its tasks' counts by status, as stored now; [] by default."""
        return []

    def peer_events(self, workflow_id: str, after: int, limit: int,
                    timeout: float) -> list[Event] | None:
        """Another daemon's workflow's events after the first ``after``, as
        stored now, ``seq`` their position (at most ``limit``); when there is
        none yet and the workflow is unfinished, waits up to ``timeout`` s for
        its owner to commit one (woken, never polled in a busy loop). None: no
        such workflow in the store (the default)."""
        return None

    def ask_owner(self, workflow_id: str, action: str, timeout: float) -> dict[str, Any] | None:
        """Have the live daemon that holds the workflow apply ``action``
        ("cancel" or "retry") with its engine; its outcome, ``{"view": ...}``
        or ``{"error", "hint", "http_status"}``. Waits up to ``timeout`` s,
        then raises ServiceUnavailable. None: no other live daemon holds it
        (the default), so the caller applies it itself (``claim_workflow``)."""
        return None

    def claim_workflow(self, workflow_id: str) -> tuple[list[Record], list[Record]] | None:
        """Take the lease of a workflow no live daemon holds (free, expired, or
        none since it finished) for this daemon; its records, as load() gives
        them, for the engine to adopt. None: a live daemon holds it, or there
        is no such workflow, or no peers (the default)."""
        return None

    def release_workflow(self, workflow_id: str) -> None:
        """Give back the lease ``claim_workflow`` took when the engine did not
        keep the workflow (a refused call to a finished one, or a daemon
        shutting down that adopts nothing); nothing by default."""
        return None

    # -- lifecycle -------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def writer_pid(self) -> int | None:
        """The pid of a helper process that writes the records (shown by
        /health), or None when they are written by this process."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the store holds (helper processes, open files).
        Later writes still work, synchronously."""
