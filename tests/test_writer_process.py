"""The daemon's record writer process (provisioning/store/writer.py).

- the daemon writes its group commits through one child process, which holds
  <data_dir>/writer.lock and is gone after `--stop`;
- if that child is killed, the daemon keeps accepting and finishing work,
  writing in-process (nothing acknowledged is lost: checked after a kill -9
  of the daemon too);
- after a kill -9 of the daemon, its writer exits by itself and a restart
  works;
- the same child used directly: batches become files, errors come back as
  the store's errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from provisioning.errors import StorageFull
from provisioning.paths import DataPaths
from provisioning.store.jsonfile import JsonFileStore
from provisioning.store.writer import WriterProcess
from tests.conftest import wait_for
from tests.daemon_fixture import start_daemon

SMALL = {"workflow": {"name": "small"}, "tasks": [{"id": "a", "op": "noop"},
                                                  {"id": "b", "op": "noop", "depends_on": ["a"]}]}


def writer_of(pid: int) -> psutil.Process | None:
    for child in psutil.Process(pid).children():
        if "provisioning.store.writer" in " ".join(child.cmdline()):
            return child
    return None


def gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE  # dead, not reaped yet
    except psutil.NoSuchProcess:
        return True


def test_the_daemon_writes_through_one_child_that_stops_with_it(tmp_path: Path):
    d = start_daemon(tmp_path)
    writer = wait_for(lambda: writer_of(d.pid), timeout=30, what="the writer process")
    assert d.health()["record_writer_pid"] == writer.pid
    status, body = d.request("POST", "/workflows", SMALL)
    assert status == 202
    assert d.wait_workflow(body["workflow_id"])["status"] == "succeeded"
    assert (d.data_dir / "writer.lock").exists()
    d.stop()
    wait_for(lambda: gone(writer), timeout=30, what="the writer to exit with the daemon")


def test_a_killed_writer_falls_back_to_in_process_writes(tmp_path: Path):
    d = start_daemon(tmp_path)
    writer = wait_for(lambda: writer_of(d.pid), timeout=30, what="the writer process")
    writer.kill()
    wait_for(lambda: gone(writer), timeout=30, what="the writer to die")
    ids = []
    for _ in range(3):
        status, body = d.request("POST", "/workflows", SMALL)
        assert status == 202, body
        ids.append(body["workflow_id"])
    for wid in ids:
        assert d.wait_workflow(wid)["status"] == "succeeded"
    log = (d.data_dir / "orchestrator.log").read_text()
    assert "writing records in the daemon itself" in log
    assert d.health()["record_writer_pid"] is None  # what an operator can see
    d.kill()  # and all of it is on disk
    d2 = start_daemon(tmp_path)
    try:
        for wid in ids:
            status, view = d2.request("GET", f"/workflows/{wid}")
            assert status == 200 and view["status"] == "succeeded"
    finally:
        d2.stop()


def test_after_a_kill_9_of_the_daemon_its_writer_exits_and_a_restart_works(tmp_path: Path):
    d = start_daemon(tmp_path)
    writer = wait_for(lambda: writer_of(d.pid), timeout=30, what="the writer process")
    status, body = d.request("POST", "/workflows", SMALL)
    assert status == 202
    d.kill()
    wait_for(lambda: gone(writer), timeout=30,
             what="the orphaned writer to exit at the end of its input")
    d2 = start_daemon(tmp_path)
    try:
        assert d2.wait_workflow(body["workflow_id"])["status"] == "succeeded"
        assert writer_of(d2.pid) is not None
    finally:
        d2.stop()


def _records(wid: str) -> tuple[dict, dict]:
    wf = {"schema": 1, "kind": "workflow", "id": wid, "name": "w", "status": "queued",
          "seq": 2, "task_ids": ["a"], "created_at": 1.0,
          "spec": {"workflow": {"name": "w"}, "tasks": [{"id": "a", "op": "noop"}]}}
    task = {"schema": 1, "kind": "task", "key": f"{wid}.a", "workflow_id": wid, "id": "a",
            "op": "noop", "status": "queued", "seq": 1}
    return wf, task


def test_the_writer_child_used_directly(tmp_path: Path):
    paths = DataPaths(tmp_path / "data")
    JsonFileStore(paths)  # makes the layout
    writer = WriterProcess(paths.data_dir)
    try:
        wf, task = _records("11111111-1111-4111-8111-111111111111")
        writer.commit_batch(adds=[(wf, [])],
                            events=[(wf["id"], {"seq": 1, "type": "workflow"})])
        assert json.loads((paths.workflows_dir / f"{wf['id']}.json").read_text())["id"] == wf["id"]
        assert not (paths.queue_dir / f"{task['key']}.json").exists()
        # The first task files of a committed workflow are made from its spec.
        writer.commit_batch(initial_tasks={wf["id"]: ["a"]})
        first = json.loads((paths.queue_dir / f"{task['key']}.json").read_text())
        assert (first["id"], first["status"], first["seq"], first["op"]) == ("a", "queued", 1,
                                                                            "noop")
        assert JsonFileStore(paths).load_events(wf["id"]) == [{"seq": 1, "type": "workflow"}]
        # An error in the child comes back as the store's error, and the child lives on.
        with pytest.raises(RuntimeError, match="ValueError: task key '../escape.a'"):
            writer.commit_batch(tasks=[dict(task, key="../escape.a")])
        writer.commit_batch(tasks=[dict(task, status="succeeded")])
        assert json.loads((paths.queue_dir / f"{task['key']}.json").read_text())[
            "status"] == "succeeded"
    finally:
        writer.close()
    assert writer._proc.returncode == 0


def test_storage_full_in_the_child_is_storage_full_in_the_daemon(tmp_path: Path):
    # The mapping alone (a full disk through the daemon: test_reliability_diskfull.py).
    from provisioning.store.writer_child import commit

    class Full:
        def commit_batch(self, **_):
            raise StorageFull("no space left for the queue in X", hint="free space")

    reply = commit(Full(), {"adds": [], "tasks": [], "workflows": [], "initial": {},
                             "events": []})
    assert reply == {"error": "full", "message": "no space left for the queue in X",
                     "hint": "free space"}


def test_writer_process_false_writes_in_the_daemon(tmp_path: Path):
    d = start_daemon(tmp_path, storage={"writer_process": False})
    try:
        status, body = d.request("POST", "/workflows", SMALL)
        assert status == 202
        assert d.wait_workflow(body["workflow_id"])["status"] == "succeeded"
        assert writer_of(d.pid) is None
        assert (d.data_dir / "workflows" / f"{body['workflow_id']}.json").exists()
    finally:
        d.stop()


def test_a_queued_task_gets_its_file_soon_after_the_submission(tmp_path: Path):
    d = start_daemon(tmp_path, executor={"max_concurrent_tasks": 1, "shutdown_grace_seconds": 1,
                                         "kill_grace_seconds": 1})
    try:
        status, body = d.request("POST", "/workflows", {
            "workflow": {"name": "parked"}, "tasks": [
                {"id": "block", "op": "shell.run", "params": {"argv": ["sleep", "600"]}},
                {"id": "later", "op": "noop", "depends_on": ["block"]}]})
        assert status == 202
        task_file = d.data_dir / "queue" / f"{body['workflow_id']}.later.json"
        # written by the writer from the workflow's spec, ~1 s after the commit
        wait_for(task_file.exists, timeout=30, what="the queued task's first file")
        record = json.loads(task_file.read_text())
        assert record["status"] == "queued" and record["depends_on"] == ["block"]
        d.request("POST", f"/workflows/{body['workflow_id']}/cancel")
        d.wait_workflow(body["workflow_id"], ("cancelled",))
    finally:
        d.stop()
