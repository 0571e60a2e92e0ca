"""Answering about another daemon's workflow (several daemons on one database).

Any daemon answers any API call about any workflow (DESIGN.md 15, README
"Running several orchestrators"); only the owner (the lease holder) has the
workflow in its engine. What this module gives SharedPostgresStore:

- Reads come from the database: the list (``peer_workflows``), events
  (``events``, numbered by their position, as an engine numbers them when
  it loads a workflow) and, in postgres.py, task records and finished
  tasks' logs.
- The owner NOTIFYs ``EVENTS`` (payload: the workflow id) once the batch
  that wrote a workflow's events committed, so a long poll about a peer's workflow waits
  on LISTEN (``Listener``), re-checking at most every ``RECHECK_S`` in case
  a notification was missed (the listener reconnecting): no busy loop.
- Cancel and retry go to the owner's engine through table
  ``workflow_requests`` (schema version 3): ``request`` puts a row in and
  NOTIFYs the lease channel; the owner's lease thread ``take``s the rows
  of the workflows it holds, applies each with its engine (the same code
  path as a local call) and ``finish``es it with the outcome, NOTIFYing
  ``DONE`` (payload: the request id); the receiving daemon reads the
  outcome (``outcome``), deleting the row. A request nobody took while
  its workflow lost its live owner is ``abandon``ed by the receiver, which
  then claims the workflow (``claim_one``) and applies the call itself.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from provisioning.model import FINISHED_WORKFLOW, Record
from provisioning.model.storage import Event
from provisioning.store import postgres_leases as leases
from provisioning.store import postgres_schema as schema

log = logging.getLogger("provisioning.store")

EVENTS = "provisioning_events"  # NOTIFY payload: a workflow id whose events were committed
DONE = "provisioning_requests"  # NOTIFY payload: the id of a request with its outcome stored
RECHECK_S = 2.0  # a waiter looks again at least this often (a notification may be missed)
STALE_REQUEST_S = 60.0  # older: its receiver gave up (it waits 30 s, orchestrator/peers.py)
REOPENED = "reopened:"  # on the lease channel, before a workflow id: see reopened()


class Listener:
    """One connection of its own LISTENing on EVENTS and DONE for every waiter
    of this daemon (long polls, forwarded calls), started at the first watch."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._cond = threading.Condition()
        self._seen: dict[str, int] = {}  # watched payload -> notifications so far
        self._watchers: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # subscribed now (tests wait for it)

    def start(self) -> None:
        with self._cond:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._loop, name="pg-listen",
                                                daemon=True)
                self._thread.start()

    @contextmanager
    def watch(self, key: str) -> Iterator[Watch]:
        """Count the notifications with payload ``key`` while the block runs."""
        self.start()
        with self._cond:
            self._watchers[key] = self._watchers.get(key, 0) + 1
            self._seen.setdefault(key, 0)
            watch = Watch(self, key, self._seen[key])
        try:
            yield watch
        finally:
            with self._cond:
                self._watchers[key] -= 1
                if not self._watchers[key]:
                    del self._watchers[key], self._seen[key]

    def wait(self, watch: Watch, timeout: float) -> bool:
        with self._cond:
            got = self._cond.wait_for(
                lambda: self._seen[watch.key] != watch.last or self._stop.is_set(), timeout)
            watch.last = self._seen[watch.key]
            return bool(got)

    def _loop(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = schema.connect(self.dsn)
                conn.execute(f"LISTEN {EVENTS}")
                conn.execute(f"LISTEN {DONE}")
                self.listening.set()
                self._wake_all()  # what was notified before LISTEN is missed: look again
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=1.0):  # 1 s: to see _stop
                        with self._cond:
                            if note.payload in self._seen:
                                self._seen[note.payload] += 1
                                self._cond.notify_all()
            except Exception as e:  # the database away: waiters re-check by themselves
                log.warning("listening for peers' notifications failed (%s); trying again",
                            " ".join(str(e).split()))
                self._stop.wait(RECHECK_S)
            finally:
                self.listening.clear()
                if conn is not None:
                    conn.close()

    def _wake_all(self) -> None:
        with self._cond:
            for key in self._seen:
                self._seen[key] += 1
            self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)


class Watch:
    def __init__(self, listener: Listener, key: str, last: int):
        self.listener, self.key, self.last = listener, key, last

    def wait(self, timeout: float) -> bool:
        """Block until a notification for the key arrives or ``timeout`` passes."""
        return self.listener.wait(self, max(0.0, timeout))


# -- reads ------------------------------------------------------------------------

PEER_LIST = """SELECT w.rec::text, (SELECT json_object_agg(c.status, c.n)::text FROM
    (SELECT t.status, count(*) AS n FROM tasks t WHERE t.workflow_id = w.id
     GROUP BY t.status) c)
FROM workflows w WHERE w.id <> ALL(%s) ORDER BY w.seq, w.created_at, w.id"""


def peer_workflows(conn: Any, known: set[str]) -> list[tuple[Record, dict[str, int]]]:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(PEER_LIST, (sorted(known),))
        return [(json.loads(rec), json.loads(counts) if counts else {})
                for rec, counts in cur.fetchall()]


def events(conn: Any, workflow_id: str, after: int, limit: int) -> tuple[list[Event], bool] | None:
    """(its events after the first ``after``, numbered, and whether it is
    finished), or None when there is no such workflow."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT status FROM workflows WHERE id = %s", (workflow_id,))
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute("SELECT ev::text FROM events WHERE workflow_id = %s ORDER BY id "
                    "OFFSET %s LIMIT %s", (workflow_id, after, limit))
        found = [json.loads(text) for (text,) in cur.fetchall()]
    for i, event in enumerate(found, after + 1):
        event["seq"] = i
    return found, row[0] in FINISHED_WORKFLOW


def notify_events(conn: Any, workflow_ids: set[str]) -> None:
    """After the batch that wrote their events: wake the daemons long-polling
    these workflows (one statement, autocommitted)."""
    if workflow_ids:
        conn.execute("SELECT pg_notify(%s, w) FROM unnest(%s::text[]) AS w",
                     (EVENTS, sorted(workflow_ids)))


# -- cancel and retry through the owner -------------------------------------------

def request(conn: Any, me: str, workflow_id: str, action: str) -> int | None:
    """A request row for the live daemon (not ``me``) holding the workflow,
    and the NOTIFY that wakes its lease thread; its id, or None: no live
    daemon but ``me`` holds it."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT 1 FROM workflow_leases WHERE workflow_id = %s AND owner IS NOT NULL "
                    "AND owner <> %s AND expires_at >= now()", (workflow_id, me))
        if cur.fetchone() is None:
            return None
        cur.execute("INSERT INTO workflow_requests (workflow_id, action, asked_by) "
                    "VALUES (%s, %s, %s) RETURNING id", (workflow_id, action, me))
        (request_id,) = cur.fetchone()
        cur.execute("SELECT pg_notify(%s, 'request')", (leases.CHANNEL,))
        return int(request_id)


def take(conn: Any, me: str) -> list[tuple[int, str, str]]:
    """The owner's side: the open requests about workflows ``me`` holds,
    now taken by it (id, workflow id, action). Not its own (it asked while
    another held the workflow, then claimed it: it applies them itself,
    outcome() says "orphaned"), nor those older than a receiver waits
    (nobody waits for them; deleted after an hour)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("DELETE FROM workflow_requests WHERE created_at < now() - interval '1 hour'")
        cur.execute("UPDATE workflow_requests r SET taken_by = %(me)s FROM workflow_leases l "
                    "WHERE r.workflow_id = l.workflow_id AND l.owner = %(me)s "
                    "AND r.taken_by IS NULL AND r.done_at IS NULL AND r.asked_by <> %(me)s "
                    "AND r.created_at > now() - make_interval(secs => %(wait)s) "
                    "RETURNING r.id, r.workflow_id, r.action", {"me": me, "wait": STALE_REQUEST_S})
        return [(int(i), w, a) for i, w, a in cur.fetchall()]


def finish(conn: Any, request_id: int, outcome: dict[str, Any]) -> None:
    """The owner's side: the outcome stored, the receiver woken."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("UPDATE workflow_requests SET done_at = now(), outcome = %s WHERE id = %s",
                    (json.dumps(outcome, default=str), request_id))
        cur.execute("SELECT pg_notify(%s, %s)", (DONE, str(request_id)))


def outcome(conn: Any, request_id: int, me: str) -> tuple[str, dict[str, Any] | None]:
    """The receiver's side: ("done", outcome) (the row deleted), ("waiting",
    None), or ("orphaned", None): nobody took it and no live daemon but
    ``me`` holds its workflow any more (the owner died, or finished it, or
    handed it back); the row is deleted then, so nobody applies it later."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("DELETE FROM workflow_requests WHERE id = %s AND done_at IS NOT NULL "
                    "RETURNING outcome::text", (request_id,))
        row = cur.fetchone()
        if row is not None:
            return "done", json.loads(row[0]) if row[0] else None
        cur.execute("DELETE FROM workflow_requests r WHERE r.id = %s AND r.taken_by IS NULL "
                    "AND NOT EXISTS (SELECT 1 FROM workflow_leases l WHERE "
                    "l.workflow_id = r.workflow_id AND l.owner IS NOT NULL AND l.owner <> %s "
                    "AND l.expires_at >= now()) RETURNING r.id", (request_id, me))
        return ("orphaned", None) if cur.fetchone() else ("waiting", None)


def abandon(conn: Any, request_id: int) -> bool:
    """The receiver gives up waiting: the row deleted unless the owner took it."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("DELETE FROM workflow_requests WHERE id = %s AND taken_by IS NULL",
                    (request_id,))
        return cur.rowcount > 0


def reopened(cur: Any, workflow_id: str) -> None:
    """A finished workflow has a lease row again (it is retried, or a call
    is applied to it): the other daemons drop their copy of it from memory."""
    cur.execute("SELECT pg_notify(%s, %s)", (leases.CHANNEL, REOPENED + workflow_id))


def give_back(conn: Any, me: str, workflow_id: str) -> None:
    """Undo ``claim_one`` after the call was refused: the row of a finished
    workflow is dropped (it had none); an unfinished one's lease is handed
    back (a peer adopts it: this daemon did not, it is shutting down)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("DELETE FROM workflow_leases l USING workflows w WHERE l.workflow_id = %s "
                    "AND l.owner = %s AND w.id = l.workflow_id AND w.status = ANY(%s)",
                    (workflow_id, me, sorted(str.__str__(s) for s in FINISHED_WORKFLOW)))
        if cur.rowcount:
            return
    leases.release(conn, me, [workflow_id])


def claim_one(conn: Any, me: str, workflow_id: str, lease_s: float) -> int | None:
    """The lease of one workflow for ``me`` unless another live daemon holds
    it: claimed (free or expired: epoch + 1), kept (``me``'s already), or a
    new row (a finished workflow has none). The epoch, or None: another live
    daemon holds it, or there is no such workflow."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT owner, expires_at >= now() FROM workflow_leases "
                    "WHERE workflow_id = %s FOR UPDATE", (workflow_id,))
        row = cur.fetchone()
        if row is None:
            cur.execute("INSERT INTO workflow_leases (workflow_id, owner, expires_at, epoch) "
                        "SELECT id, %s, now() + make_interval(secs => %s), 1 FROM workflows "
                        "WHERE id = %s ON CONFLICT DO NOTHING RETURNING epoch",
                        (me, lease_s, workflow_id))
            got = cur.fetchone()
            if got:
                reopened(cur, workflow_id)
            return int(got[0]) if got else None
        if row[0] is not None and row[0] != me and row[1]:
            return None
        cur.execute("UPDATE workflow_leases SET owner = %s, "
                    "expires_at = now() + make_interval(secs => %s), "
                    "epoch = epoch + CASE WHEN owner = %s AND expires_at >= now() "
                    "THEN 0 ELSE 1 END WHERE workflow_id = %s RETURNING epoch",
                    (me, lease_s, me, workflow_id))
        got = cur.fetchone()
        return int(got[0]) if got else None
