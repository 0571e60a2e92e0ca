"""`provisioning-orchestrator --check` and `--migrate` on the PostgreSQL backend.

Both connect with storage.postgres_dsn (or libpq's PG* variables), say where
they connected without the password, and fail with one line (a
ProvisioningError: exit 1 unreachable, 2 misconfigured, 4 schema of another
version), never a traceback. The file backend has nothing to migrate.
"""

from __future__ import annotations

from provisioning.config import Config
from provisioning.errors import UsageError


def _schema():
    # lazy: psycopg and the postgres backend only where that backend is configured
    from provisioning.store import postgres_schema

    return postgres_schema


def check(config: Config) -> str:
    """Reachability and schema version, as one line; raises when not usable."""
    schema = _schema()
    dsn = config.storage.postgres_dsn
    conn = schema.connect(dsn)
    try:
        found = schema.current_version(conn)
    finally:
        conn.close()
    where = schema.describe(dsn)
    if found:
        schema.check_version_number(found)
    state = ("empty (the first daemon creates schema version "
             f"{schema.SCHEMA_VERSION})") if found == 0 else f"schema version {found}"
    return f"reachable at {where}, {state}; this version uses {schema.SCHEMA_VERSION}"


def migrate(config: Config) -> str:
    if config.storage.backend != "postgres":
        raise UsageError("--migrate is for storage.backend = \"postgres\"; the "
                         f"{config.storage.backend} backend has no schema to migrate")
    schema = _schema()
    conn = schema.connect(config.storage.postgres_dsn)
    try:
        before, after = schema.migrate(conn)
    finally:
        conn.close()
    where = schema.describe(config.storage.postgres_dsn)
    if before == after:
        return f"database at {where}: schema version {after}, up to date"
    return f"database at {where}: schema migrated from version {before} to {after}"
