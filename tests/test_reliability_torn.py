"""Torn writes: truncated and garbage files in the queue are quarantined and reported.

The daemon is stopped, files a crash, a power loss (persist-queue's NUL-filled
files) or a stray editor could leave are planted in every directory it reads
at start, and it is started again: it must serve, keep every good record,
move each bad file to quarantine/ (bytes kept), name it in its log, and still
run new work.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from tests.daemon_fixture import start_daemon

CFG = {"executor": {"shutdown_grace_seconds": 2, "kill_grace_seconds": 1}}


def noop_workflow(name: str) -> dict:
    return {"workflow": {"name": name}, "tasks": [{"id": "a", "op": "noop"},
                                                  {"id": "b", "op": "noop", "depends_on": ["a"]}]}


def plant(data: Path, good_id: str) -> dict[str, bytes]:
    """Write the bad files; returns {relative path: bytes}."""
    good_wf = (data / "workflows" / f"{good_id}.json").read_bytes()
    good_task = (data / "queue" / f"{good_id}.a.json").read_bytes()
    ids = [str(uuid.uuid4()) for _ in range(11)]
    task_of = json.loads(good_task)
    task_of.update(workflow_id=ids[6], key=f"{ids[6]}.a")
    bad = {
        f"workflows/{ids[0]}.json": good_wf[: len(good_wf) // 2],          # truncated
        f"workflows/{ids[1]}.json": b"\x00" * 512,                          # NUL-filled
        f"workflows/{ids[2]}.json": b"",                                    # empty
        f"workflows/{ids[3]}.json": b"[1, 2, 3]",                           # not an object
        f"workflows/{ids[4]}.json": json.dumps({"schema": 1, "kind": "task"}).encode(),
        f"workflows/.{ids[5]}.json.x1y2.tmp": good_wf[:10],                 # interrupted write
        f"queue/{ids[7]}.a.json": good_task[: len(good_task) // 3],         # truncated
        f"queue/{ids[8]}.a.json": os.urandom(300),                          # garbage
        f"queue/{ids[9]}.a.json": json.dumps({"schema": 99, "kind": "task"}).encode(),
        f"queue/.{ids[10]}.a.json.k3.tmp": b'{"schema": 1, "ki',
        "queue/notes.txt": b"someone's notes\n",
    }
    for rel, content in bad.items():
        path = data / rel
        path.write_bytes(content)
    # a torn submission: task file written, workflow file (the commit point) never renamed
    orphan = data / "queue" / f"{ids[6]}.a.json"
    orphan.write_text(json.dumps(task_of))
    (data / "queue" / "a-directory").mkdir()
    return bad


def test_garbage_and_truncated_files_are_quarantined_and_the_daemon_serves(tmp_path: Path):
    d = start_daemon(tmp_path, **CFG)
    status, body = d.request("POST", "/workflows", noop_workflow("good"))
    assert status == 202
    good_id = body["workflow_id"]
    assert d.wait_workflow(good_id)["status"] == "succeeded"
    d.stop()
    data = d.data_dir
    events = data / "events" / f"{good_id}.jsonl"
    events_before = events.read_bytes()
    with open(events, "ab") as f:
        f.write(b'{"seq": 99, "ts": 1, "ty')  # torn last line of the event log
    bad = plant(data, good_id)

    d2 = start_daemon(tmp_path, **CFG)
    assert d2.health()["status"] == "healthy"
    # every good record is intact
    status, wf = d2.request("GET", f"/workflows/{good_id}")
    assert status == 200 and wf["status"] == "succeeded"
    assert [t["status"] for t in wf["tasks"]] == ["succeeded", "succeeded"]
    status, listing = d2.request("GET", "/workflows")
    assert [w["workflow_id"] for w in listing["workflows"]] == [good_id]
    status, ev = d2.request("GET", f"/workflows/{good_id}/events")
    assert status == 200 and len(ev["events"]) == events_before.count(b"\n")
    # every bad file left its directory and sits in quarantine with its bytes
    quarantine = data / "quarantine"
    kept = [p.read_bytes() for p in quarantine.iterdir() if p.is_file()]
    for rel, content in bad.items():
        assert not (data / rel).exists(), f"{rel} was not moved aside"
        assert content in kept, f"{rel}: bytes not kept in quarantine"
    assert not (data / "queue" / "a-directory").exists()
    assert not any(p.name.endswith(".a.json") and p.name.split(".")[0] not in (good_id,)
                   for p in (data / "queue").iterdir()), "orphan task file left in queue/"
    # ... and reported: the log names each quarantined file
    log = (data / "orchestrator.log").read_text()
    for rel in bad:
        assert Path(rel).name in log, f"{rel} not reported in the log"
    assert "orphan task file" in log
    assert "Traceback" not in log
    # ... and counted by /health, so an operator sees it without reading the log
    quarantined = sum(1 for p in quarantine.iterdir())
    assert quarantined >= len(bad)
    assert d2.health()["queue"]["quarantined_files"] == quarantined
    # new work runs, its events append on a fresh line after the torn one
    status, body = d2.request("POST", "/workflows", noop_workflow("after"))
    assert status == 202
    assert d2.wait_workflow(body["workflow_id"])["status"] == "succeeded"
    status, ev2 = d2.request("GET", f"/workflows/{good_id}/events")
    assert status == 200 and ev2["events"] == ev["events"]
    d2.stop()
