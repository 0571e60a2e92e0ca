"""PostgresStore: the queue, records, events and task logs in PostgreSQL (DESIGN.md 15).

``storage.backend = "postgres"``. One row per record (tables in
postgres_schema.py), each record kept whole as JSON; a ``commit_batch`` is
one transaction, so it is atomic and, with PostgreSQL's default
synchronous_commit, durable when it returns. Events go in the same
transaction as the records of their batch, so the event log never runs
ahead of them. Task processes still write their log and checkpoint to local
files under the data dir (``task_log_path``); the log of a task that
finished is copied into ``task_logs``, so any daemon can show it.

One daemon per database by default: postgres_session.py holds the
connection, its reconnect backoff and the one-daemon lock that ``load()``
takes. Several daemons sharing one database under workflow leases:
postgres_shared.py (README "Running several orchestrators"). A call whose connection broke raises
DatabaseUnavailable (HTTP 503): the engine's committer keeps the records and
writes them again with its next batch, and a submission is never
acknowledged before its transaction committed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from provisioning import fsutil
from provisioning.model import FINISHED_TASK, first_task_records, task_key
from provisioning.model.storage import Event, NewWorkflow, Record, Store
from provisioning.paths import DataPaths
from provisioning.store import checks
from provisioning.store import postgres_schema as schema
from provisioning.store.fileio import storage_errors
from provisioning.store.postgres_session import Session
from provisioning.store.taskfiles import TaskFiles

log = logging.getLogger("provisioning.store")

MAX_LOG_BYTES = 8 * 1024 * 1024  # a longer task log is kept by its end

UPSERT_TASK = ("INSERT INTO tasks (key, workflow_id, status, rec) VALUES (%s, %s, %s, %s) "
               "ON CONFLICT (key) DO UPDATE SET status = EXCLUDED.status, rec = EXCLUDED.rec")
INSERT_FIRST_TASK = ("INSERT INTO tasks (key, workflow_id, status, rec) VALUES (%s, %s, %s, %s) "
                     "ON CONFLICT (key) DO NOTHING")
UPSERT_WORKFLOW = ("INSERT INTO workflows (id, seq, created_at, status, rec) "
                   "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                   "status = EXCLUDED.status, rec = EXCLUDED.rec")
INSERT_EVENT = "INSERT INTO events (workflow_id, ev) VALUES (%s, %s)"
UPSERT_LOG = ("INSERT INTO task_logs (key, workflow_id, body) VALUES (%s, %s, %s) "
              "ON CONFLICT (key) DO UPDATE SET body = EXCLUDED.body, updated_at = now()")


def _dumps(record: Any) -> str:
    return json.dumps(record, separators=(",", ":"))


def _task_row(task: Record) -> tuple[str, str, str, str]:
    key = _checked_key(task)
    return key, task["workflow_id"], str(task.get("status")), _dumps(task)


def _workflow_row(workflow: Record) -> tuple[str, int, Any, str, str]:
    wid = checks.check_id(workflow.get("id"), "workflow id")
    seq = workflow.get("seq")
    return (wid, seq if isinstance(seq, int) else 0, workflow.get("created_at"),
            str(workflow.get("status")), _dumps(workflow))


class PostgresStore(Store):
    group_commit = True  # a batch costs a round trip and the server's WAL flush

    def __init__(self, dsn: str, data_paths: DataPaths, *,
                 on_fenced: Callable[[], None] | None = None,
                 idle_in_transaction_s: float | None = None):
        """Connects, and checks (or, in an empty database, creates) the schema:
        raises DatabaseUnavailable or SchemaMismatch, never a driver's error."""
        self.paths = data_paths
        with storage_errors(data_paths.data_dir):
            for d in (data_paths.data_dir, data_paths.logs_dir, data_paths.checkpoints_dir):
                fsutil.ensure_private_dir(d)
        self.task_files = TaskFiles(data_paths)
        self._quarantined = 0
        # Events read by load() for the engine's start (one query instead of one per
        # workflow); each workflow's taken once by load_events, dropped on any event write.
        self._prefetched: dict[str, list[str]] | None = None
        self.session = Session(dsn, on_fenced=on_fenced,  # both: postgres_session.py
                               idle_in_transaction_s=idle_in_transaction_s)
        self.run = self.session.run  # work(connection) under its lock (postgres_session.py)

    # -- writes ----------------------------------------------------------------------

    def commit_batch(self, *, adds: list[NewWorkflow] = (), tasks: list[Record] = (),
                     workflows: list[Record] = (),
                     initial_tasks: dict[str, list[str]] | None = None,
                     events: list[tuple[str, Event]] = ()) -> None:
        """The Store contract's group commit as ONE transaction: every row is
        encoded first (a record JSON cannot encode fails the batch before
        anything is sent), then the first task records (made from the stored
        workflows), the new workflows with their tasks, the replaced records,
        the finished tasks' logs and the events, and one COMMIT."""
        new_tasks, new_workflows = [], []
        for workflow, its_tasks in adds:
            row = _workflow_row(workflow)
            for task in its_tasks:
                if task.get("workflow_id") != row[0]:
                    raise ValueError(f"task {task.get('key')!r} does not belong to "
                                     f"workflow {row[0]!r}")
                new_tasks.append(_task_row(task))
            new_workflows.append(row)
        task_rows = [_task_row(t) for t in tasks]
        workflow_rows = [_workflow_row(w) for w in workflows]
        event_rows = _event_rows(events)
        log_rows = self._finished_logs(tasks)

        def write(conn: Any) -> set[str]:
            with conn.transaction(), conn.cursor() as cur:
                skip = self._in_batch(cur, new_workflows, workflow_rows,
                                      {r[1] for r in task_rows} | {r[0] for r in event_rows})
                if initial_tasks:
                    cur.executemany(INSERT_FIRST_TASK, self._first_rows(cur, initial_tasks))
                for sql, rows, at in ((UPSERT_TASK, new_tasks, 1),  # at: the workflow id's column
                                      (UPSERT_WORKFLOW, new_workflows, 0),
                                      (UPSERT_TASK, task_rows, 1),
                                      (UPSERT_WORKFLOW, workflow_rows, 0),
                                      (UPSERT_LOG, log_rows, 1), (INSERT_EVENT, event_rows, 0)):
                    if skip:
                        rows = [r for r in rows if r[at] not in skip]
                    if rows:
                        cur.executemany(sql, rows)
                return skip

        if event_rows:
            self._prefetched = None
        skip = self.run(write)
        if event_rows:
            self._events_written({r[0] for r in event_rows} - skip)

    def _in_batch(self, cur: Any, new_workflows: list[tuple], workflow_rows: list[tuple],
                  written: set[str]) -> set[str]:
        """In a batch's transaction, before its writes: the workflow ids whose
        rows must not be written. One daemon per database: none (the shared
        mode fences here, postgres_shared.py)."""
        return set()

    def _events_written(self, workflow_ids: set[str]) -> None:
        """After a batch committed events of these workflows: nothing here (the
        shared mode NOTIFYs the daemons long-polling them, postgres_peers.py)."""

    def _first_rows(self, cur: Any, initial: dict[str, list[str]]) -> list[tuple]:
        cur.execute("SELECT rec::text FROM workflows WHERE id = ANY(%s)", (list(initial),))
        rows = []
        for (text,) in cur.fetchall():
            workflow = json.loads(text)
            try:
                rows += [_task_row(t) for t in first_task_records(workflow,
                                                                    initial[workflow["id"]])]
            except (KeyError, TypeError, ValueError) as e:  # load() rebuilds them anyway
                log.warning("not writing the first task records of workflow %s now (%s)",
                            workflow.get("id"), e)
        return rows

    def _finished_logs(self, tasks: Iterable[Record]) -> list[tuple[str, str, bytes]]:
        """(key, workflow id, log) of the finished tasks whose log is on this host."""
        rows = []
        for task in tasks:
            if task.get("status") not in FINISHED_TASK:
                continue
            path = self.paths.logs_dir / str(task.get("workflow_id")) / f"{task.get('id')}.log"
            try:
                with open(path, "rb") as f:
                    size = f.seek(0, 2)
                    f.seek(max(0, size - MAX_LOG_BYTES))
                    body = f.read()
            except OSError:  # most tasks print nothing: no file
                continue
            rows.append((task["key"], task["workflow_id"], body))
        return rows

    def add_workflow(self, workflow: Record, tasks: list[Record]) -> None:
        self.commit_batch(adds=[(workflow, tasks)])

    def save_workflow(self, workflow: Record) -> None:
        self.commit_batch(workflows=[workflow])

    def save_task(self, task: Record) -> None:
        self.commit_batch(tasks=[task])

    def append_event(self, workflow_id: str, event: Event) -> None:
        row = (workflow_id, _dumps(event))
        self._prefetched = None
        self.run(lambda conn: _in_transaction(conn, INSERT_EVENT, [row]))

    # -- reads -----------------------------------------------------------------------

    def load(self) -> tuple[list[Record], list[Record]]:
        """Every workflow in submission order with its tasks in task_ids order;
        records that cannot be trusted go to the ``quarantine`` table. The
        first load takes the database's one-daemon lock (module docstring)."""
        mine = self._take_database()

        def read(conn: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT id, rec::text FROM workflows ORDER BY seq, created_at, id")
                wf_rows = cur.fetchall()
                cur.execute("SELECT key, rec::text FROM tasks")
                task_rows = cur.fetchall()
                cur.execute("SELECT workflow_id, ev::text FROM events ORDER BY id")
                events: dict[str, list[str]] = {}
                for workflow_id, text in cur:
                    events.setdefault(workflow_id, []).append(text)
                self._prefetched = events
                return wf_rows, task_rows

        wf_rows, task_rows = self.run(read)
        if mine is not None:  # shared mode: only the workflows this daemon claimed
            wf_rows = [r for r in wf_rows if r[0] in mine]
            task_rows = [r for r in task_rows if r[0].partition(".")[0] in mine]
        return self._trusted_records(wf_rows, task_rows)

    def _take_database(self) -> set[str] | None:
        """At load: the one-daemon lock (None: every workflow is this daemon's)."""
        self.session.take_daemon_lock()
        return None

    def _trusted_records(self, wf_rows: list[tuple[str, str]], task_rows: list[tuple[str, str]]
                         ) -> tuple[list[Record], list[Record]]:
        """The records of these rows, trusted ones only (the rest set aside),
        missing first task records rebuilt; in load()'s order."""
        bad: list[tuple[str, str, str, str]] = []
        workflows = [w for w in (_trusted("workflow", k, t, bad) for k, t in wf_rows) if w]
        tasks = {t["key"]: t for t in (_trusted("task", k, txt, bad) for k, txt in task_rows)
                 if t}
        ordered: list[Record] = []
        rebuilt: list[Record] = []
        for wf in workflows:
            missing = [tid for tid in wf["task_ids"] if task_key(wf["id"], tid) not in tasks]
            made = {t["id"]: t for t in first_task_records(wf, missing)}
            rebuilt += made.values()
            ordered += [tasks.get(task_key(wf["id"], tid)) or made[tid] for tid in wf["task_ids"]]
        if bad or rebuilt:
            self.run(lambda conn: self._set_aside(conn, bad, rebuilt))
        return workflows, ordered

    def _set_aside(self, conn: Any, bad: list[tuple[str, str, str, str]],
                   rebuilt: list[Record]) -> None:
        with conn.transaction(), conn.cursor() as cur:
            for kind, key, reason, text in bad:
                log.warning("quarantined %s record %s: %s", kind, key, reason)
                table, column = ("workflows", "id") if kind == "workflow" else ("tasks", "key")
                cur.execute(f"DELETE FROM {table} WHERE {column} = %s", (key,))  # noqa: S608
                cur.execute("INSERT INTO quarantine (kind, key, reason, rec) "
                            "VALUES (%s, %s, %s, %s)", (kind, key, reason, text))
            if rebuilt:
                cur.executemany(INSERT_FIRST_TASK, [_task_row(t) for t in rebuilt])
        self._quarantined += len(bad)

    def load_events(self, workflow_id: str) -> list[Event]:
        prefetched = self._prefetched
        texts = prefetched.pop(workflow_id, None) if prefetched is not None else None
        if texts is not None:
            return [json.loads(text) for text in texts]

        def read(conn: Any) -> list[Event]:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT ev::text FROM events WHERE workflow_id = %s ORDER BY id",
                            (workflow_id,))
                return [json.loads(text) for (text,) in cur.fetchall()]

        return self.run(read)

    def stored_task_log(self, workflow_id: str, task_id: str) -> bytes | None:
        """The log copied in when the task finished (on whichever host), or None."""
        def read(conn: Any) -> bytes | None:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT body FROM task_logs WHERE key = %s",
                            (task_key(workflow_id, task_id),))
                row = cur.fetchone()
            return bytes(row[0]) if row else None

        return self.run(read)

    def quarantined_count(self) -> int:
        def count(conn: Any) -> int:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM quarantine")
                return int(cur.fetchone()[0])

        try:
            self._quarantined = self.run(count)
        except schema.DatabaseUnavailable:
            pass  # /health still answers, with the last count
        return self._quarantined

    # -- files written by task processes ---------------------------------------------

    def task_log_path(self, workflow_id: str, task_id: str) -> Path:
        return self.task_files.log_path(workflow_id, task_id)

    def checkpoint_path(self, workflow_id: str, task_id: str) -> Path:
        return self.task_files.checkpoint_path(workflow_id, task_id)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def writer_pid(self) -> int | None:
        return None  # the database server writes; nothing of ours

    def close(self) -> None:
        """Close the connection (releasing the one-daemon lock); a later write
        opens a new one."""
        self.session.close()


def _in_transaction(conn: Any, sql: str, rows: list[tuple]) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(sql, rows)


def _event_rows(events: Iterable[tuple[str, Event]]) -> list[tuple[str, str]]:
    rows = []
    for workflow_id, event in events:
        try:
            rows.append((workflow_id, _dumps(event)))
        except (TypeError, ValueError) as e:  # the contract: logged and skipped
            log.error("not appending an event of workflow %s: %s", workflow_id, e)
    return rows


def _trusted(kind: str, key: str, text: str, bad: list[tuple[str, str, str, str]]
             ) -> Record | None:
    rec = json.loads(text)  # a json column holds valid JSON
    check = checks.check_workflow if kind == "workflow" else checks.check_task
    problem = check(rec, key)
    if problem:
        bad.append((kind, key, problem, text))
        return None
    return rec


def _checked_key(task: Record) -> str:
    checks.check_id(task.get("workflow_id"), "workflow id")
    checks.check_id(task.get("id"), "task id")
    key = task_key(task["workflow_id"], task["id"])
    if task.get("key") != key:
        raise ValueError(f"task key {task.get('key')!r} should be {key!r}")
    return key
