"""Disk full: the data dir on a small tmpfs, filled up while the daemon runs.

Submissions must fail with 507 and a clear error, nothing accepted before may
be corrupted (also a task that finishes while the disk is full), and once
space returns the daemon takes work again without a restart.

Needs root (or CAP_SYS_ADMIN) to mount a tmpfs; skipped with the reason
otherwise. The mount is undone in a finalizer.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.daemon_fixture import start_daemon

SIZE = "8m"


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs",
                             str(mnt)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): "
                    f"{result.stderr.strip() or result.returncode}")
    started: list = []
    yield mnt, started
    for d in started:
        if d.alive():
            d.kill()
    log = mnt / "data" / "orchestrator.log"
    if log.exists():  # keep it for a post-mortem: the mount goes away
        (tmp_path / "orchestrator.log").write_bytes(log.read_bytes())
    subprocess.run(["umount", str(mnt)], capture_output=True)
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> None:
    """Write until ENOSPC; the file keeps what fitted."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    with open(path, "ab", buffering=0) as f:  # top off the last partial block
        for size in (4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def workflow(name: str, *tasks: dict) -> dict:
    return {"workflow": {"name": name}, "tasks": list(tasks) or [{"id": "a", "op": "noop"}]}


def test_disk_full_gives_507_corrupts_nothing_and_recovers(tmp_path: Path, small_fs):
    mnt, started = small_fs
    data = mnt / "data"
    gate = tmp_path / "gate"  # the slow task ends when this file appears
    cfg = {"storage": {"data_dir": str(data)},
           "executor": {"shutdown_grace_seconds": 2, "kill_grace_seconds": 1}}
    d = start_daemon(tmp_path, **cfg)
    started.append(d)
    status, body = d.request("POST", "/workflows", workflow("before"))
    assert status == 202
    before = body["workflow_id"]
    assert d.wait_workflow(before)["status"] == "succeeded"
    # a workflow whose task is running while the disk fills up, and finishes then
    waiter = ["/bin/sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done', str(gate)]
    status, body = d.request("POST", "/workflows", workflow(
        "during", {"id": "slow", "op": "shell.run", "params": {"argv": waiter}},
        {"id": "next", "op": "noop", "depends_on": ["slow"]}))
    assert status == 202
    during = body["workflow_id"]
    wait_for(lambda: d.request("GET", f"/tasks/{during}.slow")[1]["status"] == "running",
             timeout=30, what="the slow task to run")
    snapshot = {p: p.read_bytes() for p in (data / "workflows").iterdir()}

    filler = mnt / "filler"
    fill(filler)
    refused = 0
    for i in range(5):
        status, body = d.request("POST", "/workflows", workflow(f"full-{i}"))
        assert status == 507, (status, body)
        assert "no space" in body["error"], body
        refused += 1
    gate.touch()  # the running task finishes while nothing can be written
    wait_for(lambda: d.request("GET", f"/tasks/{during}.slow")[1]["status"] != "running"
             or not d.alive(), timeout=30, what="the slow task to end")
    assert d.alive() and d.health() is not None
    status, view = d.request("GET", f"/workflows/{before}")
    assert status == 200 and view["status"] == "succeeded"
    # nothing committed before the disk filled was changed or torn
    for path, content in snapshot.items():
        if path.name.startswith(before):
            assert path.read_bytes() == content
    for p in (data / "workflows").iterdir():
        json.loads(p.read_bytes())
    for p in (data / "queue").iterdir():
        json.loads(p.read_bytes())
    assert not [p for p in (data / "queue").iterdir() if p.name.startswith(".")], "temp debris"

    filler.unlink()  # space returns: no restart needed
    status, body = d.request("POST", "/workflows", workflow("after"))
    assert status == 202, body
    assert d.wait_workflow(body["workflow_id"])["status"] == "succeeded"
    final = d.wait_workflow(during, timeout=60)
    assert final["status"] == "succeeded", [(t["id"], t["status"], t["error"])
                                            for t in final["tasks"]]
    status, listing = d.request("GET", "/workflows")
    names = sorted(w["name"] for w in listing["workflows"])
    assert names == ["after", "before", "during"], names  # no refused one slipped in
    d.stop()

    # and a restart reads every record back
    d2 = start_daemon(tmp_path, **cfg)
    started.append(d2)
    status, listing = d2.request("GET", "/workflows")
    assert sorted((w["name"], w["status"]) for w in listing["workflows"]) == [
        ("after", "succeeded"), ("before", "succeeded"), ("during", "succeeded")]
    d2.stop()
    assert refused == 5
