"""Workflow leases on a real PostgreSQL (provisioning/store/postgres_leases.py):
claims by several daemons at once never overlap, an expired lease is taken
over with a higher epoch and the old owner is fenced out, heartbeats renew,
NOTIFY wakes a waiting daemon, schema version 2 adds the table.

Every test gets a database of its own (tests/pg_fixture.py); without a
PostgreSQL for the tests they skip with the reason.
"""

from __future__ import annotations

import threading
import time

import pytest

from provisioning.polling import wait_until
from tests.pg_fixture import fresh_database

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
from provisioning.store import postgres_leases as leases  # noqa: E402 - needs psycopg
from provisioning.store import postgres_schema as schema  # noqa: E402 - needs psycopg


@pytest.fixture
def dsn():
    dsn, drop = fresh_database()
    conn = schema.connect(dsn)
    schema.check_version(conn)  # an empty database: the current schema
    conn.close()
    yield dsn
    drop()


@pytest.fixture
def connect(dsn):
    opened = []

    def make():
        conn = schema.connect(dsn)
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.close()


def offer_free(conn, n: int) -> list[str]:
    ids = [f"wf-{i:04d}" for i in range(n)]
    with conn.transaction(), conn.cursor() as cur:
        for wid in ids:
            leases.offer(cur, wid, None, 0)
    return ids


def test_schema_version_2_adds_the_lease_table_and_migrates_a_version_1_database(connect):
    conn = connect()
    assert schema.current_version(conn) == schema.SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM workflow_leases").fetchone() == (0,)
    conn.execute("DROP TABLE workflow_requests")  # back to what version 1 had
    conn.execute("DROP TABLE workflow_leases")
    conn.execute("UPDATE schema_version SET version = 1")
    with pytest.raises(schema.SchemaMismatch,
                       match=f"version 1, this orchestrator needs version {schema.SCHEMA_VERSION}"):
        schema.check_version(conn)
    assert schema.migrate(conn) == (1, schema.SCHEMA_VERSION)
    assert conn.execute("SELECT count(*) FROM workflow_leases").fetchone() == (0,)


def test_three_daemons_claiming_at_once_never_get_the_same_workflow(connect):
    ids = offer_free(connect(), 200)
    got: dict[str, list[str]] = {}
    start = threading.Barrier(3)

    def daemon(me: str) -> None:
        conn = connect()
        mine = got.setdefault(me, [])
        start.wait()
        while batch := leases.claim(conn, me, 60, 7):
            assert set(batch.values()) == {1}  # first claim of each: epoch 1
            mine += batch

    threads = [threading.Thread(target=daemon, args=(f"d{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [wid for mine in got.values() for wid in mine]
    assert sorted(claimed) == ids  # every workflow once: none twice, none left
    owners = connect().execute("SELECT owner, count(*) FROM workflow_leases GROUP BY owner")
    assert {o: n for o, n in owners.fetchall()} == {me: len(m) for me, m in got.items() if m}


def test_an_expired_lease_is_taken_over_and_the_old_owner_is_fenced(connect):
    a, b = connect(), connect()
    offer_free(a, 1)
    held_a = leases.claim(a, "A", 0.3, 10)
    assert held_a == {"wf-0000": 1}
    assert leases.claim(b, "B", 60, 10) == {}  # A's lease runs
    with a.transaction(), a.cursor() as cur:
        assert leases.fenced_out(cur, "A", held_a, ["wf-0000"]) == set()
    held_b: dict[str, int] = {}
    assert wait_until(lambda: held_b.update(leases.claim(b, "B", 60, 10)) or held_b, 10)
    assert held_b == {"wf-0000": 2}  # a new epoch: the fencing token grew
    assert leases.heartbeat(a, "A", 60, pid=1) == {}  # A learns it lost it...
    with a.transaction(), a.cursor() as cur:  # ...and its late writes are refused
        assert leases.fenced_out(cur, "A", held_a, ["wf-0000"]) == {"wf-0000"}
        assert leases.fenced_out(cur, "A", held_b, ["wf-0000"]) == {"wf-0000"}
    with b.transaction(), b.cursor() as cur:
        assert leases.fenced_out(cur, "B", held_b, ["wf-0000"]) == set()
        assert leases.fenced_out(cur, "B", held_a, ["wf-0000"]) == {"wf-0000"}  # old epoch


def test_a_heartbeat_renews_the_leases_and_shows_the_daemon_to_its_peers(connect):
    a, b = connect(), connect()
    offer_free(a, 3)
    assert len(leases.claim(a, "A", 2, 10)) == 3
    assert leases.heartbeat(a, "A", 600, pid=11, endpoint="http://127.0.0.1:1") == {
        "wf-0000": 1, "wf-0001": 1, "wf-0002": 1}
    left = b.execute("SELECT min(expires_at - now()) FROM workflow_leases").fetchone()[0]
    assert left.total_seconds() > 500  # renewed to the new lease, not the first 2 s
    leases.heartbeat(b, "B", 600, pid=22)
    peers = leases.peers(b)
    assert [(p["id"], p["pid"], p["endpoint"]) for p in peers] == [
        ("A", 11, "http://127.0.0.1:1"), ("B", 22, None)]
    assert all(0 <= p["heartbeat_age_s"] < 30 for p in peers)


def test_release_and_offer_wake_a_waiting_daemon_without_polling(connect):
    a, waiter, b = connect(), connect(), connect()
    offer_free(a, 2)
    leases.claim(a, "A", 600, 10)
    leases.listen(waiter)
    t0 = time.monotonic()
    assert leases.wait_for_notify(waiter, 0.3) == []  # nothing: back after the timeout
    assert 0.25 <= time.monotonic() - t0 < 5
    assert leases.claim(b, "B", 600, 10) == {}
    got: list[str] = []
    t = threading.Thread(target=lambda: got.extend(leases.wait_for_notify(waiter, 30)))
    t.start()
    assert leases.release(a, "A", ["wf-0001"]) == 1
    t.join(30)
    assert got == ["release"]
    assert leases.claim(b, "B", 600, 10) == {"wf-0001": 2}
    with a.transaction(), a.cursor() as cur:
        leases.offer(cur, "wf-new", "A", 600)
    assert leases.wait_for_notify(waiter, 30) == ["offer"]


def test_finish_drops_only_the_owners_lease(connect):
    a = connect()
    offer_free(a, 1)
    leases.claim(a, "A", 600, 10)
    with a.transaction(), a.cursor() as cur:
        assert leases.finish(cur, "B", "wf-0000") is False  # not B's to finish
        assert leases.finish(cur, "A", "wf-0000") is True
    assert a.execute("SELECT count(*) FROM workflow_leases").fetchone() == (0,)


def test_a_restarted_daemon_takes_its_own_leases_back_at_once(connect):
    a = connect()
    offer_free(a, 2)
    assert leases.claim(a, "A", 600, 10) == {"wf-0000": 1, "wf-0001": 1}
    assert leases.claim(a, "A", 600, 10) == {}  # a running daemon does not re-claim its own
    assert leases.claim(connect(), "B", 600, 10) == {}
    assert leases.claim(a, "A", 600, 10, mine_too=True) == {"wf-0000": 2, "wf-0001": 2}
