"""Crash matrix: kill -9 the real daemon at randomized points of a 50-task DAG.

Each iteration: a fresh data dir, a daemon, one 50-task DAG whose tasks are
`shell.run` of a tiny sh script that appends its task id to a side-effect log
(and, for every other task, finishes with a `{"done": true}` checkpoint, the
exactly-once protocol of docs/engine.md). The daemon is killed with SIGKILL at
one of four kinds of moment, then restarted on the same data dir:

- submit:     while the POST /workflows is being handled (0-150 ms after sending);
- start:      0-120 ms after the 202, while the first tasks are being claimed/spawned;
- mid:        once N (random) task runs have happened, while others are running;
- checkpoint: while a record or checkpoint write is in flight (a temp file exists
              in queue/, workflows/ or checkpoints/).

After the kill and before the restart the durable state is read (the daemon is
dead, so it is exactly what it left): every record file parses, every task
file belongs to the workflow (a task file may be missing: a new workflow's
task files are written after its workflow file, which holds the spec they
are rebuilt from), and the tasks recorded `succeeded` are noted. After the
restart the workflow must succeed; each noted task ran exactly once; every task
ran at least once and at most twice; quarantine holds nothing but leftover temp
files. The seed is printed on failure (CRASH_SEED to replay).

The matrix runs twice: with the sh script through `shell.run` (a plain spawn),
and with the same task as a Python extension op, forked from the daemon's
Python zygote (engine/zygote.py), whose children recovery must find and kill
like any other task process.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for
from tests.daemon_fixture import start_daemon

TASKS = 50
KINDS = ("submit", "start", "mid", "checkpoint")
STATS: dict[str, int] = {"iterations": 0, "duplicates": 0, "succeeded_at_kill": 0,
                         "lost_submissions": 0}

# $1 task id, $2 side-effect log, $3 sleep seconds, $4 "ck" to use the checkpoint protocol
TASK_SCRIPT = """#!/bin/sh
if [ "$4" = ck ] && [ -s "$PROVISIONING_CHECKPOINT" ]; then exit 0; fi
echo "PROGRESS: 10 started"
echo "$1" >> "$2"
echo "PROGRESS: 50 effect written"
sleep "$3"
if [ "$4" = ck ]; then
  printf '{"done": true, "result": "%s"}' "$1" > "$PROVISIONING_CHECKPOINT.part"
  mv "$PROVISIONING_CHECKPOINT.part" "$PROVISIONING_CHECKPOINT"
fi
echo "PROGRESS: 90 done"
"""

# The same task as a Python op (lib dir <base>/lib, op `crash.task`): params on stdin.
PYTHON_TASK = """
import json, os, sys, time
p = json.load(sys.stdin)
ck = os.environ["PROVISIONING_CHECKPOINT"]
if p["ck"] and os.path.exists(ck) and os.path.getsize(ck):
    sys.exit(0)
print("PROGRESS: 10 started", flush=True)
with open(p["effects"], "a") as f:
    f.write(p["id"] + "\\n")
print("PROGRESS: 50 effect written", flush=True)
time.sleep(float(p["sleep"]))
if p["ck"]:
    with open(ck + ".part", "w") as f:
        f.write(json.dumps({"done": True, "result": p["id"]}))
    os.rename(ck + ".part", ck)
print("PROGRESS: 90 done", flush=True)
"""


def python_op_lib(base: Path, name: str, code: str) -> Path:
    """A lib dir holding op `crash.<name>`."""
    lib = base / "lib"
    (lib / "crash").mkdir(parents=True, exist_ok=True)
    (lib / "crash" / f"{name}.py").write_text(code)
    return lib


def dag(rng: random.Random, script: Path, effects: Path, ops: str = "shell") -> dict:
    tasks = []
    for i in range(TASKS):
        earlier = list(range(max(0, i - 8), i))
        deps = rng.sample(earlier, k=min(len(earlier), rng.randint(0, 2)))
        pause = rng.choice(["0", "0", "0.02", "0.05", "0.1"])
        argv = ["/bin/sh", str(script), f"t{i:02d}", str(effects), pause,
                "ck" if i % 2 else "plain"]
        task = ({"op": "shell.run", "params": {"argv": argv}} if ops == "shell" else
                {"op": "crash.task", "params": {"id": f"t{i:02d}", "effects": str(effects),
                                                "sleep": pause, "ck": bool(i % 2)}})
        tasks.append({"id": f"t{i:02d}", **task,
                      "depends_on": [f"t{d:02d}" for d in sorted(deps)]})
    return {"workflow": {"name": "crash-dag", "max_parallel": 8}, "tasks": tasks}


def record_files(directory: Path) -> list[Path]:
    return [p for p in directory.glob("*.json") if not p.name.startswith(".")]


def durable_state(data: Path) -> tuple[list[dict], list[dict]]:
    """Every workflow and task record; each must parse (no partial file)."""
    workflows = [json.loads(p.read_bytes()) for p in record_files(data / "workflows")]
    tasks = [json.loads(p.read_bytes()) for p in record_files(data / "queue")]
    return workflows, tasks


def write_in_flight(data: Path) -> bool:
    for sub in ("queue", "workflows", "checkpoints"):
        base = data / sub
        for _dirpath, _, files in os.walk(base):
            if any(f.endswith((".tmp", ".part")) for f in files):
                return True
    return False


def effect_counts(effects: Path) -> Counter:
    if not effects.exists():
        return Counter()
    return Counter(line for line in effects.read_text().splitlines() if line)


def kill_at(d, kind: str, rng: random.Random, spec: dict, effects: Path, *,
            in_flight: Callable[[], bool]) -> list[str]:
    """Kill daemon ``d`` (SIGKILL) at a moment of ``kind`` (KINDS; "checkpoint": while
    ``in_flight()`` says a write is under way); the workflow ids it acknowledged."""
    accepted: list[str] = []

    def submit() -> None:
        try:
            status, body = d.request("POST", "/workflows", spec, timeout=10)
        except (OSError, http.client.HTTPException):  # e.g. IncompleteRead
            return  # the daemon died under the request: the client never got an id
        if status == 202:
            accepted.append(body["workflow_id"])

    if kind == "submit":
        sender = threading.Thread(target=submit)
        sender.start()
        time.sleep(rng.uniform(0, 0.15))  # a random kill point, not a wait for anything
        d.kill()
        sender.join(timeout=30)
        return accepted
    submit()
    assert accepted, "submission refused"
    if kind == "start":
        time.sleep(rng.uniform(0, 0.12))  # a random kill point
    elif kind == "mid":
        runs = rng.randint(3, TASKS - 5)
        wait_for(lambda: sum(effect_counts(effects).values()) >= runs, timeout=60,
                 interval=0.005, what=f"{runs} task runs")
    else:
        wait_for(in_flight, timeout=60, interval=0.001, what="a write in flight")
    d.kill()
    return accepted


def check_effects(effects: Path, succeeded_at_kill: set[str]) -> Counter:
    """Every task ran, none more than twice, none recorded succeeded before the kill
    ran again; the runs per task."""
    counts = effect_counts(effects)
    expected = {f"t{i:02d}" for i in range(TASKS)}
    assert set(counts) == expected, f"never ran: {sorted(expected - set(counts))}"
    twice = {t: n for t, n in counts.items() if n > 1}
    assert all(n <= 2 for n in counts.values()), f"ran more than twice: {twice}"
    again = {t: counts[t] for t in succeeded_at_kill if counts[t] != 1}
    assert not again, f"tasks recorded succeeded before the kill ran again: {again}"
    return counts


def crash_iteration(base: Path, rng: random.Random, kind: str,
                    ops: str = "shell") -> dict[str, int]:
    base.mkdir()
    data = base / "data"
    script = base / "task.sh"
    script.write_text(TASK_SCRIPT)
    effects = base / "effects.log"
    cfg = {"storage": {"data_dir": str(data)},
           "executor": {"max_concurrent_tasks": 8, "checkpoint_interval_seconds": 0,
                        "shutdown_grace_seconds": 5, "kill_grace_seconds": 1}}
    if ops == "python":  # forked by the zygote (on by default on Linux; said here)
        cfg["executor"]["lib_dirs"] = [str(python_op_lib(base, "task", PYTHON_TASK))]
        cfg["executor"]["python_zygote"] = True
    spec = dag(rng, script, effects, ops)
    accepted = kill_at(start_daemon(base, **cfg), kind, rng, spec, effects,
                       in_flight=lambda: write_in_flight(data))

    # The daemon is dead: this is exactly the durable state it left.
    workflows, tasks = durable_state(data)
    assert len(workflows) <= 1
    if accepted:
        assert [w["id"] for w in workflows] == accepted, "an accepted submission was lost"
    succeeded_at_kill: set[str] = set()
    if workflows:
        wf = workflows[0]
        mine = [t for t in tasks if t["workflow_id"] == wf["id"]]
        assert len(wf["task_ids"]) == TASKS
        assert len(mine) == len({t["id"] for t in mine}) <= TASKS, "extra task files"
        assert {t["id"] for t in mine} <= set(wf["task_ids"]), "foreign task files"
        succeeded_at_kill = {t["id"] for t in mine if t["status"] == "succeeded"}

    d2 = start_daemon(base, **cfg)
    if workflows:
        workflow_id = workflows[0]["id"]
    else:  # torn before the commit point: the client got no id, so it submits again
        STATS["lost_submissions"] += 1
        status, body = d2.request("POST", "/workflows", spec)
        assert status == 202, body
        workflow_id = body["workflow_id"]
    view = d2.wait_workflow(workflow_id, timeout=120)
    assert view["status"] == "succeeded", [
        (t["id"], t["status"], t["error"]) for t in view["tasks"] if t["status"] != "succeeded"]
    status, listing = d2.request("GET", "/workflows")
    assert [w["workflow_id"] for w in listing["workflows"]] == [workflow_id]
    d2.stop()

    counts = check_effects(effects, succeeded_at_kill)
    # nothing partial or lost: every record parses, counts match, only temp debris quarantined
    workflows, tasks = durable_state(data)
    assert len(workflows) == 1 and len(tasks) == TASKS
    assert all(t["status"] == "succeeded" for t in tasks)
    quarantined = [p.name for p in (data / "quarantine").iterdir()]
    assert all(".tmp" in name for name in quarantined), quarantined
    return {"duplicates": sum(n - 1 for n in counts.values()),
            "succeeded_at_kill": len(succeeded_at_kill)}


def run_matrix(tmp_path: Path, iterations: int, ops: str = "shell") -> None:
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    for i in range(iterations):
        kind = KINDS[i % len(KINDS)]
        try:
            result = crash_iteration(tmp_path / f"it{i:02d}", rng, kind, ops)
        except BaseException as e:
            raise AssertionError(f"iteration {i} (kill during {kind}, {ops} ops), "
                                 f"CRASH_SEED={seed}: {e}") from e
        STATS["iterations"] += 1
        STATS["duplicates"] += result["duplicates"]
        STATS["succeeded_at_kill"] += result["succeeded_at_kill"]
    print(f"\ncrash matrix ({ops} ops): {STATS} (seed {seed})")


@pytest.mark.parametrize("ops", ["shell", "python"])
def test_crash_matrix_one_round_of_each_kill_point(tmp_path: Path, ops: str):
    run_matrix(tmp_path, len(KINDS), ops)


@pytest.mark.slow
@pytest.mark.parametrize("ops", ["shell", "python"])
def test_crash_matrix_30_iterations(tmp_path: Path, ops: str):
    run_matrix(tmp_path, 32, ops)


LONG_PYTHON_TASK = """
import json, sys, time
p = json.load(sys.stdin)
with open(p["marker"], "a") as f:
    f.write("start\\n")
time.sleep(30)
with open(p["marker"], "a") as f:
    f.write("end\\n")
"""


@pytest.mark.parametrize("ops", ["shell", "python"])
def test_orphaned_task_of_a_killed_daemon_is_stopped_before_it_runs_again(tmp_path: Path,
                                                                          ops: str):
    """A task still running when the daemon died never runs twice at the same time
    (a Python op: also when it was forked by the daemon's zygote, which died too)."""
    base = tmp_path / "orphan"
    base.mkdir()
    marker = base / "running.txt"
    script = base / "long.sh"
    # records "start" and "end"; a second start before an end would mean overlap
    script.write_text('#!/bin/sh\necho start >> "$1"\nsleep 30\necho end >> "$1"\n')
    cfg = {"storage": {"data_dir": str(base / "data")},
           "executor": {"kill_grace_seconds": 1, "shutdown_grace_seconds": 1,
                        "lib_dirs": [str(python_op_lib(base, "long", LONG_PYTHON_TASK))]}}
    d = start_daemon(base, **cfg)
    zygote = None
    if ops == "python":  # forked by the zygote, not spawned: wait until it serves
        zygote = wait_for(lambda: d.health()["python_zygote_pid"], timeout=60,
                          what="the zygote")
    task = ({"op": "shell.run", "params": {"argv": ["/bin/sh", str(script), str(marker)]}}
            if ops == "shell" else {"op": "crash.long", "params": {"marker": str(marker)}})
    status, body = d.request("POST", "/workflows", {"tasks": [{"id": "long", **task}]})
    assert status == 202
    key = f"{body['workflow_id']}.long"
    pid = wait_for(lambda: d.request("GET", f"/tasks/{key}")[1].get("pid"), timeout=30,
                   what="the task's pid")
    if zygote is not None:
        assert psutil.Process(pid).ppid() == zygote
    d.kill()
    os.kill(pid, 0)  # the task outlived its daemon (own session)
    d2 = start_daemon(base, **cfg)
    wait_for(lambda: marker.read_text().count("start") == 2, timeout=30,
             what="the task to be started again")
    assert "end" not in marker.read_text()  # the first run was killed, not left running
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    d2.request("POST", f"/workflows/{body['workflow_id']}/cancel")
    d2.wait_workflow(body["workflow_id"], timeout=30)
    d2.stop()
