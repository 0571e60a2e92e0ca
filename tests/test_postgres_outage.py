"""The daemon on PostgreSQL while the database goes away and comes back
(DESIGN.md 15, issue 17 "lost mid-run"): it keeps its running task, starts
nothing whose dependencies' completions are not stored, answers 503 to a
submission it cannot store (never a 202 it could lose), reconnects with
backoff once the server is back, and finishes the workflow with every task
run exactly once. The test server is really stopped and started (pg_ctl).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.daemon_fixture import start_daemon
from tests.pg_fixture import fresh_database, pg_ctl

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

pytestmark = pytest.mark.slow

WAIT_FOR_FILE = ("import pathlib, sys, time\n"
                 "runs, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
                 "with runs.open('a') as f: f.write(sys.argv[3] + '\\n')\n"
                 "deadline = time.monotonic() + 120\n"
                 "while not go.exists() and time.monotonic() < deadline: time.sleep(0.05)\n"
                 "sys.exit(0 if go.exists() else 1)\n")


def task(task_id: str, runs: Path, go: Path, *deps: str) -> dict:
    return {"id": task_id, "op": "shell.run", "depends_on": list(deps),
            "params": {"argv": [sys.executable, "-c", WAIT_FOR_FILE, str(runs), str(go),
                                task_id]}}


def poll(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    return value


def rows(dsn: str, statement: str, params=()):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()


def test_database_restart_mid_workflow(tmp_path):
    dsn, drop = fresh_database()
    runs, go = tmp_path / "runs.txt", tmp_path / "go"
    d = start_daemon(tmp_path, storage={"backend": "postgres", "postgres_dsn": dsn})
    stopped = False
    try:
        status, body = d.request("POST", "/workflows", {"tasks": [
            task("a", runs, go), task("b", runs, go, "a")]})
        assert status == 202, body
        wid = body["workflow_id"]

        def task_a_running():
            _, view = d.request("GET", f"/workflows/{wid}")
            return view["tasks"][0]["status"] == "running" and runs.exists()

        poll(task_a_running, 30, "task a to run")
        pg_ctl("stop", "-m", "fast")
        stopped = True
        go.touch()  # task a finishes while the database is down
        poll(lambda: d.request("GET", f"/tasks/{wid}.a")[1].get("status") == "succeeded",
             30, "task a's end to be seen")
        refused, answer = d.request("POST", "/workflows", {"tasks": [{"id": "x", "op": "noop"}]})
        assert refused == 503, answer  # not acknowledged: nothing to lose
        assert "PostgreSQL" in answer["error"]
        assert runs.read_text().split() == ["a"]  # b waits for a's completion to be stored
        assert d.health()["status"] == "healthy"  # the daemon still answers

        pg_ctl("start")
        stopped = False
        d.wait_workflow(wid, timeout=60)
        _, view = d.request("GET", f"/workflows/{wid}")
        assert view["status"] == "succeeded", view
        assert sorted(runs.read_text().split()) == ["a", "b"]  # each ran exactly once
        assert rows(dsn, "SELECT id, status FROM workflows") == [(wid, "succeeded")]
        assert rows(dsn, "SELECT key, status FROM tasks ORDER BY key") == [
            (f"{wid}.a", "succeeded"), (f"{wid}.b", "succeeded")]
        log = d.data_dir / "orchestrator.log"
        assert not log.exists() or "Traceback" not in log.read_text()
    finally:
        if stopped:
            pg_ctl("start")
        d.stop()
        drop()
