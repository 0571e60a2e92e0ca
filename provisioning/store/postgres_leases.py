"""Workflow leases: the unit one daemon of several owns (DESIGN.md 15).

The building block for several daemons on one PostgreSQL database (README
"Running several orchestrators"; not yet wired into the daemon, which still
takes the one-daemon lock of postgres_session.py). A daemon owns whole
WORKFLOWS, not single tasks: one row of ``workflow_leases`` per unfinished
workflow, (workflow id, owner daemon id, expires_at, epoch; schema version 2,
postgres_schema.py).

- ``offer`` puts the row in with the submission's own transaction, owned by
  the daemon that accepted it (it runs what it accepted, until it dies).
- ``claim`` takes up to ``limit`` workflows that are unowned or whose lease
  expired, in ONE statement (``FOR UPDATE SKIP LOCKED``): two daemons
  claiming at once never get the same workflow, and neither waits on the
  other's rows. Every claim adds one to ``epoch``, the fencing token.
- ``heartbeat`` renews this daemon's row in ``daemons`` and all its leases
  in one transaction, and returns the workflows it still holds: one it
  thought it held and is missing was taken over (its lease expired while
  the daemon was stalled or cut off) and it must stop running its tasks.
- ``fenced_out`` is the check a write does, in the write's transaction:
  the workflows among those written that this daemon no longer holds under
  the epoch it claimed them with (a late write of a fenced daemon is refused,
  so the new owner's records are never overwritten).
- ``release`` hands workflows back (a clean shutdown), ``finish`` drops the
  row of a finished workflow; both NOTIFY ``CHANNEL``, as does ``offer``,
  so idle daemons wake (``wait_for_notify``) instead of polling.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

# NOTIFY payload: "offer", "release", "finish", "stop", "request" (a peer's cancel or
# retry, postgres_peers.py) or "reopened:<workflow id>"
CHANNEL = "provisioning_work"

CLAIM = """
WITH free AS (
    SELECT workflow_id FROM workflow_leases
    WHERE owner IS NULL OR expires_at < now() OR (%(mine_too)s AND owner = %(me)s)
    ORDER BY expires_at, workflow_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
UPDATE workflow_leases l
SET owner = %(me)s, expires_at = now() + make_interval(secs => %(lease)s), epoch = l.epoch + 1
FROM free WHERE l.workflow_id = free.workflow_id
RETURNING l.workflow_id, l.epoch"""

RENEW = """UPDATE workflow_leases SET expires_at = now() + make_interval(secs => %(lease)s)
WHERE owner = %(me)s AND expires_at >= now() RETURNING workflow_id, epoch"""

BEAT = """INSERT INTO daemons (id, host, pid, endpoint) VALUES (%(me)s, %(host)s, %(pid)s, %(ep)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), endpoint = EXCLUDED.endpoint"""


def offer(cur: Any, workflow_id: str, owner: str | None, lease_s: float) -> None:
    """The lease row of a new workflow, in the caller's transaction (owned by
    ``owner``, or free for any daemon when None); wakes the idle daemons."""
    cur.execute("INSERT INTO workflow_leases (workflow_id, owner, expires_at, epoch) "
                "VALUES (%s, %s, now() + make_interval(secs => %s), %s) "
                "ON CONFLICT (workflow_id) DO NOTHING",
                (workflow_id, owner, lease_s, 1 if owner else 0))
    cur.execute("SELECT pg_notify(%s, 'offer')", (CHANNEL,))


def claim(conn: Any, me: str, lease_s: float, limit: int, *,
          mine_too: bool = False) -> dict[str, int]:
    """Free or expired workflows now owned by ``me``: {workflow id: epoch}.
    ``mine_too`` (a daemon's start): also those ``me`` held before a restart."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(CLAIM, {"me": me, "lease": lease_s, "limit": limit, "mine_too": mine_too})
        return dict(cur.fetchall())


def next_expiry(conn: Any, me: str) -> float | None:
    """Seconds until the first lease of another daemon runs out (by the database's
    clock; <= 0: already out), None when there is none: a peer's next claim is timed
    by it, so a dead owner's workflows are taken within the lease plus one round trip
    instead of up to a third of a lease later."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM min(expires_at) - now())::float8 "
                    "FROM workflow_leases WHERE owner <> %s", (me,))
        row = cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])


def heartbeat(conn: Any, me: str, lease_s: float, *, pid: int,
              endpoint: str | None = None) -> dict[str, int]:
    """This daemon's heartbeat and its leases renewed: {workflow id: epoch}
    it still holds (an expired lease is not renewed: it may be taken already)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(BEAT, {"me": me, "host": socket.gethostname(), "pid": pid, "ep": endpoint})
        cur.execute(RENEW, {"me": me, "lease": lease_s})
        return dict(cur.fetchall())


def fenced_out(cur: Any, me: str, held: dict[str, int], workflow_ids: Iterable[str]) -> set[str]:
    """Of ``workflow_ids``, those ``me`` does not hold (any more) under the
    epoch in ``held``; the rows it does hold are locked (FOR SHARE) until the
    caller's transaction ends, so no claim can slip in before its write."""
    wanted = sorted(set(workflow_ids))
    if not wanted:
        return set()
    cur.execute("SELECT workflow_id, epoch FROM workflow_leases WHERE workflow_id = ANY(%s) "
                "AND owner = %s AND expires_at >= now() FOR SHARE", (wanted, me))
    ok = {wid for wid, epoch in cur.fetchall() if held.get(wid) == epoch}
    return set(wanted) - ok


def release(conn: Any, me: str, workflow_ids: Iterable[str]) -> int:
    """Hand ``me``'s leases of these workflows back (any daemon may claim
    them at once); how many were released."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("UPDATE workflow_leases SET owner = NULL, expires_at = now() "
                    "WHERE owner = %s AND workflow_id = ANY(%s)", (me, list(workflow_ids)))
        n = cur.rowcount
        if n:
            cur.execute("SELECT pg_notify(%s, 'release')", (CHANNEL,))
        return n


def finish(cur: Any, me: str, workflow_id: str) -> bool:
    """Drop the lease of a workflow ``me`` finished, in the caller's transaction."""
    cur.execute("DELETE FROM workflow_leases WHERE workflow_id = %s AND owner = %s",
                (workflow_id, me))
    if cur.rowcount:
        cur.execute("SELECT pg_notify(%s, 'finish')", (CHANNEL,))
    return cur.rowcount > 0


def peers(conn: Any) -> list[dict[str, Any]]:
    """Every daemon's row, for /health: id, host, pid, endpoint, seconds since
    its last heartbeat (by the database's clock, the one the leases use)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT id, host, pid, endpoint, "
                    "extract(epoch FROM now() - heartbeat_at)::float8 FROM daemons ORDER BY id")
        return [{"id": r[0], "host": r[1], "pid": r[2], "endpoint": r[3],
                 "heartbeat_age_s": round(r[4], 3)} for r in cur.fetchall()]


def listen(conn: Any) -> None:
    """Subscribe ``conn`` (an autocommit connection of its own) to CHANNEL."""
    conn.execute(f"LISTEN {CHANNEL}")


def wait_for_notify(conn: Any, timeout: float) -> list[str]:
    """Block until a NOTIFY on CHANNEL arrives or ``timeout`` passes (the lease
    check interval: expired leases have no NOTIFY); the payloads received."""
    return [n.payload for n in conn.notifies(timeout=timeout, stop_after=1)]
