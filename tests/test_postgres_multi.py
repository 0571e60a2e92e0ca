"""Several real daemons on one PostgreSQL database (storage.postgres_shared):
each runs the workflows it accepted under a workflow lease
(provisioning/store/postgres_leases.py); every task runs exactly once;
after kill -9 of the daemon running a workflow, another daemon takes it
over within the lease plus a bound, and no task recorded succeeded before
the kill runs again.

Every test gets a database of its own (tests/pg_fixture.py); without a
PostgreSQL for the tests they skip with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.daemon_fixture import start_daemon
from tests.pg_fixture import fresh_database
from tests.test_reliability_crash import TASK_SCRIPT, effect_counts

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

LEASE_S = 2.0
TAKEOVER_BOUND_S = 8.0  # beyond the lease: a lease round, the adoption, 2 loaded cores


@pytest.fixture
def dsn():
    dsn, drop = fresh_database()
    yield dsn
    drop()


def rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def daemons(tmp_path: Path, dsn: str, n: int, lease: float = LEASE_S) -> list:
    out = []
    for i in range(n):
        base = tmp_path / f"d{i}"
        base.mkdir(exist_ok=True)
        out.append(start_daemon(base, **{
            "storage": {"data_dir": str(base / "data"), "backend": "postgres",
                        "postgres_dsn": dsn, "postgres_shared": True,
                        "postgres_lease_seconds": lease},
            "executor": {"max_concurrent_tasks": 8, "checkpoint_interval_seconds": 0,
                         "shutdown_grace_seconds": 5, "kill_grace_seconds": 1}}))
    return out


def spec(name: str, script: Path, effects: Path, n: int, pause: str = "0",
         chain: bool = False) -> dict:
    tasks = []
    for i in range(n):
        tid = f"{name}-{i:03d}"
        tasks.append({"id": tid, "op": "shell.run",
                      "params": {"argv": ["/bin/sh", str(script), tid, str(effects), pause,
                                          "ck" if i % 2 else "plain"]},
                      "depends_on": [f"{name}-{i - 4:03d}"] if chain and i >= 4 else []})
    return {"workflow": {"name": name, "max_parallel": 4}, "tasks": tasks}


@pytest.mark.parametrize("count", [2, 3])
def test_several_daemons_on_one_database_run_every_task_exactly_once(tmp_path, dsn, count):
    script, effects = tmp_path / "task.sh", tmp_path / "effects.log"
    script.write_text(TASK_SCRIPT)
    ds = daemons(tmp_path, dsn, count)
    per = 200 // (2 * count) + 1
    submitted = []
    for i in range(2 * count):  # round robin: each daemon runs what it accepted
        d = ds[i % count]
        status, body = d.request("POST", "/workflows", spec(f"w{i}", script, effects, per))
        assert status == 202, body
        submitted.append((d, body["workflow_id"]))
    for d, wid in submitted:
        assert d.wait_workflow(wid, timeout=180)["status"] == "succeeded"
    for i, (_, wid) in enumerate(submitted):  # any daemon answers about any workflow
        status, view = ds[(i + 1) % count].request("GET", f"/workflows/{wid}")
        assert status == 200, view
        assert view["status"] == "succeeded" and view["counts"]["succeeded"] == per
        assert [t["status"] for t in view["tasks"]] == ["succeeded"] * per
    counts = effect_counts(effects)
    assert len(counts) == 2 * count * per >= 200
    assert set(counts.values()) == {1}, {t: n for t, n in counts.items() if n != 1}
    assert len(rows(dsn, "SELECT id FROM daemons")) == count
    health = ds[0].health()
    assert health["storage_backend"] == "postgres"
    ids = {d.health()["daemon_id"] for d in ds}
    assert len(ids) == count and health["daemon_id"] in ids
    assert {p["id"] for p in health["peers"]} == ids  # its peers, with their heartbeats
    assert all(p["heartbeat_age_s"] < LEASE_S + 5 for p in health["peers"])
    assert rows(dsn, "SELECT * FROM workflow_leases") == []  # finished: leases given up
    for d in ds:
        d.stop()


def test_kill_9_of_the_owner_another_daemon_finishes_its_workflow(tmp_path, dsn):
    script, effects = tmp_path / "task.sh", tmp_path / "effects.log"
    script.write_text(TASK_SCRIPT)
    a, b = daemons(tmp_path, dsn, 2)
    status, body = a.request("POST", "/workflows",
                             spec("w", script, effects, 60, pause="0.1", chain=True))
    assert status == 202, body
    wid = body["workflow_id"]
    wait_for(lambda: sum(effect_counts(effects).values()) >= 12, timeout=60, interval=0.01,
             what="a dozen task runs")
    a.kill()
    killed_at = time.monotonic()
    succeeded_at_kill = {json.loads(r[0])["id"] for r in rows(
        dsn, f"SELECT rec::text FROM tasks WHERE workflow_id = '{wid}' "
             "AND status = 'succeeded'")}
    assert succeeded_at_kill and len(succeeded_at_kill) < 60
    (owner,), = rows(dsn, f"SELECT owner FROM workflow_leases WHERE workflow_id = '{wid}'")
    wait_for(lambda: rows(dsn, f"SELECT owner FROM workflow_leases WHERE workflow_id = '{wid}' "
                               f"AND owner <> '{owner}'"),
             timeout=LEASE_S + TAKEOVER_BOUND_S, interval=0.05, what="another daemon's lease")
    took = time.monotonic() - killed_at
    assert took <= LEASE_S + TAKEOVER_BOUND_S
    assert b.wait_workflow(wid, timeout=120)["status"] == "succeeded"
    counts = effect_counts(effects)
    assert len(counts) == 60 and all(n <= 2 for n in counts.values()), counts
    again = {t: counts[t] for t in succeeded_at_kill if counts[t] != 1}
    assert not again, f"tasks recorded succeeded before the kill ran again: {again}"
    b.stop()


def test_a_daemon_restarted_after_kill_9_takes_its_workflow_back_without_waiting(tmp_path, dsn):
    script, effects = tmp_path / "task.sh", tmp_path / "effects.log"
    script.write_text(TASK_SCRIPT)
    (a,) = daemons(tmp_path, dsn, 1, lease=600)  # waiting the lease out would time out
    status, body = a.request("POST", "/workflows",
                             spec("w", script, effects, 30, pause="0.05", chain=True))
    assert status == 202, body
    wid = body["workflow_id"]
    wait_for(lambda: sum(effect_counts(effects).values()) >= 6, timeout=60, interval=0.01,
             what="a few task runs")
    a.kill()
    (again,) = daemons(tmp_path, dsn, 1, lease=600)  # the same data dir: the same daemon id
    assert again.wait_workflow(wid, timeout=60)["status"] == "succeeded"
    counts = effect_counts(effects)
    assert len(counts) == 30 and all(n <= 2 for n in counts.values()), counts
    assert rows(dsn, "SELECT count(*) FROM daemons") == [(1,)]
    again.stop()


def test_a_stalled_daemon_whose_lease_ran_out_is_fenced_and_stops(tmp_path, dsn):
    script, effects = tmp_path / "task.sh", tmp_path / "effects.log"
    script.write_text(TASK_SCRIPT)
    a, b = daemons(tmp_path, dsn, 2)
    status, body = a.request("POST", "/workflows",
                             spec("w", script, effects, 40, pause="0.1", chain=True))
    assert status == 202, body
    wid = body["workflow_id"]
    wait_for(lambda: sum(effect_counts(effects).values()) >= 8, timeout=60, interval=0.01,
             what="a few task runs")
    (owner,), = rows(dsn, f"SELECT owner FROM workflow_leases WHERE workflow_id = '{wid}'")
    os.kill(a.pid, signal.SIGSTOP)  # stalled (or cut off): no heartbeat
    try:
        wait_for(lambda: rows(dsn, f"SELECT 1 FROM workflow_leases WHERE workflow_id = '{wid}' "
                                   f"AND owner <> '{owner}'"),
                 timeout=LEASE_S + TAKEOVER_BOUND_S, interval=0.05, what="the takeover")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    wait_for(lambda: not a.alive(), timeout=30, interval=0.05, what="the fenced daemon to stop")
    assert "lost workflows" in (a.data_dir / "orchestrator.log").read_text()
    view = b.wait_workflow(wid, timeout=120)
    assert view["status"] == "succeeded", [(t["id"], t["status"], t["error"], t["message"])
                                           for t in view["tasks"] if t["status"] != "succeeded"]
    statuses = {r[0] for r in rows(dsn, f"SELECT status FROM tasks WHERE workflow_id = '{wid}'")}
    assert statuses == {"succeeded"}  # the fenced daemon overwrote none of the new owner's
    counts = effect_counts(effects)
    assert len(counts) == 40 and all(n <= 2 for n in counts.values()), counts
    b.stop()
