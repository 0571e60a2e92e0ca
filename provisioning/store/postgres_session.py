"""The PostgreSQL backend's one connection: used under a lock, reconnected
with backoff, and the database's one-daemon lock (store/postgres.py).

``Session.run(work)`` calls ``work(connection)`` under a lock (the Store
contract lets any thread call). When the connection breaks (database
restarted, network lost) the call raises DatabaseUnavailable (HTTP 503) and
later calls reconnect, at most once per backoff step (0.5 s doubling to
10 s), so a database that is down is not hammered.

``Session.take_daemon_lock`` takes a session advisory lock that the
connection then holds for life: one daemon per database. A second one is
refused, naming the first (host, pid, since when), after looking again for
a few seconds (a daemon killed a moment ago holds it until its server
process sees the connection gone). If the connection breaks, the lock goes
with it; it is taken again on reconnecting, and if another daemon took the
database over meanwhile, this session never runs anything again (every call
raises DatabaseUnavailable) and calls ``on_fenced`` once (the daemon stops
itself): fencing at the store.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from provisioning.polling import wait_until
from provisioning.store import postgres_schema as schema

log = logging.getLogger("provisioning.store")

T = TypeVar("T")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 10.0
DAEMON_LOCK = 0x70726F77  # pg_try_advisory_lock key held by the database's one daemon
LOCK_WAIT_S = 5.0  # how long take_daemon_lock looks for that lock to be free


class Session:
    def __init__(self, dsn: str, *, on_fenced: Callable[[], None] | None = None,
                 idle_in_transaction_s: float | None = None):
        """Connects, and checks (or, in an empty database, creates) the schema:
        raises DatabaseUnavailable or SchemaMismatch, never a driver's error.
        ``on_fenced`` is called once when another daemon is found to have taken
        the database over (the daemon stops itself: it must not start tasks).
        ``idle_in_transaction_s``: as postgres_schema.connect, on every connection."""
        self.pg = schema.require_driver()
        self.dsn = dsn
        self.where = schema.describe(dsn)
        self._lock = threading.RLock()
        self._next_try = 0.0
        self._backoff = BACKOFF_FIRST_S
        self._lost_logged = False
        self.exclusive = False  # holds the daemon lock: take it again on reconnect
        self._taken_over: str | None = None
        self._refused: schema.DatabaseUnavailable | None = None
        self._on_fenced = on_fenced
        self._idle_s = idle_in_transaction_s
        self._conn: Any = schema.connect(dsn, idle_in_transaction_s=idle_in_transaction_s)
        try:
            schema.check_version(self._conn)
        except BaseException:
            self._conn.close()
            raise

    def run(self, work: Callable[[Any], T]) -> T:
        """``work(connection)`` under the lock; a lost connection becomes
        DatabaseUnavailable (and the next call reconnects)."""
        with self._lock:
            conn = self._connection()
            try:
                return work(conn)
            except self.pg.OperationalError as e:
                if not (conn.closed or conn.broken):
                    raise
                self._drop(conn, e)
                raise schema.DatabaseUnavailable(
                    f"lost the PostgreSQL database at {self.where}: "
                    f"{' '.join(str(e).split())}", hint="retry shortly") from None

    def take_daemon_lock(self) -> None:
        """The one-daemon lock, or DatabaseUnavailable naming who has it."""
        if self.exclusive:
            return
        if not wait_until(self._try_lock, LOCK_WAIT_S, first_delay=0.05, max_delay=0.5):
            raise self._refused or schema.DatabaseUnavailable(
                f"cannot take the PostgreSQL database at {self.where}")
        self.exclusive = True

    def close(self) -> None:
        """Close the connection (and so release the daemon lock); a later call
        opens a new one, without the lock: this daemon is done with the database."""
        with self._lock:
            conn, self._conn = self._conn, None
            self._next_try, self.exclusive = 0.0, False
        if conn is not None:
            conn.close()

    # -- inside --------------------------------------------------------------------

    def _connection(self) -> Any:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._taken_over:
            raise schema.DatabaseUnavailable(self._taken_over)
        now = time.monotonic()
        if now < self._next_try:
            raise schema.DatabaseUnavailable(
                f"the PostgreSQL database at {self.where} is unavailable; reconnecting "
                f"in {self._next_try - now:.1f}s", hint="retry shortly")
        try:
            self._conn = schema.connect(self.dsn, idle_in_transaction_s=self._idle_s)
        except schema.DatabaseUnavailable:
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            raise
        if self.exclusive:
            self._relock(self._conn)
        if self._lost_logged:
            log.warning("reconnected to the PostgreSQL database at %s", self.where)
        self._backoff, self._next_try, self._lost_logged = BACKOFF_FIRST_S, 0.0, False
        return self._conn

    def _drop(self, conn: Any, error: Exception) -> None:
        if not self._lost_logged:
            log.error("lost the PostgreSQL database at %s (%s); reconnecting with backoff",
                      self.where, " ".join(str(error).split()))
            self._lost_logged = True
        try:
            conn.close()
        except Exception:  # already broken: nothing more to release
            pass
        self._conn = None

    def _try_lock(self) -> bool:
        try:
            self.run(self._lock_on)
        except schema.DatabaseUnavailable as e:
            self._refused = e
            return False
        return True

    def _relock(self, conn: Any) -> None:
        """After a reconnect: the daemon lock again, or stop for good."""
        try:
            self._lock_on(conn)
        except schema.DatabaseUnavailable as e:
            self._taken_over = (f"{e.message}; it took the database over while this daemon "
                                "was cut off: this daemon writes nothing more (restart it)")
            log.error("%s", self._taken_over)
            conn.close()
            self._conn = None
            if self._on_fenced is not None:
                self._on_fenced()
            raise schema.DatabaseUnavailable(self._taken_over) from None

    def _lock_on(self, conn: Any) -> None:
        """The lock on ``conn`` and this daemon's row in ``daemons``."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (DAEMON_LOCK,))
            if not cur.fetchone()[0]:
                cur.execute("SELECT host, pid, started_at FROM daemons "
                            "ORDER BY heartbeat_at DESC LIMIT 1")
                row = cur.fetchone()
                holder = (f"pid {row[1]} on {row[0]}, since {row[2]:%Y-%m-%d %H:%M:%S %Z}"
                          if row else "unknown")
                raise schema.DatabaseUnavailable(
                    f"another orchestrator uses the PostgreSQL database at {self.where} "
                    f"({holder})", hint="one daemon per database for now: stop it, or give "
                                        "this one a database of its own")
            host = socket.gethostname()
            cur.execute("DELETE FROM daemons")
            cur.execute("INSERT INTO daemons (id, host, pid) VALUES (%s, %s, %s)",
                        (f"{host}:{os.getpid()}", host, os.getpid()))
