"""Crash recovery: the engine is SIGKILLed mid-workflow, a new one finishes it.

Every task that had succeeded ran exactly once; in-flight ones re-run (at-least-
once) only after the leftover process tree of the dead engine was killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from provisioning import model
from provisioning.config import load_config
from provisioning.engine.engine import Engine
from provisioning.engine.loader import parse_workflow
from provisioning.store import jsonfile
from provisioning.store.memory import MemoryStore
from tests.conftest import wait_for

# Side effect first, then the checkpoint that says "done" (PROVISIONING_CHECKPOINT).
STEP_OP = r'''
import json, os, sys, time
p = json.load(sys.stdin)
name = os.environ["PROVISIONING_TASK_ID"].split(".", 1)[1]
def rec(what):
    with open(p["log"], "a") as f:
        f.write(json.dumps({"name": name, "what": what, "pid": os.getpid(),
                            "t": time.time()}) + "\n")
rec("start")
time.sleep(p.get("sleep", 0))
rec("end")
cp = os.environ["PROVISIONING_CHECKPOINT"]
with open(cp + ".tmp", "w") as f:
    json.dump({"done": True, "result": {"name": name}}, f)
os.replace(cp + ".tmp", cp)
print("RESULT: " + json.dumps({"name": name}))
'''

ENGINE_CHILD = textwrap.dedent('''
    import json, os, sys, threading
    from provisioning.config import load_config
    from provisioning.engine.engine import Engine
    from provisioning.engine.loader import parse_workflow
    from provisioning.store.jsonfile import JsonFileStore
    spec_file, id_file = sys.argv[1:]
    config = load_config()
    engine = Engine(JsonFileStore(config.data_paths()), config, instance_id="doomed")
    engine.start()
    spec = parse_workflow(json.load(open(spec_file)), source=spec_file, registry=engine.registry)
    wid = engine.submit(spec)["workflow_id"]
    open(id_file + ".tmp", "w").write(wid)
    os.replace(id_file + ".tmp", id_file)
    threading.Event().wait()
''')


def _setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    lib = tmp_path / "lib"
    (lib / "t").mkdir(parents=True)
    (lib / "t" / "step.py").write_text(STEP_OP)
    env = {"PROVISIONING_STORAGE_DATA_DIR": str(tmp_path / "data"),
           "PROVISIONING_EXECUTOR_LIB_DIRS": str(lib),
           "PROVISIONING_EXECUTOR_KILL_GRACE_SECONDS": "1",
           "PROVISIONING_FSYNC": "0"}  # a process kill, not a power cut: fsync is not at stake
    return lib, env


def _records(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


KILL_POINTS = {
    # name: condition on the side-effect log at which the engine gets SIGKILL
    "first-task-running": lambda recs: any(r["name"] == "a" for r in recs),
    "fan-out-running": lambda recs: sum(r["name"].startswith("b") and r["what"] == "start"
                                        for r in recs) >= 2,
    "join-running": lambda recs: any(r["name"] == "c" for r in recs),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_mid_workflow_then_a_new_engine_finishes_it(tmp_path, point, monkeypatch):
    lib, env = _setup(tmp_path)
    log = tmp_path / "side.log"
    tasks = [{"id": "a", "op": "t.step", "params": {"log": str(log), "sleep": 0.5}}]
    tasks += [{"id": f"b{i}", "op": "t.step", "params": {"log": str(log), "sleep": 2},
               "depends_on": ["a"]} for i in range(3)]
    tasks += [{"id": "c", "op": "t.step", "params": {"log": str(log), "sleep": 2},
               "depends_on": ["b0", "b1", "b2"]},
              {"id": "d", "op": "t.step", "params": {"log": str(log)}, "depends_on": ["c"]}]
    spec_file, id_file = tmp_path / "wf.json", tmp_path / "wid"
    spec_file.write_text(json.dumps({"workflow": {"name": "crash"}, "tasks": tasks}))
    child = subprocess.Popen([sys.executable, "-c", ENGINE_CHILD, str(spec_file), str(id_file)],
                             env={**os.environ, **env})
    try:
        wait_for(lambda: KILL_POINTS[point](_records(log)), timeout=60, what=point)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    wid = id_file.read_text()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config = load_config()
    store = jsonfile.JsonFileStore(config.data_paths())
    _, at_kill = store.load()
    succeeded_at_kill = {t["id"] for t in at_kill if t["status"] == "succeeded"}
    running_at_kill = {t["id"]: (t.get("lease") or {}).get("pid") for t in at_kill
                       if t["status"] == "running"}
    assert running_at_kill, "the kill should land while tasks run"

    engine = Engine(store, config, instance_id="phoenix")
    engine.start()
    try:
        # The dead engine's task processes were killed before anything re-ran.
        for pid in running_at_kill.values():
            if pid:
                assert _dead(pid), f"leftover task process {pid} survived recovery"
        final = engine.wait(wid, timeout=90)
    finally:
        engine.shutdown(0)
    assert final["status"] == "succeeded", final
    recs = _records(log)
    ends = {t: sum(1 for r in recs if r["name"] == t and r["what"] == "end")
            for t in ("a", "b0", "b1", "b2", "c", "d")}
    for t in succeeded_at_kill:
        assert ends[t] == 1, f"{t} succeeded before the crash but ran again"
    assert all(n >= 1 for n in ends.values()), ends
    # Never two runs of one task at once: every re-run started after the old one died.
    for t in running_at_kill:
        starts = sorted(r["t"] for r in recs if r["name"] == t and r["what"] == "start")
        assert len(starts) in (1, 2)
    tasks_after = {t["id"]: t for t in final["tasks"]}
    for t in running_at_kill:
        assert tasks_after[t]["result"] == {"name": t}


def _spawn_leftover(key: str, seconds: int = 120) -> psutil.Process:
    p = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"],
                         env={**os.environ, "PROVISIONING_TASK_ID": key},
                         start_new_session=True)
    return psutil.Process(p.pid)


def test_recovery_kills_leftovers_honours_checkpoints_and_keeps_successes(tmp_path):
    files = tmp_path / "files"
    store = MemoryStore(files)
    spec = parse_workflow({"workflow": {"name": "r"}, "tasks": [
        {"id": "alive", "op": "noop"}, {"id": "done", "op": "noop"},
        {"id": "ok", "op": "noop"}, {"id": "next", "op": "noop",
                                     "depends_on": ["alive", "done", "ok"]}]}, source="t")
    wid, now = "6a1d3e0c-5b7f-4c1e-9a2b-3c4d5e6f7a8b", time.time()
    wrec, trecs = model.new_submission(wid, spec, last_seq=0, now=now)
    wrec.update(status="running", started_at=now)
    alive, done, ok, nxt = trecs
    leftover = _spawn_leftover(alive["key"])
    alive.update(status="running", attempts=1, lease={
        "token": 7, "owner": "old", "pid": leftover.pid,
        "pid_create_time": leftover.create_time()})
    done.update(status="running", attempts=1, lease={"token": 8, "owner": "old", "pid": None,
                                                   "pid_create_time": None})
    Path(store.checkpoint_path(wid, "done")).write_text(json.dumps({"done": True,
                                                                    "result": 5}))
    ok.update(status="succeeded", attempts=1, result="kept", progress=100)
    store.add_workflow(wrec, trecs)
    config = load_config(environ={"PROVISIONING_STORAGE_DATA_DIR": str(tmp_path / "data"),
                                  "PROVISIONING_EXECUTOR_KILL_GRACE_SECONDS": "1"})
    engine = Engine(store, config, instance_id="new")
    engine.start()
    try:
        assert _dead(leftover.pid)
        final = engine.wait(wid, timeout=30)
    finally:
        engine.shutdown(0)
    tasks = {t["id"]: t for t in final["tasks"]}
    assert final["status"] == "succeeded"
    assert tasks["done"]["result"] == 5 and tasks["done"]["attempts"] == 1  # not re-run
    assert tasks["ok"]["result"] == "kept" and tasks["ok"]["attempts"] == 1
    assert tasks["alive"]["attempts"] == 2  # re-run once, after the leftover died
    assert store.tasks[alive["key"]]["history"][0]["status"] == "interrupted"
    # Lease tokens keep growing across restarts (fencing).
    assert store.tasks[nxt["key"]]["last_lease_token"] > 8


def test_a_cancel_requested_before_the_crash_finishes_as_cancelled(tmp_path):
    store = MemoryStore(tmp_path / "files")
    spec = parse_workflow({"tasks": [{"id": "a", "op": "noop"},
                                     {"id": "b", "op": "noop", "depends_on": ["a"]}]},
                          source="t")
    wid, now = "0b1d3e0c-5b7f-4c1e-9a2b-3c4d5e6f7a8b", time.time()
    wrec, (a, b) = model.new_submission(wid, spec, last_seq=0, now=now)
    wrec.update(status="running", cancel_requested=True)
    a.update(status="running", attempts=1, lease={"token": 1, "owner": "x", "pid": None,
                                                 "pid_create_time": None})
    b.update(status="cancelled")
    store.add_workflow(wrec, [a, b])
    engine = Engine(store, load_config(environ={
        "PROVISIONING_STORAGE_DATA_DIR": str(tmp_path / "d")}))
    engine.start()
    try:
        assert engine.get_workflow(wid)["status"] == "cancelled"
    finally:
        engine.shutdown(0)
