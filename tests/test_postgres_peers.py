"""Any daemon answers any API call about any workflow (storage.postgres_shared;
provisioning/orchestrator/peers.py, provisioning/store/postgres_peers.py).

Two real daemons on one PostgreSQL database; a workflow submitted to A, then
everything asked through B: the task view, the events long poll (A's events,
blocking until a new one is committed), a task's log, the list, cancel (A's
engine stops the task), retry of a running workflow (409 with A's message),
retry of a finished one, cancel after kill -9 of A, and the CLI pointed at
B. At the store level: a long poll woken by NOTIFY alone, a call forwarded to
the owner and its outcome, a claim for one call and its undoing. Schema
version 3 adds the table the forwarded calls go through.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

from provisioning.paths import DataPaths
from tests.conftest import run_cli, wait_for
from tests.pg_fixture import fresh_database
from tests.test_postgres_multi import daemons, dsn, rows  # noqa: F401 - dsn is a fixture
from tests.test_store import make

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
from provisioning.store import postgres_leases as leases  # noqa: E402 - needs psycopg
from provisioning.store import postgres_peers as peering  # noqa: E402 - needs psycopg
from provisioning.store import postgres_schema as schema  # noqa: E402 - needs psycopg
from provisioning.store.postgres_shared import SharedPostgresStore  # noqa: E402 - psycopg

# $1 task id, $2 the test's dir. "fail*" fails until $2/fixed exists; "gate*"
# waits for $2/open (inside the task: the test itself never sleeps).
TASK = """#!/bin/sh
echo "hello from $1"
echo $$ > "$2/$1.pid"
case "$1" in
  fail*) [ -e "$2/fixed" ] || exit 1 ;;
  gate*) while [ ! -e "$2/open" ]; do sleep 0.05; done ;;
esac
echo "$1" >> "$2/effects"
"""


def workflow(tmp_path: Path, *ids: str) -> dict:
    script = tmp_path / "task.sh"
    script.write_text(TASK)
    return {"workflow": {"name": "peers", "max_parallel": 4},
            "tasks": [{"id": tid, "op": "shell.run",
                       "params": {"argv": ["/bin/sh", str(script), tid, str(tmp_path)]}}
                      for tid in ids]}


def submit(d, body: dict) -> str:
    status, got = d.request("POST", "/workflows", body)
    assert status == 202, got
    return got["workflow_id"]


def task_status(d, key: str) -> str | None:
    status, view = d.request("GET", f"/tasks/{key}")
    assert status == 200, view
    return view["status"]


def effects(tmp_path: Path) -> list[str]:
    path = tmp_path / "effects"
    return path.read_text().split() if path.exists() else []


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_reads_through_another_daemon_task_events_log_and_list(tmp_path, dsn):  # noqa: F811
    a, b = daemons(tmp_path, dsn, 2)
    wid = submit(a, workflow(tmp_path, "first", "gate"))
    wait_for(lambda: task_status(b, f"{wid}.first") == "succeeded", timeout=60,
             what="the first task succeeded, seen through B")
    wait_for(lambda: task_status(b, f"{wid}.gate") == "running", timeout=60,
             what="the gate task running, seen through B")
    status, view = b.request("GET", f"/tasks/{wid}.gate")
    assert view["key"] == f"{wid}.gate" and view["workflow_id"] == wid and view["op"] == "shell.run"
    status, missing = b.request("GET", f"/tasks/{wid}.nope")
    assert status == 404 and "has no task 'nope'" in missing["error"]

    status, text = b.request("GET", f"/tasks/{wid}.first/log")  # copied in when it finished
    assert status == 200 and "hello from first" in text, text
    status, text = b.request("GET", f"/tasks/{wid}.gate/log")  # runs on A: its log is there
    assert status == 200 and b.last_headers["X-Log-Size"] == "0"

    status, listed = b.request("GET", "/workflows")
    assert status == 200
    (mine,) = [v for v in listed["workflows"] if v["workflow_id"] == wid]
    assert mine["status"] == "running" and mine["counts"]["succeeded"] == 1
    assert mine["counts"]["running"] == 1 and "tasks" not in mine
    assert listed["counts"]["running"] == 1
    status, running = b.request("GET", "/workflows?status=running")
    assert [v["workflow_id"] for v in running["workflows"]] == [wid]

    status, theirs = b.request("GET", f"/workflows/{wid}/events?after=0")
    assert status == 200 and theirs["status"] == "running"
    status, ours = a.request("GET", f"/workflows/{wid}/events?after=0")
    strip = [(e["seq"], e["type"], e["task"], e["status"]) for e in theirs["events"]]
    assert strip == [(e["seq"], e["type"], e["task"], e["status"]) for e in ours["events"]]
    assert theirs["last"] == len(theirs["events"]) == ours["last"] >= 4

    got: dict = {}

    def long_poll() -> None:
        got["answer"] = b.request("GET", f"/workflows/{wid}/events?after={theirs['last']}"
                                         "&timeout=25", timeout=60)

    poller = threading.Thread(target=long_poll)
    poller.start()
    opened_at = time.time()
    (tmp_path / "open").write_text("")
    poller.join(timeout=60)
    assert not poller.is_alive()
    status, answer = got["answer"]
    assert status == 200 and answer["events"], answer  # woken by A's commit, not the timeout
    assert all(e["ts"] >= opened_at for e in answer["events"])  # it waited for the new ones
    assert answer["events"][0]["seq"] == theirs["last"] + 1
    assert b.wait_workflow(wid, timeout=60)["status"] == "succeeded"
    for d in (a, b):
        d.stop()


def test_cancel_and_retry_through_another_daemon(tmp_path, dsn):  # noqa: F811
    a, b = daemons(tmp_path, dsn, 2)
    wid = submit(a, workflow(tmp_path, "fail-1", "gate-1"))
    wait_for(lambda: task_status(b, f"{wid}.fail-1") == "failed", timeout=60, what="fail-1 failed")
    wait_for(lambda: task_status(b, f"{wid}.gate-1") == "running", timeout=60,
             what="gate-1 running")
    gate_pid = int((tmp_path / "gate-1.pid").read_text())

    status, theirs = b.request("POST", f"/workflows/{wid}/retry")  # applied by A's engine
    assert status == 409, theirs
    status, ours = a.request("POST", f"/workflows/{wid}/retry")
    assert status == 409 and theirs == ours and "still running" in ours["error"]
    assert rows(dsn, "SELECT count(*) FROM workflow_requests") == [(0,)]  # answered, removed

    status, view = b.request("POST", f"/workflows/{wid}/cancel")
    assert status == 200 and view["workflow_id"] == wid, view
    assert a.wait_workflow(wid, timeout=60)["status"] == "cancelled"  # on A, its owner
    wait_for(lambda: gone(gate_pid), timeout=30, what="the gate task's process to stop")
    status, view = b.request("GET", f"/workflows/{wid}")
    assert view["status"] == "cancelled"
    assert {t["id"]: t["status"] for t in view["tasks"]} == {"fail-1": "failed",
                                                             "gate-1": "cancelled"}
    assert effects(tmp_path) == []  # the gate task never got past its gate
    status, again = b.request("POST", f"/workflows/{wid}/cancel")
    assert status == 409 and "already finished" in again["error"], again
    assert rows(dsn, "SELECT * FROM workflow_leases") == []  # the refused call kept no lease

    (tmp_path / "fixed").write_text("")
    (tmp_path / "open").write_text("")
    status, view = b.request("POST", f"/workflows/{wid}/retry")  # finished: nobody holds it
    assert status == 200 and view["status"] == "queued", view
    assert b.wait_workflow(wid, timeout=60)["status"] == "succeeded"
    assert sorted(effects(tmp_path)) == ["fail-1", "gate-1"]  # each re-ran once
    status, view = a.request("GET", f"/workflows/{wid}")  # A dropped its finished copy
    assert status == 200 and view["status"] == "succeeded", view
    status, view = a.request("POST", f"/workflows/{wid}/retry")
    assert status == 409 and "nothing to retry" in view["error"], view
    assert rows(dsn, "SELECT * FROM workflow_leases") == []
    for d in (a, b):
        d.stop()


def test_cancel_through_a_daemon_after_the_owner_was_killed(tmp_path, dsn):  # noqa: F811
    a, b = daemons(tmp_path, dsn, 2)
    wid = submit(a, workflow(tmp_path, "gate-1", "gate-2"))
    for tid in ("gate-1", "gate-2"):
        wait_for(lambda tid=tid: task_status(b, f"{wid}.{tid}") == "running", timeout=60,
                 what=f"{tid} running")
    a.kill()  # its lease is still live: the request waits for it to expire, then B claims
    status, view = b.request("POST", f"/workflows/{wid}/cancel", timeout=60)
    assert status == 200 and view["workflow_id"] == wid, view
    view = b.wait_workflow(wid, timeout=60)
    assert view["status"] == "cancelled", view
    assert {t["status"] for t in view["tasks"]} == {"cancelled"}
    for tid in ("gate-1", "gate-2"):  # B's adoption killed what A left running
        pid = int((tmp_path / f"{tid}.pid").read_text())
        wait_for(lambda pid=pid: gone(pid), timeout=30, what=f"{tid}'s process to stop")
    assert effects(tmp_path) == []
    assert rows(dsn, "SELECT count(*) FROM workflow_requests") == [(0,)]
    assert rows(dsn, "SELECT * FROM workflow_leases") == []
    b.stop()


def test_the_cli_pointed_at_another_daemon(tmp_path, dsn):  # noqa: F811
    a, b = daemons(tmp_path, dsn, 2)
    wid = submit(a, workflow(tmp_path, "gate-1"))
    wait_for(lambda: task_status(b, f"{wid}.gate-1") == "running", timeout=60,
             what="gate-1 running")
    common = ("--config", str(b.config_file), "--endpoint", b.url)
    env = {"PROVISIONING_STORAGE_DATA_DIR": str(b.data_dir)}  # B's token

    def cli(*args: str):
        return run_cli(*common, *args, env=env)

    shown = cli("workflow", "status", wid)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert wid in shown.stdout and "running" in shown.stdout
    done = cli("workflow", "cancel", wid)
    assert done.returncode == 0, done.stdout + done.stderr
    assert a.wait_workflow(wid, timeout=60)["status"] == "cancelled"
    refused = cli("workflow", "cancel", wid)
    assert refused.returncode == 2 and "already finished" in refused.stderr, refused.stderr
    listed = cli("workflow", "list")
    assert listed.returncode == 0 and wid in listed.stdout, listed.stdout + listed.stderr
    for d in (a, b):
        d.stop()


def test_schema_version_3_adds_the_request_table_and_migrates_a_version_2_database():
    url, drop = fresh_database()
    try:
        conn = schema.connect(url)
        schema.check_version(conn)
        assert schema.current_version(conn) == 3
        conn.execute("DROP TABLE workflow_requests")  # what version 2 had
        conn.execute("UPDATE schema_version SET version = 2")
        with pytest.raises(schema.SchemaMismatch, match="version 2, this orchestrator needs "
                                                        "version 3"):
            schema.check_version(conn)
        assert schema.migrate(conn) == (2, 3)
        assert conn.execute("SELECT count(*) FROM workflow_requests").fetchone() == (0,)
        conn.close()
    finally:
        drop()


@contextlib.contextmanager
def two_stores(tmp_path, database: str):
    """Two shared stores on one database, both loaded; a workflow added through a
    (a owns it): (a, b, its id, its tasks); both closed after."""
    a = SharedPostgresStore(database, DataPaths(tmp_path / "a"), lease_s=60)
    b = SharedPostgresStore(database, DataPaths(tmp_path / "b"), lease_s=60)
    try:
        a.load()
        b.load()
        wf, tasks = make()
        a.add_workflow(wf, tasks)
        yield a, b, wf["id"], tasks
    finally:
        a.close()
        b.close()


def test_the_store_wakes_a_long_poll_by_notify_and_forwards_a_call_to_the_owner(
        tmp_path, dsn, monkeypatch):  # noqa: F811
    monkeypatch.setattr(peering, "RECHECK_S", 120.0)  # only a NOTIFY can end the waits below
    with two_stores(tmp_path, dsn) as (a, b, wid, tasks):  # a owns it
        assert b.peer_events(wid, 0, 100, 0) == []
        assert b.peer_events("0" * 8 + "-0000-0000-0000-" + "0" * 12, 0, 100, 0) is None
        (listed, counts), = b.peer_workflows(set())
        assert listed["id"] == wid and counts == {"queued": len(tasks)}
        assert b.peer_workflows({wid}) == []
        assert b.claim_workflow(wid) is None  # a live daemon holds it

        got: dict = {}
        poller = threading.Thread(target=lambda: got.update(events=b.peer_events(wid, 0, 100, 90)))
        poller.start()
        wait_for(lambda: wid in b._listener._watchers and b._listener.listening.is_set(),
                 timeout=30, what="the long poll waiting, its listener subscribed")
        a.commit_batch(events=[(wid, {"type": "workflow", "status": "running", "seq": 1})])
        poller.join(timeout=60)  # woken by the NOTIFY of a's batch (no re-check for 120 s)
        assert not poller.is_alive() and [e["status"] for e in got["events"]] == ["running"]

        answers = iter([{"view": {"workflow_id": wid, "status": "cancelled"}},
                        {"error": "nope", "hint": "later", "http_status": 409}])
        applied: list = []

        def on_request(workflow_id: str, action: str) -> dict:
            applied.append((workflow_id, action))
            return next(answers)

        a.start_leases(on_adopt=lambda *_: None, on_lost=lambda _: None, on_request=on_request)
        assert b.ask_owner(wid, "cancel", 60) == {"view": {"workflow_id": wid,
                                                            "status": "cancelled"}}
        assert b.ask_owner(wid, "retry", 60) == {"error": "nope", "hint": "later",
                                                  "http_status": 409}
        assert applied == [(wid, "cancel"), (wid, "retry")]
        assert rows(dsn, "SELECT count(*) FROM workflow_requests") == [(0,)]
        assert a.ask_owner(wid, "cancel", 60) is None  # its own: nobody else to ask


def test_a_claim_for_one_call_and_its_undoing(tmp_path, dsn):  # noqa: F811
    with two_stores(tmp_path, dsn) as (a, b, wid, tasks):
        a.run(lambda conn: leases.release(conn, a.daemon_id, [wid]))  # a free lease
        workflows, loaded = b.claim_workflow(wid)
        assert [w["id"] for w in workflows] == [wid] and len(loaded) == len(tasks)
        assert rows(dsn, "SELECT owner, epoch FROM workflow_leases") == [(b.daemon_id, 2)]
        assert a.claim_workflow(wid) is None  # b holds it now
        b.release_workflow(wid)  # unfinished: handed back, never dropped
        assert rows(dsn, "SELECT owner FROM workflow_leases") == [(None,)]

        rows(dsn, f"UPDATE workflows SET status = 'failed' WHERE id = '{wid}' RETURNING id")
        rows(dsn, "DELETE FROM workflow_leases RETURNING workflow_id")  # finished: no row
        assert b.claim_workflow(wid) is not None
        assert rows(dsn, "SELECT owner, epoch FROM workflow_leases") == [(b.daemon_id, 1)]
        b.release_workflow(wid)  # finished: its row dropped again
        assert rows(dsn, "SELECT * FROM workflow_leases") == []
        assert b.claim_workflow("0" * 8 + "-0000-0000-0000-" + "0" * 12) is None  # no such one
