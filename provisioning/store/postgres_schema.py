"""The PostgreSQL backend's schema, its version, and connecting (DESIGN.md 15).

The schema is versioned: table ``schema_version`` holds one row, the version
the tables are at. ``MIGRATIONS[n]`` takes a database from version n to n+1;
``migrate`` applies the missing ones in one transaction each, under an
advisory lock, so two daemons or two ``--migrate`` runs never race.
``check_version`` is what a daemon does at start: an empty database gets the
current schema (as ``--migrate`` would), an older one is refused with "run
--migrate", a newer one (a newer daemon migrated it) is refused with both
versions in the message.

psycopg is imported here and in postgres.py only, so nothing else needs the
``provisioning[postgres]`` extra.
"""

from __future__ import annotations

import logging
from typing import Any

from provisioning.config import redact_dsn
from provisioning.errors import EXIT_INCOMPATIBLE, ConfigError, ProvisioningError

try:
    import psycopg
except ImportError:  # the extra is not installed: said when the backend is used
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("provisioning.store")

SCHEMA_VERSION = 3
CONNECT_TIMEOUT_S = 5
_MIGRATE_LOCK = 0x70726F76  # pg_advisory_xact_lock key: "prov"

# Records are kept whole in ``rec`` (type json: its text as given, NUL escapes
# allowed, no re-encoding); the columns beside it are what queries select on.
MIGRATIONS: dict[int, list[str]] = {
    0: [
        """CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)""",
        """CREATE TABLE workflows (
            id text PRIMARY KEY,
            seq bigint NOT NULL,
            created_at double precision,
            status text NOT NULL,
            rec json NOT NULL)""",
        """CREATE TABLE tasks (
            key text PRIMARY KEY,
            workflow_id text NOT NULL,
            status text NOT NULL,
            lease_owner text,
            lease_expires timestamptz,
            rec json NOT NULL)""",
        "CREATE INDEX tasks_by_workflow ON tasks (workflow_id)",
        """CREATE TABLE events (
            id bigserial PRIMARY KEY,
            workflow_id text NOT NULL,
            ev json NOT NULL)""",
        "CREATE INDEX events_by_workflow ON events (workflow_id, id)",
        """CREATE TABLE task_logs (
            key text PRIMARY KEY,
            workflow_id text NOT NULL,
            body bytea NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE quarantine (
            id bigserial PRIMARY KEY,
            kind text NOT NULL,
            key text NOT NULL,
            reason text NOT NULL,
            rec text NOT NULL,
            at timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE daemons (
            id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            endpoint text,
            started_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now())""",
        "CREATE SEQUENCE submission_seq",
    ],
    1: [  # which daemon owns which unfinished workflow (postgres_leases.py)
        """CREATE TABLE workflow_leases (
            workflow_id text PRIMARY KEY,
            owner text,
            expires_at timestamptz NOT NULL DEFAULT now(),
            epoch bigint NOT NULL DEFAULT 0)""",
        "CREATE INDEX workflow_leases_free ON workflow_leases (expires_at)",
    ],
    2: [  # cancel and retry of another daemon's workflow, applied by its owner (postgres_peers.py)
        """CREATE TABLE workflow_requests (
            id bigserial PRIMARY KEY,
            workflow_id text NOT NULL,
            action text NOT NULL,
            asked_by text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            taken_by text,
            done_at timestamptz,
            outcome json)""",
        "CREATE INDEX workflow_requests_open ON workflow_requests (workflow_id) "
        "WHERE done_at IS NULL",
    ],
}


class DatabaseUnavailable(ProvisioningError):
    """The database cannot be reached (down, refused, bad credentials). HTTP 503."""

    http_status = 503


class SchemaMismatch(ProvisioningError):
    """The database's schema is not the one this version reads. Exit 4."""

    exit_code = EXIT_INCOMPATIBLE


def require_driver() -> Any:
    if psycopg is None:
        raise ConfigError("storage.backend is \"postgres\" but psycopg is not installed",
                          hint="pip install 'provisioning[postgres]'")
    return psycopg


def describe(dsn: str) -> str:
    """Where a DSN points, for messages: host:port/dbname, never a password."""
    try:
        info = require_driver().conninfo.conninfo_to_dict(dsn)
    except Exception:
        return redact_dsn(dsn) or "(libpq defaults)"
    host = info.get("host") or info.get("hostaddr") or "(PGHOST or local socket)"
    port = info.get("port") or "(default port)"
    return f"{host}:{port}/{info.get('dbname') or '(default database)'}"


def connect(dsn: str, *, autocommit: bool = True,
            idle_in_transaction_s: float | None = None) -> Any:
    """A connection, or DatabaseUnavailable naming where (never the password).
    An empty DSN uses libpq's PG* environment variables alone. Autocommit:
    every use opens its own ``conn.transaction()``, none is left idle in one.
    ``idle_in_transaction_s``: the server ends the session when it sits that
    long inside a transaction (a daemon stalled mid-batch would otherwise hold
    its row locks, and its peers' claims skip locked rows: no takeover)."""
    pg = require_driver()
    try:
        conn = pg.connect(dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S,
                          application_name="provisioning-orchestrator")
        if idle_in_transaction_s is not None:
            conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                         (f"{max(1, round(idle_in_transaction_s * 1000))}ms",))
        return conn
    except pg.Error as e:
        reason = " ".join(str(e).split())
        raise DatabaseUnavailable(f"cannot reach the PostgreSQL database at {describe(dsn)}: "
                                  f"{reason}",
                                  hint="check storage.postgres_dsn (or PG* variables) and "
                                       "that the server runs") from None


def current_version(conn: Any) -> int:
    """The database's schema version; 0 when it has none (an empty database)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT max(version) FROM schema_version")
        row = cur.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(conn: Any) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION; (version before, version after).
    Refuses a database newer than this version knows."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        before = current_version(conn)
        _refuse_newer(before)
        for version in range(before, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version + 1,))
            log.info("database schema migrated from version %d to %d", version, version + 1)
    return before, SCHEMA_VERSION


def check_version(conn: Any) -> int:
    """At a daemon's start: create the schema in an empty database, refuse
    any other version than ours. Returns the version found."""
    found = current_version(conn)
    if found == 0:
        migrate(conn)
        return 0
    check_version_number(found)
    return found


def check_version_number(found: int) -> None:
    """Raise SchemaMismatch unless ``found`` is this version's schema."""
    _refuse_newer(found)
    if found < SCHEMA_VERSION:
        raise SchemaMismatch(f"the database schema is version {found}, this orchestrator "
                             f"needs version {SCHEMA_VERSION}",
                             hint="run `provisioning-orchestrator --migrate` (once, from "
                                  "the newer version), then start the daemons")


def _refuse_newer(found: int) -> None:
    if found > SCHEMA_VERSION:
        raise SchemaMismatch(f"the database schema is version {found}, newer than version "
                             f"{SCHEMA_VERSION} that this orchestrator knows",
                             hint="upgrade this host's provisioning to the version that "
                                  "migrated the database")
