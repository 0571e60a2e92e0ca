"""Several daemons on one PostgreSQL database (``storage.postgres_shared``).

SharedPostgresStore is PostgresStore without the one-daemon lock: each
daemon owns whole workflows under leases (postgres_leases.py, README
"Running several orchestrators").

- Its daemon id is stable per data dir (file ``daemon-id``; the data dir's
  own lock keeps one daemon per data dir), so a daemon restarted after
  kill -9 takes its own leases back at once instead of waiting them out.
- ``load()`` (the engine's start) registers the daemon, gives a lease row to
  every unfinished workflow that has none, claims the free and expired ones
  and its own, and returns only those.
- Every batch runs its fence first, in its own transaction: a workflow it
  submits gets its lease row (owned by it); rows of a workflow it does not
  hold under the epoch it claimed it with are not written (a late write of
  a daemon whose lease expired never overwrites the new owner's records);
  a workflow recorded finished gives its lease up.
- ``start_leases`` runs the lease thread on a connection of its own: a
  heartbeat (daemon row and leases renewed) every third of the lease, and
  claims of free or expired workflows — also just after a peer's lease is due
  to run out (postgres_leases.next_expiry), so a dead owner's workflows are
  taken within the lease plus a round trip — handed to ``on_adopt`` (the engine
  loads them: their in-flight tasks re-run, finished ones never). Between
  rounds it waits on LISTEN (offer, release, finish) with the round's
  interval as the timeout: no busy polling. A lease found lost calls
  ``on_lost`` (the daemon stops at once).
- ``close()`` releases what it still holds (NOTIFY: a peer takes it now).
- Another daemon's workflows (postgres_peers.py; the Store methods
  ``peer_workflows``, ``peer_events``, ``ask_owner``, ``claim_workflow``):
  reads from the database, long polls woken by the owner's NOTIFY, cancel
  and retry applied by the owner's engine through ``workflow_requests``
  (its lease thread takes them each round, ``on_request`` applies them),
  or, when no live daemon holds the workflow, by this one after a claim.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from provisioning import fsutil
from provisioning.errors import ServiceUnavailable
from provisioning.model import FINISHED_WORKFLOW, Record, first_task_records
from provisioning.model.storage import Event
from provisioning.paths import DataPaths
from provisioning.store import checks
from provisioning.store import postgres_leases as leases
from provisioning.store import postgres_peers as peering
from provisioning.store import postgres_schema as schema
from provisioning.store.postgres import PostgresStore

log = logging.getLogger("provisioning.store")

CLAIM_BATCH = 50  # workflows one claim takes at most (the next round takes more)
CLAIM_AT_LOAD = 100_000
EXPIRY_MARGIN_S = 0.05  # a claim this long after a peer's lease ran out (clock rounding)


def daemon_id(data_paths: DataPaths) -> str:
    """host:uuid, kept in the data dir: the same daemon across restarts."""
    path = data_paths.data_dir / "daemon-id"
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        value = f"{socket.gethostname()}:{uuid.uuid4().hex[:12]}"
        fsutil.atomic_write_bytes(path, value.encode() + b"\n")
    return value


class SharedPostgresStore(PostgresStore):
    def __init__(self, dsn: str, data_paths: DataPaths, *, lease_s: float,
                 on_fenced: Callable[[], None] | None = None):
        # A daemon stalled inside a batch holds its lease rows locked (FOR SHARE) and
        # claims skip locked rows: the server ends such a session well within the lease.
        self.idle_in_transaction_s = max(1.0, float(lease_s) / 2)
        super().__init__(dsn, data_paths, on_fenced=on_fenced,
                         idle_in_transaction_s=self.idle_in_transaction_s)
        self.daemon_id = daemon_id(data_paths)
        self.lease_s = float(lease_s)
        self.held: dict[str, int] = {}  # workflow id -> epoch it was claimed with
        self.lost: set[str] = set()  # taken over by another daemon: never written again
        # Held across a whole batch (RLock: _in_batch takes it again): a snapshot of
        # ``held`` taken under it has only workflows whose lease rows committed.
        self._held_lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._endpoint: str | None = None
        self._on_request: Callable[[str, str], dict[str, Any]] | None = None
        self._on_reopened: Callable[[str], None] | None = None
        self._listener = peering.Listener(self.session.dsn)

    # -- load and batches -----------------------------------------------------------

    def _take_database(self) -> set[str] | None:
        def take(conn: Any) -> dict[str, int]:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("INSERT INTO workflow_leases (workflow_id) SELECT id FROM workflows "
                            "WHERE status <> ALL(%s) ON CONFLICT DO NOTHING",
                            (sorted(str.__str__(s) for s in FINISHED_WORKFLOW),))
            leases.heartbeat(conn, self.daemon_id, self.lease_s, pid=os.getpid())
            return leases.claim(conn, self.daemon_id, self.lease_s, CLAIM_AT_LOAD,
                                mine_too=True)

        got = self.run(take)
        with self._held_lock:
            self.held.update(got)
            return set(self.held)

    def commit_batch(self, **batch: Any) -> None:
        with self._held_lock:
            super().commit_batch(**batch)

    def _in_batch(self, cur: Any, new_workflows: list[tuple], workflow_rows: list[tuple],
                  written: set[str]) -> set[str]:
        with self._held_lock:
            for row in new_workflows:
                leases.offer(cur, row[0], self.daemon_id, self.lease_s)
                self.held[row[0]] = 1
            ids = written | {r[0] for r in workflow_rows}
            unheld = ids - set(self.held) - self.lost
            reopened = {r[0] for r in workflow_rows if r[3] not in FINISHED_WORKFLOW} & unheld
            for wid in reopened:  # retried after it finished: its lease row is gone
                cur.execute("INSERT INTO workflow_leases (workflow_id, owner, expires_at, epoch) "
                            "VALUES (%s, %s, now() + make_interval(secs => %s), 1) "
                            "ON CONFLICT DO NOTHING RETURNING epoch",
                            (wid, self.daemon_id, self.lease_s))
                if cur.fetchone():
                    self.held[wid] = 1
                    peering.reopened(cur, wid)
            skip = leases.fenced_out(cur, self.daemon_id, self.held, ids & set(self.held))
            self.lost |= skip  # expired or taken: it will not be this daemon's again
            skip |= ids & self.lost
            if others := sorted(unheld - set(self.held)):  # no row: finished here, writes go on
                cur.execute("SELECT workflow_id FROM workflow_leases WHERE workflow_id = ANY(%s)",
                            (others,))
                skip |= {row[0] for row in cur.fetchall()}
            if skip:
                log.error("not writing workflows %s: this daemon's lease on them is lost",
                          ", ".join(sorted(skip)))
            for row in workflow_rows:
                if row[0] not in skip and row[3] in FINISHED_WORKFLOW:
                    leases.finish(cur, self.daemon_id, row[0])
                    self.held.pop(row[0], None)
            return skip

    def read_workflows(self, workflow_ids: list[str]) -> tuple[list[Record], list[Record]]:
        """The records of these workflows (as load() gives them), events prefetched."""
        def read(conn: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT id, rec::text FROM workflows WHERE id = ANY(%s) "
                            "ORDER BY seq, created_at, id", (workflow_ids,))
                wf_rows = cur.fetchall()
                cur.execute("SELECT key, rec::text FROM tasks WHERE workflow_id = ANY(%s)",
                            (workflow_ids,))
                return wf_rows, cur.fetchall()

        return self._trusted_records(*self.run(read))

    def read_workflow(self, workflow_id: str) -> tuple[Record, list[Record]] | None:
        """Another daemon's workflow as stored now (read-only: nothing set aside,
        nothing rebuilt); its tasks in task_ids order."""
        def read(conn: Any) -> tuple[Any, list[tuple[str]]]:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT rec::text FROM workflows WHERE id = %s", (workflow_id,))
                row = cur.fetchone()
                cur.execute("SELECT rec::text FROM tasks WHERE workflow_id = %s", (workflow_id,))
                return row, cur.fetchall()

        row, task_rows = self.run(read)
        if row is None:
            return None
        workflow = json.loads(row[0])
        tasks = {t.get("id"): t for t in (json.loads(text) for (text,) in task_rows)}
        if checks.check_workflow(workflow, workflow_id):
            return None
        trusted = {tid: t for tid, t in tasks.items() if not checks.check_task(t, t.get("key"))}
        # Not written yet (the first records come a batch after the workflow): queued,
        # as load() would rebuild them
        missing = [tid for tid in workflow["task_ids"] if tid not in trusted]
        trusted.update((t["id"], t) for t in first_task_records(workflow, missing))
        return workflow, [trusted[tid] for tid in workflow["task_ids"]]

    # -- the lease thread -----------------------------------------------------------

    def start_leases(self, *, on_adopt: Callable[[list[Record], list[Record]], None],
                     on_lost: Callable[[set[str]], None], endpoint: str | None = None,
                     on_request: Callable[[str, str], dict[str, Any]] | None = None,
                     on_reopened: Callable[[str], None] | None = None) -> None:
        """The lease thread; ``on_request(workflow id, action)`` applies a peer's
        cancel or retry with the engine and returns the outcome (never raises);
        ``on_reopened(workflow id)``: a peer took a finished workflow up again
        (the engine drops its copy)."""
        self._endpoint = endpoint
        self._on_request = on_request
        self._on_reopened = on_reopened
        self._listener.start()
        self._thread = threading.Thread(target=self._lease_loop, args=(on_adopt, on_lost),
                                        name="pg-leases", daemon=True)
        self._thread.start()

    def _lease_loop(self, on_adopt: Callable, on_lost: Callable) -> None:
        interval = max(0.05, self.lease_s / 3)
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = schema.connect(self.dsn_for_leases,
                                          idle_in_transaction_s=self.idle_in_transaction_s)
                    leases.listen(conn)
                wait = self._round(conn, on_adopt, on_lost)
                self._reopened(leases.wait_for_notify(conn, min(interval, wait)))
            except (schema.DatabaseUnavailable, self.session.pg.OperationalError) as e:
                log.warning("lease round failed (%s); trying again", " ".join(str(e).split()))
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(interval)
            except Exception:  # keep the leases renewed: a bug must not fence the daemon
                log.exception("lease round failed")
                self._stop.wait(interval)
        if conn is not None:
            conn.close()

    def _reopened(self, payloads: list[str]) -> None:
        for payload in payloads:
            wid = payload.removeprefix(peering.REOPENED)
            if wid != payload and self._on_reopened is not None:
                with self._held_lock:  # its claimer's own notification: it holds it
                    mine = wid in self.held
                if not mine:
                    self._on_reopened(wid)

    @property
    def dsn_for_leases(self) -> str:
        return self.session.dsn

    def _round(self, conn: Any, on_adopt: Callable, on_lost: Callable) -> float:
        """One heartbeat and claim; the seconds until the next round is due at the
        latest (a peer's lease running out sooner: just after it runs out)."""
        with self._held_lock:
            before = dict(self.held)
        still = leases.heartbeat(conn, self.daemon_id, self.lease_s, pid=os.getpid(),
                                 endpoint=self._endpoint)
        with self._held_lock:  # held before and now (not finished meanwhile), not renewed
            lost = {wid for wid, epoch in before.items()
                    if still.get(wid) != epoch and self.held.get(wid) == epoch}
            for wid in lost:
                del self.held[wid]
            self.lost |= lost
        if lost:
            log.error("lost the lease of workflows %s (another daemon has them now)",
                      ", ".join(sorted(lost)))
            on_lost(lost)
            return 0.0
        if self._stop.is_set():
            return 0.0
        got = leases.claim(conn, self.daemon_id, self.lease_s, CLAIM_BATCH)
        if got:
            with self._held_lock:
                self.held.update(got)
            workflows, tasks = self.read_workflows(sorted(got))
            log.info("adopting %d workflows: %s", len(workflows), ", ".join(sorted(got)))
            # Its own thread: recovery may wait for old task processes to die, and the
            # heartbeats must go on meanwhile (or this daemon's own leases run out).
            threading.Thread(target=on_adopt, args=(workflows, tasks), name="pg-adopt",
                             daemon=True).start()
        if self._on_request is not None:
            for request in peering.take(conn, self.daemon_id):  # its own thread, as adoption
                threading.Thread(target=self._serve, args=request, name="pg-request",
                                 daemon=True).start()
        if len(got) >= CLAIM_BATCH:
            return 0.0  # more may be free: claim again now
        expiry = leases.next_expiry(conn, self.daemon_id)
        return float("inf") if expiry is None else max(EXPIRY_MARGIN_S, expiry + EXPIRY_MARGIN_S)

    # -- another daemon's workflows (postgres_peers.py) ------------------------------

    def _events_written(self, workflow_ids: set[str]) -> None:
        # Not in the batch's transaction: that one holds its leases FOR SHARE (a
        # peer's claim skips them), so it stays as short as it was
        try:
            self.run(lambda conn: peering.notify_events(conn, workflow_ids))
        except schema.DatabaseUnavailable:
            pass  # the long polls look again by themselves (postgres_peers.RECHECK_S)

    def _serve(self, request_id: int, workflow_id: str, action: str) -> None:
        outcome = self._on_request(workflow_id, action)
        try:
            self.run(lambda conn: peering.finish(conn, request_id, outcome))
        except schema.DatabaseUnavailable as e:  # the receiver answers 503 after its wait
            log.warning("could not store the outcome of request %d: %s", request_id, e.message)

    def peer_workflows(self, known: set[str]) -> list[tuple[Record, dict[str, int]]]:
        found = self.run(lambda conn: peering.peer_workflows(conn, known))
        return [(w, counts) for w, counts in found if not checks.check_workflow(w, w.get("id"))]

    def peer_events(self, workflow_id: str, after: int, limit: int,
                    timeout: float) -> list[Event] | None:
        deadline = time.monotonic() + timeout
        with self._listener.watch(workflow_id) as watch:  # before the read: none is missed
            while True:
                got = self.run(lambda conn: peering.events(conn, workflow_id, after, limit))
                if got is None:
                    return None
                found, finished = got
                remaining = deadline - time.monotonic()
                if found or finished or remaining <= 0:
                    return found
                watch.wait(min(remaining, peering.RECHECK_S))

    def ask_owner(self, workflow_id: str, action: str, timeout: float) -> dict[str, Any] | None:
        request_id = self.run(lambda conn: peering.request(conn, self.daemon_id, workflow_id,
                                                         action))
        if request_id is None:
            return None
        deadline = time.monotonic() + timeout
        with self._listener.watch(str(request_id)) as watch:
            while True:
                state, outcome = self.run(lambda conn: peering.outcome(conn, request_id,
                                                                     self.daemon_id))
                if state == "done" and outcome is not None:
                    return outcome
                if state == "orphaned":
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                watch.wait(min(remaining, peering.RECHECK_S))
        abandoned = self.run(lambda conn: peering.abandon(conn, request_id))
        raise ServiceUnavailable(
            f"the daemon running workflow {workflow_id} did not answer the {action} in "
            f"{timeout:g}s" + ("" if abandoned else " (it may still apply it)"),
            hint="`provisioning workflow status` shows whether it did; try again")

    def claim_workflow(self, workflow_id: str) -> tuple[list[Record], list[Record]] | None:
        with self._held_lock:
            epoch = self.run(lambda conn: peering.claim_one(conn, self.daemon_id, workflow_id,
                                                          self.lease_s))
            if epoch is None:
                return None
            self.held[workflow_id] = epoch
            self.lost.discard(workflow_id)
        log.info("claimed workflow %s to apply a call about it", workflow_id)
        return self.read_workflows([workflow_id])

    def release_workflow(self, workflow_id: str) -> None:
        with self._held_lock:
            self.held.pop(workflow_id, None)
            self.run(lambda conn: peering.give_back(conn, self.daemon_id, workflow_id))

    def peers(self) -> list[dict[str, Any]]:
        """Every daemon of the database and its last heartbeat (for /health)."""
        return self.run(leases.peers)

    def close(self) -> None:
        """Stop the lease thread, hand back what this daemon holds, close."""
        self._stop.set()
        self._listener.close()
        if self._thread is not None:
            try:  # wake the lease thread from its LISTEN wait (peers do one round)
                self.run(lambda conn: conn.execute("SELECT pg_notify(%s, 'stop')",
                                                   (leases.CHANNEL,)))
            except schema.DatabaseUnavailable:
                pass  # it is in its reconnect wait: woken by _stop
            self._thread.join(timeout=10)
        with self._held_lock:
            held, self.held = list(self.held), {}
        if held:
            try:
                self.run(lambda conn: leases.release(conn, self.daemon_id, held))
            except schema.DatabaseUnavailable as e:  # they expire by themselves
                log.warning("could not release leases: %s", e.message)
        super().close()
