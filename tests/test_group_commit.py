"""Group commit of the engine's writes (provisioning/engine/commit.py).

- concurrent submissions to the real daemon: kill -9 right after many 202s,
  every acknowledged id is there after the restart;
- submissions waiting together are written by ONE store call, and none
  returns (or is visible) before that call is done;
- a dependent's process starts only after its dependencies' completions are
  on disk; a task's own claim is not waited for, and the process of a start
  that never reached the disk is killed by recovery after a crash;
- a failed batch fails its submitters and leaves nothing behind.
"""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

from provisioning.config import load_config
from provisioning.engine.engine import Engine
from provisioning.engine.loader import parse_workflow
from provisioning.errors import StorageFull
from provisioning.store.jsonfile import JsonFileStore
from tests.conftest import wait_for
from tests.daemon_fixture import start_daemon

BLOCKER = {"workflow": {"name": "blocker"},
           "tasks": [{"id": "block", "op": "shell.run", "params": {"argv": ["sleep", "600"]}}]}
SMALL = {"workflow": {"name": "small"}, "tasks": [{"id": "t1", "op": "noop"}]}


def test_every_acknowledged_submission_survives_kill_9(tmp_path: Path):
    d = start_daemon(tmp_path, executor={"max_concurrent_tasks": 1})
    status, _ = d.request("POST", "/workflows", BLOCKER)  # parks the executor
    assert status == 202
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                status, body = d.request("POST", "/workflows", SMALL, timeout=10)
            except (OSError, http.client.HTTPException):  # e.g. IncompleteRead
                return  # the daemon is gone
            if status != 202:
                return
            with lock:
                acked.append(body["workflow_id"])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(acked) >= 150, timeout=60, what="150 acknowledged submissions")
        d.kill()  # clients are still submitting: some requests are in flight
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    with lock:
        acknowledged = list(acked)
    assert len(set(acknowledged)) == len(acknowledged) >= 150

    # Straight from the disk, before any daemon touches it again ...
    workflows, _ = JsonFileStore(load_config().data_paths()).load()
    on_disk = {w["id"] for w in workflows}
    missing = [w for w in acknowledged if w not in on_disk]
    assert not missing, f"{len(missing)} acknowledged submissions lost: {missing[:3]}"
    # ... and through a restarted daemon.
    # (a short grace: its stop need not wait 30 s for the blocker)
    d2 = start_daemon(tmp_path, executor={"max_concurrent_tasks": 1,
                                          "shutdown_grace_seconds": 1})
    try:
        status, body = d2.request("GET", "/workflows")
        assert status == 200
        listed = {w["workflow_id"] for w in body["workflows"]}
        assert set(acknowledged) <= listed
        status, body = d2.request("GET", f"/workflows/{acknowledged[-1]}")
        assert status == 200 and body["tasks"][0]["id"] == "t1"
    finally:
        d2.stop()


class GatedStore(JsonFileStore):
    """A JsonFileStore whose commit_batch can be held shut, and which records
    what each call wrote."""

    def __init__(self, paths):
        super().__init__(paths)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[dict] = []
        self.fail_next: Exception | None = None
        self.shut_after_adds = False  # close the gate behind the next batch of new workflows

    def commit_batch(self, *, adds=(), tasks=(), workflows=(), initial_tasks=None, events=()):
        self.entered.set()
        assert self.gate.wait(60), "test forgot to open the gate"
        if self.fail_next is not None and adds:
            error, self.fail_next = self.fail_next, None
            raise error
        super().commit_batch(adds=adds, tasks=tasks, workflows=workflows,
                             initial_tasks=initial_tasks, events=events)
        if adds and self.shut_after_adds:
            self.gate.clear()
        self.calls.append({"adds": [w["id"] for w, _ in adds],
                           "tasks": {t["key"]: t["status"] for t in tasks}})


def _engine(tmp_path: Path, **executor) -> tuple[Engine, GatedStore]:
    env = {"PROVISIONING_STORAGE_DATA_DIR": str(tmp_path / "data")}
    env.update({f"PROVISIONING_EXECUTOR_{k.upper()}": str(v) for k, v in executor.items()})
    config = load_config(environ=env)
    store = GatedStore(config.data_paths())
    engine = Engine(store, config)
    engine.start()
    return engine, store


def _spec(engine: Engine, data: dict):
    return parse_workflow(data, source="test", registry=engine.registry)


def test_submissions_waiting_together_share_one_commit(tmp_path: Path):
    engine, store = _engine(tmp_path, max_concurrent_tasks=1)
    try:
        engine.submit(_spec(engine, BLOCKER))  # the executor is parked behind it
        wait_for(lambda: engine.get_task(engine.list_workflows()[0]["workflow_id"] + ".block")
                 ["pid"], timeout=30, what="the blocker to run")
        store.gate.clear()
        store.entered.clear()
        # One submission enters the committer and is held there ...
        first = threading.Thread(target=engine.submit, args=(_spec(engine, SMALL),))
        first.start()
        assert store.entered.wait(30)
        # ... while 8 more arrive and wait together in the next batch.
        results: list[dict] = []
        threads = [threading.Thread(target=lambda: results.append(
            engine.submit(_spec(engine, SMALL)))) for _ in range(8)]
        for t in threads:
            t.start()
        wait_for(lambda: len(engine._writer._open.adds) == 8, timeout=30,
                 what="8 submissions queued for the next batch")
        assert results == []  # nobody was acknowledged before the disk had it
        assert len(engine.list_workflows()) == 1  # nor can anyone see them
        calls_before = len(store.calls)
        store.gate.set()
        first.join(30)
        for t in threads:
            t.join(30)
        assert len(results) == 8
        batches = [c["adds"] for c in store.calls[calls_before:] if c["adds"]]
        assert sorted(len(b) for b in batches) == [1, 8], batches
        assert {r["workflow_id"] for r in results} == set(batches[-1] if len(batches[-1]) == 8
                                                          else batches[0])
        on_disk = {w["id"] for w in JsonFileStore(store.paths).load()[0]}
        assert {r["workflow_id"] for r in results} <= on_disk
    finally:
        store.gate.set()
        engine.shutdown(0)


def test_a_dependent_starts_only_once_its_dependency_completion_is_on_disk(tmp_path: Path):
    engine, store = _engine(tmp_path, max_concurrent_tasks=1)
    marker = tmp_path / "ran"
    try:
        wid = engine.submit(_spec(engine, {"workflow": {"name": "h"}, "tasks": [
            {"id": "a", "op": "shell.run", "params": {"argv": ["sleep", "1"]}},
            {"id": "b", "op": "shell.run", "params": {"argv": ["touch", str(marker)]},
             "depends_on": ["a"]}]}))["workflow_id"]
        wait_for(lambda: engine.get_task(f"{wid}.a")["pid"], timeout=30, what="task a to run")
        store.gate.clear()  # from now on no batch reaches the disk
        store.entered.clear()
        # a finishes, b is claimed in memory; its process waits for the claim's batch.
        wait_for(lambda: f"{wid}.b" in engine.scheduler.running and store.entered.is_set(),
                 timeout=30, what="b claimed and a batch held at the disk")
        assert not marker.exists(), "b started before its claim was on disk"
        b_file = store.paths.queue_dir / f"{wid}.b.json"  # none yet, or its first version
        assert not b_file.exists() or json.loads(b_file.read_text())["status"] == "queued"
        calls_before = len(store.calls)
        store.gate.set()
        final = engine.wait(wid, timeout=30)
        assert final["status"] == "succeeded"
        assert marker.exists()

        def first(key: str, status: str) -> int:
            return next(i for i, c in enumerate(store.calls) if c["tasks"].get(key) == status)

        # a's completion was durable no later than b's claim, b's claim before its end.
        assert first(f"{wid}.a", "succeeded") <= first(f"{wid}.b", "running") \
            < first(f"{wid}.b", "succeeded")
        assert first(f"{wid}.b", "running") >= calls_before
        # What a reader was shown (succeeded) is on disk.
        assert json.loads((store.paths.workflows_dir / f"{wid}.json").read_text())[
            "status"] == "succeeded"
    finally:
        store.gate.set()
        engine.shutdown(0)


def test_a_failed_batch_fails_its_submitters_and_leaves_nothing(tmp_path: Path):
    engine, store = _engine(tmp_path)
    try:
        store.fail_next = StorageFull("no space left for the queue (test)")
        try:
            engine.submit(_spec(engine, SMALL))
        except StorageFull:
            pass
        else:
            raise AssertionError("the submission should have failed")
        assert engine.list_workflows() == []
        assert list(store.paths.workflows_dir.iterdir()) == []
        assert list(store.paths.queue_dir.iterdir()) == []
        wid = engine.submit(_spec(engine, SMALL))["workflow_id"]  # the next one works
        assert engine.wait(wid, timeout=30)["status"] == "succeeded"
    finally:
        engine.shutdown(0)


def test_a_start_that_never_reached_the_disk_is_killed_by_recovery(tmp_path: Path):
    import psutil

    from provisioning.engine.recovery import recover_running_tasks

    engine, store = _engine(tmp_path, max_concurrent_tasks=1, kill_grace_seconds=1)
    try:
        store.shut_after_adds = True  # the submission lands, nothing after it does
        wid = engine.submit(_spec(engine, {"workflow": {"name": "unrecorded"}, "tasks": [
            {"id": "s", "op": "shell.run", "params": {"argv": ["sleep", "600"]}}]}))["workflow_id"]
        # (not get_task: a reader waits for the held batch; look at the handle)
        pid = wait_for(lambda: f"{wid}.s" in engine.scheduler.running and
                       engine.scheduler.running[f"{wid}.s"].process.pid, timeout=30,
                       what="the task's process to start")
        proc = psutil.Process(pid)
        assert proc.cmdline() == ["sleep", "600"]
        # It runs, and the disk does not know yet: the workflow file is there
        # (the commit point), the task file not even (it would say "queued").
        assert (store.paths.workflows_dir / f"{wid}.json").exists()
        assert not (store.paths.queue_dir / f"{wid}.s.json").exists()

        # The daemon "crashes" here; a new one recovers from what is on disk.
        workflows, tasks = JsonFileStore(store.paths).load()
        recover_running_tasks(JsonFileStore(store.paths), {w["id"]: w for w in workflows},
                              tasks, kill_grace=1)
        wait_for(lambda: not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE,
                 timeout=30, what="recovery to kill the unrecorded run")
        assert [t["status"] for t in tasks] == ["queued"]  # and it runs again, once
    finally:
        store.gate.set()
        engine.shutdown(0)
