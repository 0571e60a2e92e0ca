"""JsonFileStore under real concurrency: a writer killed with SIGKILL mid-way,
threads writing at once, and the lock objects it uses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from provisioning import locks
from provisioning.model import TaskSpec, WorkflowSpec, new_submission
from provisioning.paths import DataPaths
from provisioning.store.jsonfile import JsonFileStore

PYTHON = sys.executable

WRITER = r"""
import sys, time, uuid
from pathlib import Path
from provisioning.model import TaskSpec, WorkflowSpec, new_submission
from provisioning.paths import DataPaths
from provisioning.store.jsonfile import JsonFileStore

store = JsonFileStore(DataPaths(Path(sys.argv[1])))
spec = WorkflowSpec(name="w", tasks=(TaskSpec(id="a", op="noop", params={"pad": "x" * 2000}),
                                     TaskSpec(id="b", op="noop", depends_on=("a",))))
for seq in range(1, 100_000):
    wid = str(uuid.uuid4())
    wrec, tasks = new_submission(wid, spec, last_seq=seq, now=time.time())
    store.add_workflow(wrec, tasks)
    store.save_task(dict(tasks[0], status="running", attempts=1))
    store.append_event(wid, {"seq": 1, "type": "task", "task": "a", "status": "running"})
    print(wid, flush=True)
"""

def child_env() -> dict[str, str]:
    return dict(os.environ)


@pytest.fixture
def paths(tmp_path: Path) -> DataPaths:
    return DataPaths(tmp_path / "data")


@pytest.mark.slow
def test_sigkill_of_a_writer_loses_no_acknowledged_record(paths: DataPaths):
    proc = subprocess.Popen([PYTHON, "-c", WRITER, str(paths.data_dir)], stdout=subprocess.PIPE,
                            text=True, env=child_env())
    acked: list[str] = []
    try:
        while len(acked) < 200:
            line = proc.stdout.readline()
            assert line, f"writer died early (rc={proc.poll()})"
            acked.append(line.strip())
        proc.send_signal(signal.SIGKILL)  # mid-way through the next workflow
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    store = JsonFileStore(paths)
    workflows, tasks = store.load()
    by_id = {w["id"]: w for w in workflows}
    assert set(acked) <= set(by_id)
    # At most the one workflow in flight at the kill may have committed unacknowledged.
    assert len(by_id) - len(acked) <= 1
    keys = [t["key"] for t in tasks]
    assert len(keys) == len(set(keys)) == 2 * len(by_id)
    for wid in acked:
        a, b = (t for t in tasks if t["workflow_id"] == wid)
        assert (a["status"], a["attempts"]) == ("running", 1)
        assert b["status"] == "queued"
        assert [e["seq"] for e in store.load_events(wid)] == [1]
    # Nothing partial: only an interrupted temp file may have been moved aside.
    moved = [p.name for p in paths.quarantine_dir.iterdir()]
    assert all(".tmp." in name for name in moved), moved
    assert len(moved) <= 3
    assert not [p for p in paths.data_dir.rglob("*") if p.name.endswith(".tmp")]


def test_threads_adding_workflows_at_once(paths: DataPaths):
    store = JsonFileStore(paths)
    spec = WorkflowSpec(name="t", tasks=(TaskSpec(id="t", op="noop"),))
    ids: list[str] = []
    guard = threading.Lock()

    def work(n: int) -> None:
        for _ in range(n):
            wid = str(uuid.uuid4())
            store.add_workflow(*new_submission(wid, spec, last_seq=1, now=time.time()))
            with guard:
                ids.append(wid)

    threads = [threading.Thread(target=work, args=(25,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    workflows, tasks = JsonFileStore(paths).load()
    assert sorted(w["id"] for w in workflows) == sorted(ids) and len(ids) == 200
    assert len(tasks) == 200


def test_lock_objects_are_flock_and_cached(paths: DataPaths):
    import filelock

    paths.data_dir.mkdir(parents=True)
    lock = locks.file_lock(paths.daemon_lock)
    assert lock is locks.file_lock(str(paths.daemon_lock))
    assert isinstance(lock, filelock.FileLock)
    assert not isinstance(lock, filelock.SoftFileLock)
    if locks._accepts_fallback_to_soft(filelock.FileLock):
        assert lock.fallback_to_soft is False
