"""The crash matrix of tests/test_reliability_crash.py on the PostgreSQL backend.

The same 50-task DAG (every other task with the checkpoint protocol), the
daemon killed with SIGKILL at the same kinds of moment (during the submit,
right after the 202, mid-run; "checkpoint": while a task's checkpoint file
is being written, the records being in the database), then a new daemon on
the same database and data dir. Between the two the durable state is read
from the database: an accepted submission is there with all its task rows
belonging to it (a batch is one transaction: never a half-added workflow).
After the restart the workflow succeeds, tasks recorded succeeded before the
kill ran exactly once, every task at least once and at most twice.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from tests.daemon_fixture import start_daemon
from tests.pg_fixture import fresh_database
from tests.test_reliability_crash import KINDS, TASK_SCRIPT, TASKS, check_effects, dag, kill_at

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")


def durable_rows(dsn: str) -> tuple[list[dict], list[dict]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        workflows = [json.loads(r[0]) for r in conn.execute("SELECT rec::text FROM workflows")]
        tasks = [json.loads(r[0]) for r in conn.execute("SELECT rec::text FROM tasks")]
    return workflows, tasks


def checkpoint_in_flight(data: Path) -> bool:
    for _dirpath, _, files in os.walk(data / "checkpoints"):
        if any(f.endswith(".part") for f in files):
            return True
    return False


def crash_iteration(base: Path, rng: random.Random, kind: str, shared: bool) -> None:
    dsn, drop = fresh_database()
    base.mkdir()
    data = base / "data"
    script = base / "task.sh"
    script.write_text(TASK_SCRIPT)
    effects = base / "effects.log"
    cfg = {"storage": {"data_dir": str(data), "backend": "postgres", "postgres_dsn": dsn,
                       "postgres_shared": shared},
           "executor": {"max_concurrent_tasks": 8, "checkpoint_interval_seconds": 0,
                        "shutdown_grace_seconds": 5, "kill_grace_seconds": 1}}
    spec = dag(rng, script, effects)
    try:
        accepted = kill_at(start_daemon(base, **cfg), kind, rng, spec, effects,
                           in_flight=lambda: checkpoint_in_flight(data))
        workflows, tasks = durable_rows(dsn)
        assert len(workflows) <= 1
        if accepted:
            assert [w["id"] for w in workflows] == accepted, "an accepted submission was lost"
        succeeded_at_kill: set[str] = set()
        if workflows:
            wf = workflows[0]
            assert len(wf["task_ids"]) == TASKS
            assert {t["workflow_id"] for t in tasks} <= {wf["id"]}, "foreign task rows"
            assert {t["id"] for t in tasks} <= set(wf["task_ids"])
            succeeded_at_kill = {t["id"] for t in tasks if t["status"] == "succeeded"}
        else:
            assert tasks == [], "task rows of a submission that never committed"

        d2 = start_daemon(base, **cfg)
        if workflows:
            workflow_id = workflows[0]["id"]
        else:  # torn before the commit point: the client got no id, so it submits again
            status, body = d2.request("POST", "/workflows", spec)
            assert status == 202, body
            workflow_id = body["workflow_id"]
        view = d2.wait_workflow(workflow_id, timeout=120)
        assert view["status"] == "succeeded", [
            (t["id"], t["status"], t["error"]) for t in view["tasks"]
            if t["status"] != "succeeded"]
        d2.stop()
        check_effects(effects, succeeded_at_kill)
        workflows, tasks = durable_rows(dsn)
        assert len(workflows) == 1 and len(tasks) == TASKS
        assert all(t["status"] == "succeeded" for t in tasks)
        if shared:  # finished: its lease given up
            with psycopg.connect(dsn, autocommit=True) as conn:
                assert conn.execute("SELECT * FROM workflow_leases").fetchall() == []
    finally:
        drop()


@pytest.mark.parametrize("shared", [False, True], ids=["one-daemon", "shared"])
def test_crash_matrix_on_postgres_one_round_of_each_kill_point(tmp_path: Path, shared: bool):
    """shared: storage.postgres_shared (workflow leases; the restarted daemon has the
    same daemon id, from its data dir, and takes its own leases back at once)."""
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    for i, kind in enumerate(KINDS):
        try:
            crash_iteration(tmp_path / f"it{i:02d}", rng, kind, shared)
        except BaseException as e:
            raise AssertionError(f"iteration {i} (kill during {kind}, postgres, "
                                 f"{'shared' if shared else 'one daemon'}), "
                                 f"CRASH_SEED={seed}: {e}") from e
