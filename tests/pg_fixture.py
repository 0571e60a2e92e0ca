"""A fresh PostgreSQL database per test, on the server .ci/run starts.

.ci/run (start_test_postgres) runs a throwaway server and exports
PROVISIONING_TEST_PG_DSN (its admin DSN); ``fresh_database()`` creates a
database of its own for one test and returns its DSN and a function that
drops it. Without that variable (a run outside .ci/run, no PostgreSQL
installed) the postgres tests skip with the reason; CI always sets it.
PROVISIONING_TEST_PG_CTL/_DATA/_USER let a test stop and start the server.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Callable

import pytest

# Read at import: the autouse `isolated` fixture removes every PROVISIONING_* variable.
_ENV = {name: os.environ.get(f"PROVISIONING_TEST_PG_{name}") or ""
        for name in ("DSN", "CTL", "DATA", "USER")}
SKIP_REASON = ("no PostgreSQL for the tests: PROVISIONING_TEST_PG_DSN is unset (`bash .ci/run` "
               "starts one; it needs Debian's postgresql and `pip install -e '.[postgres]'`)")


def admin_dsn() -> str:
    dsn = _ENV["DSN"]
    if not dsn:
        pytest.skip(SKIP_REASON)
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    return dsn


def fresh_database() -> tuple[str, Callable[[], None]]:
    """(DSN of a new empty database, drop it)."""
    return create_database(admin_dsn())


def create_database(admin: str, prefix: str = "t") -> tuple[str, Callable[[], None]]:
    """(DSN of a new empty database on the server of ``admin``, drop it); no
    pytest in it: bench/postgres_tasks.py makes its databases with it too."""
    import psycopg  # lazy: only the postgres tests need the extra

    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return psycopg.conninfo.make_conninfo(admin, dbname=name), drop


def pg_ctl(action: str, *extra: str, timeout: float = 60) -> None:
    """Stop, start or restart the test server (pg_ctl ... -w), as its own user,
    with a clean environment (its processes must not carry a test's tmp dirs)."""
    ctl, data = _ENV["CTL"], _ENV["DATA"]
    if not ctl or not data:
        pytest.skip("PROVISIONING_TEST_PG_CTL/_DATA unset: cannot restart the test server")
    user = _ENV["USER"]
    log = os.path.join(os.path.dirname(data), "server.log")
    if action == "start":  # the options it was first started with (restart reuses them)
        extra = ("-o", _first_options(data), *extra)
    argv = [ctl, "-D", data, "-l", log, "-w", "-t", "60", *extra, action]
    if user:
        argv = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", user, "--", *argv]
    subprocess.run(argv, check=True, timeout=timeout, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}, cwd="/")


def _first_options(data: str) -> str:
    """The server options of postmaster.opts (port, socket dir...), less -D."""
    with open(os.path.join(data, "postmaster.opts")) as f:
        words = shlex.split(f.read())[1:]
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == "-D":
            skip = True
        else:
            out.append(word)
    return shlex.join(out)
