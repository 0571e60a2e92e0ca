"""The PostgreSQL backend (DESIGN.md 15): what only it promises, its schema,
`--check`/`--migrate`, the daemon on it through the real CLI, and its bad
cases. The Store contract itself runs on it in tests/test_store.py.

Every test gets a database of its own on the server .ci/run starts
(tests/pg_fixture.py); without one they skip with the reason.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from provisioning.config import load_config
from provisioning.paths import DataPaths
from tests.conftest import free_port, run_cli
from tests.daemon_fixture import ORCHESTRATOR, start_daemon, write_config
from tests.pg_fixture import fresh_database
from tests.test_cli_workflow import shell_task
from tests.test_client import cold, stop_daemons  # noqa: F401 - fixture
from tests.test_store import make

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
from provisioning.store import postgres_schema as schema  # noqa: E402 - needs psycopg
from provisioning.store.postgres import PostgresStore  # noqa: E402 - needs psycopg


@pytest.fixture
def dsn():
    dsn, drop = fresh_database()
    yield dsn
    drop()


def sql(dsn: str, statement: str, params=()):
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else None


def orchestrator(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORCHESTRATOR, "--config", str(config_file), *args],
                          capture_output=True, text=True, timeout=60)


def pg_config(tmp_path: Path, dsn: str, **storage) -> Path:
    return write_config(tmp_path / "pg.toml", {
        "storage": {"backend": "postgres", "postgres_dsn": dsn,
                    "data_dir": str(tmp_path / "data"), **storage},
        "server": {"port": 0}})


# -- the store on its own --------------------------------------------------------------

def test_an_empty_database_gets_the_schema_and_its_version(dsn, tmp_path):
    PostgresStore(dsn, DataPaths(tmp_path / "data")).close()
    assert sql(dsn, "SELECT version FROM schema_version") == [(schema.SCHEMA_VERSION,)]
    tables = {r[0] for r in sql(dsn, "SELECT tablename FROM pg_tables "
                                     "WHERE schemaname = 'public'")}
    assert {"workflows", "tasks", "events", "task_logs", "quarantine", "daemons"} <= tables


def test_a_newer_schema_is_refused_with_both_versions(dsn, tmp_path):
    PostgresStore(dsn, DataPaths(tmp_path / "data")).close()
    sql(dsn, "UPDATE schema_version SET version = 99")
    with pytest.raises(schema.SchemaMismatch) as e:
        PostgresStore(dsn, DataPaths(tmp_path / "data"))
    assert "version 99" in str(e.value) and f"version {schema.SCHEMA_VERSION}" in str(e.value)
    assert e.value.exit_code == 4


def test_records_keep_nul_characters_and_key_order(dsn, tmp_path):
    store = PostgresStore(dsn, DataPaths(tmp_path / "data"))
    wf, tasks = make()
    tasks[0]["message"] = "before\x00after"
    store.add_workflow(wf, tasks)
    store.close()
    workflows, loaded = PostgresStore(dsn, DataPaths(tmp_path / "data")).load()
    assert loaded[0]["message"] == "before\x00after"
    assert list(workflows[0]) == list(wf)


def test_a_foreign_record_is_quarantined_not_raised(dsn, tmp_path):
    store = PostgresStore(dsn, DataPaths(tmp_path / "data"))
    good, good_tasks = make(seq=1)
    bad, bad_tasks = make(seq=2)
    store.add_workflow(good, good_tasks)
    store.add_workflow(bad, bad_tasks)
    sql(dsn, "UPDATE workflows SET rec = %s WHERE id = %s",
        (json.dumps(dict(bad, schema=999)), bad["id"]))
    workflows, tasks = store.load()
    assert [w["id"] for w in workflows] == [good["id"]]
    assert {t["workflow_id"] for t in tasks} == {good["id"]}
    assert store.quarantined_count() == 1
    assert sql(dsn, "SELECT kind, key FROM quarantine") == [("workflow", bad["id"])]


def test_a_finished_tasks_log_is_kept_in_the_database(dsn, tmp_path):
    store = PostgresStore(dsn, DataPaths(tmp_path / "data"))
    wf, tasks = make()
    store.add_workflow(wf, tasks)
    store.task_log_path(wf["id"], "web-1").write_bytes(b"created web-1\n")
    store.commit_batch(tasks=[dict(tasks[0], status="running")])
    assert store.stored_task_log(wf["id"], "web-1") is None  # running: not copied yet
    store.commit_batch(tasks=[dict(tasks[0], status="succeeded")])
    assert store.stored_task_log(wf["id"], "web-1") == b"created web-1\n"
    assert store.stored_task_log(wf["id"], "k8s") is None


def test_a_lost_connection_fails_the_call_then_reconnects(dsn, tmp_path):
    store = PostgresStore(dsn, DataPaths(tmp_path / "data"))
    wf, tasks = make()
    store.add_workflow(wf, tasks)
    sql(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             "WHERE application_name = 'provisioning-orchestrator' AND pid <> pg_backend_pid()")
    with pytest.raises(schema.DatabaseUnavailable) as e:
        store.save_task(dict(tasks[0], status="running"))
    assert e.value.http_status == 503
    deadline = time.monotonic() + 10
    while True:  # the next calls reconnect, at most once per backoff step
        try:
            store.save_task(dict(tasks[0], status="running"))
            break
        except schema.DatabaseUnavailable:
            assert time.monotonic() < deadline, "never reconnected"
            time.sleep(0.1)
    assert store.load()[1][0]["status"] == "running"


def test_an_unreachable_database_is_one_clear_error(tmp_path):
    dsn = f"host=127.0.0.1 port={free_port()} dbname=x user=u password=hunter2"
    with pytest.raises(schema.DatabaseUnavailable) as e:
        PostgresStore(dsn, DataPaths(tmp_path / "data"))
    message = str(e.value)
    assert "cannot reach the PostgreSQL database at 127.0.0.1:" in message
    assert "hunter2" not in message


# -- configuration ---------------------------------------------------------------------

def test_config_show_never_shows_a_dsn_password(monkeypatch):
    monkeypatch.setenv("PROVISIONING_STORAGE_BACKEND", "postgres")
    monkeypatch.setenv("PROVISIONING_STORAGE_POSTGRES_DSN",
                       "postgresql://prov:hunter2@db.example:5432/prov")
    assert load_config().storage.backend == "postgres"
    text = run_cli("config", "show")
    assert text.returncode == 0, text.stderr
    assert "hunter2" not in text.stdout
    assert 'postgres_dsn = "postgresql://prov:***@db.example:5432/prov"' in text.stdout
    as_json = run_cli("--json", "config", "show")
    assert "hunter2" not in as_json.stdout
    monkeypatch.setenv("PROVISIONING_STORAGE_POSTGRES_DSN", "host=db password='a b' dbname=p")
    shown = run_cli("config", "show").stdout
    assert "a b" not in shown and "password=***" in shown
    assert "hunter2" not in repr(load_config())


def test_an_unknown_backend_is_a_config_error(monkeypatch):
    monkeypatch.setenv("PROVISIONING_STORAGE_BACKEND", "mysql")
    result = run_cli("config", "show")
    assert result.returncode == 2 and "filesystem, postgres" in result.stderr


# -- provisioning-orchestrator --check / --migrate / start -----------------------------

def test_check_and_migrate(dsn, tmp_path):
    config = pg_config(tmp_path, dsn)
    checked = orchestrator(config, "--check")
    assert checked.returncode == 0, checked.stderr
    assert "database: reachable at 127.0.0.1:" in checked.stdout and "empty" in checked.stdout
    migrated = orchestrator(config, "--migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert f"migrated from version 0 to {schema.SCHEMA_VERSION}" in migrated.stdout
    again = orchestrator(config, "--migrate")
    assert "up to date" in again.stdout
    assert f"schema version {schema.SCHEMA_VERSION}" in orchestrator(config, "--check").stdout
    sql(dsn, "UPDATE schema_version SET version = 42")
    newer = orchestrator(config, "--check")
    assert newer.returncode == 4 and "version 42" in newer.stderr
    assert "Traceback" not in newer.stderr


def test_migrate_on_the_file_backend_is_a_usage_error(tmp_path):
    config = write_config(tmp_path / "files.toml", {"storage": {"data_dir": str(tmp_path)}})
    result = orchestrator(config, "--migrate")
    assert result.returncode == 2 and "no schema to migrate" in result.stderr


def test_daemon_refuses_a_newer_schema_with_both_versions(dsn, tmp_path):
    PostgresStore(dsn, DataPaths(tmp_path / "x")).close()
    sql(dsn, "UPDATE schema_version SET version = 7")
    result = orchestrator(pg_config(tmp_path, dsn))
    assert result.returncode == 4, result.stderr
    assert "version 7" in result.stderr and f"version {schema.SCHEMA_VERSION}" in result.stderr
    assert "Traceback" not in result.stderr


def test_daemon_with_the_database_down_exits_clearly(tmp_path):
    dsn = f"host=127.0.0.1 port={free_port()} dbname=p user=u password=hunter2"
    config = pg_config(tmp_path, dsn)
    for args in ((), ("--daemon",)):
        result = orchestrator(config, *args)
        out = result.stdout + result.stderr
        assert result.returncode == 1, out
        assert "cannot reach the PostgreSQL database at 127.0.0.1:" in out
        assert "Traceback" not in out and "hunter2" not in out
    checked = orchestrator(config, "--check")
    assert checked.returncode == 1 and "cannot reach" in checked.stderr


# -- one daemon on PostgreSQL, end to end through the CLI ------------------------------

def test_a_workflow_end_to_end_through_the_cli_on_postgres(dsn, cold, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PROVISIONING_STORAGE_BACKEND", "postgres")
    monkeypatch.setenv("PROVISIONING_STORAGE_POSTGRES_DSN", dsn)
    wf = cold.workflow_file('[workflow]\nname = "pg"\n\n'
                            + shell_task("hello", "print('hello from postgres')")
                            + shell_task("bye", "print('bye')", ("hello",)))
    result = run_cli("workflow", "submit", str(wf), "--wait")  # auto-starts the daemon
    assert result.returncode == 0, result.stderr
    wid = result.stdout.splitlines()[0].split(": ", 1)[1]
    assert f"Workflow {wid} succeeded" in result.stdout
    logs = run_cli("workflow", "logs", wid)
    assert "hello from postgres" in logs.stdout
    rows = sql(dsn, "SELECT status FROM workflows WHERE id = %s", (wid,))
    assert rows == [("succeeded",)]
    statuses = sql(dsn, "SELECT key, status FROM tasks ORDER BY key")
    assert statuses == [(f"{wid}.bye", "succeeded"), (f"{wid}.hello", "succeeded")]
    body = sql(dsn, "SELECT body FROM task_logs WHERE key = %s", (f"{wid}.hello",))
    assert b"hello from postgres" in bytes(body[0][0])
    health = json.loads(run_cli("--json", "orchestrator", "status").stdout or "{}")
    assert health  # the daemon answers
    stop_daemons(cold.data_dir)
    # A new daemon with an empty data dir of its own reads everything back.
    monkeypatch.setenv("PROVISIONING_STORAGE_DATA_DIR", str(cold.tmp / "data2"))
    status = json.loads(run_cli("--json", "workflow", "status", wid).stdout)
    assert status["status"] == "succeeded"
    assert [t["status"] for t in status["tasks"]] == ["succeeded", "succeeded"]
    again = run_cli("workflow", "logs", wid, "--task", "hello")  # from the database
    assert "hello from postgres" in again.stdout, again.stderr
    assert not (cold.tmp / "data2" / "logs" / wid / "hello.log").exists()
    stop_daemons(cold.tmp / "data2")


def test_the_daemon_answers_health_on_postgres(dsn, tmp_path):
    d = start_daemon(tmp_path, storage={"backend": "postgres", "postgres_dsn": dsn})
    try:
        status, body = d.request("POST", "/workflows", {"tasks": [
            {"id": f"t{n}", "op": "noop"} for n in range(20)]})
        assert status == 202, body
        d.wait_workflow(body["workflow_id"])
        assert sql(dsn, "SELECT count(*) FROM tasks WHERE status = 'succeeded'") == [(20,)]
        health = d.health()
        assert health["status"] == "healthy" and health["storage_backend"] == "postgres"
        assert health["record_writer_pid"] is None
    finally:
        d.stop()
    assert str(uuid.UUID(body["workflow_id"])) == body["workflow_id"]


# -- one daemon per database (until several share the queue) ---------------------------

def test_a_second_store_loading_the_same_database_is_refused(dsn, tmp_path):
    first = PostgresStore(dsn, DataPaths(tmp_path / "a"))
    first.load()
    second = PostgresStore(dsn, DataPaths(tmp_path / "b"))
    with pytest.raises(schema.DatabaseUnavailable) as e:
        second.load()
    assert "another orchestrator uses the PostgreSQL database" in str(e.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in str(e.value)
    first.close()
    assert second.load() == ([], [])  # released with the first one's connection
    second.close()


def test_a_store_whose_database_was_taken_over_never_writes_again(dsn, tmp_path):
    fenced: list[bool] = []
    first = PostgresStore(dsn, DataPaths(tmp_path / "a"), on_fenced=lambda: fenced.append(True))
    first.load()
    wf, tasks = make()
    first.add_workflow(wf, tasks)
    sql(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             "WHERE application_name = 'provisioning-orchestrator' AND pid <> pg_backend_pid()")
    second = PostgresStore(dsn, DataPaths(tmp_path / "b"))
    second.load()  # took the database while the first was cut off
    messages = []
    deadline = time.monotonic() + 10
    while len([m for m in messages if "took the database over" in m]) < 2:
        # first the lost connection, then (after the backoff) the lock found taken, for good
        with pytest.raises(schema.DatabaseUnavailable) as e:
            first.save_task(dict(tasks[0], status="failed"))
        messages.append(str(e.value))
        assert time.monotonic() < deadline, messages
        time.sleep(0.1)
    assert "lost the PostgreSQL database" in messages[0]
    assert fenced == [True]  # told once, however often it is called after
    assert second.load()[1][0]["status"] == "queued"
    second.close()


def test_a_second_daemon_on_the_same_database_is_refused(dsn, tmp_path):
    (tmp_path / "one").mkdir()
    d = start_daemon(tmp_path / "one", storage={"backend": "postgres", "postgres_dsn": dsn,
                                                 "data_dir": str(tmp_path / "one-data")})
    try:
        result = orchestrator(pg_config(tmp_path, dsn))
        assert result.returncode == 1, result.stderr
        assert "another orchestrator uses the PostgreSQL database" in result.stderr
        assert f"pid {d.pid}" in result.stderr and "Traceback" not in result.stderr
    finally:
        d.stop()


def test_events_read_at_load_are_never_stale(dsn, tmp_path):
    store = PostgresStore(dsn, DataPaths(tmp_path / "data"))
    wf, tasks = make()
    store.add_workflow(wf, tasks)
    store.append_event(wf["id"], {"seq": 1})
    store.load()  # reads every workflow's events in one query
    store.append_event(wf["id"], {"seq": 2})
    assert [e["seq"] for e in store.load_events(wf["id"])] == [1, 2]
    store.load()
    assert [e["seq"] for e in store.load_events(wf["id"])] == [1, 2]
    assert [e["seq"] for e in store.load_events(wf["id"])] == [1, 2]  # taken once, then read
    store.close()


def test_a_daemon_whose_database_was_taken_over_stops(dsn, tmp_path):
    (tmp_path / "one").mkdir()
    d = start_daemon(tmp_path / "one", storage={"backend": "postgres", "postgres_dsn": dsn,
                                                 "data_dir": str(tmp_path / "one-data")})
    try:
        sql(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE application_name = 'provisioning-orchestrator' "
                 "AND pid <> pg_backend_pid()")
        other = PostgresStore(dsn, DataPaths(tmp_path / "other"))
        other.load()  # takes the database while the daemon is cut off

        def submit_refused() -> bool:  # each write makes the daemon look again
            if not d.alive():
                return True
            try:
                status, _ = d.request("POST", "/workflows", {"tasks": [
                    {"id": "x", "op": "noop"}]})
            except OSError:
                return True  # it is stopping
            assert status != 202, "a daemon cut off from its database acknowledged a write"
            return False

        deadline = time.monotonic() + 30
        while not submit_refused():
            assert time.monotonic() < deadline, "the fenced daemon kept running"
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while d.alive():
            assert time.monotonic() < deadline, "the fenced daemon did not exit"
            time.sleep(0.1)
        assert other.load() == ([], [])
        other.close()
    finally:
        if d.alive():
            d.kill()
