"""The engine with real task processes: DAG order, parallelism, priority,
failure/skip/retry, cancel, timeouts, progress, events."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import psutil
import pytest

from provisioning.config import load_config
from provisioning.engine.engine import Engine
from provisioning.engine.loader import parse_workflow
from provisioning.errors import Conflict, NotFound, ServiceUnavailable, ValidationError
from provisioning.store.memory import MemoryStore
from tests.conftest import wait_for

# A test op: records start/end lines (name, time, pid) to params.log, can sleep,
# fail while a marker file exists, count its runs, and report progress/result.
STEP_OP = r'''
import json, os, sys, time
p = json.load(sys.stdin)
name = p.get("name") or os.environ["PROVISIONING_TASK_ID"].split(".", 1)[1]
def rec(what):
    with open(p["log"], "a") as f:
        f.write(json.dumps({"name": name, "what": what, "t": time.time(),
                            "pid": os.getpid()}) + "\n")
rec("start")
if p.get("token_file"):
    with open(p["token_file"] + ".tmp", "w") as f:
        f.write(os.environ["PROVISIONING_TASK_TOKEN"])
    os.replace(p["token_file"] + ".tmp", p["token_file"])
print("PROGRESS: 50 halfway", flush=True)
if p.get("sleep"):
    time.sleep(p["sleep"])
while p.get("wait_for") and not os.path.exists(p["wait_for"]):
    time.sleep(0.05)
if p.get("fail_if_exists") and os.path.exists(p["fail_if_exists"]):
    rec("fail")
    sys.exit(3)
if p.get("fail_times"):
    runs = sum(1 for r in map(json.loads, open(p["log"]))
               if r["name"] == name and r["what"] == "start")
    if runs <= p["fail_times"]:
        sys.exit(4)
rec("end")
print("RESULT: " + json.dumps({"name": name}))
'''


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    d = tmp_path / "lib" / "t"
    d.mkdir(parents=True)
    (d / "step.py").write_text(STEP_OP)
    return tmp_path / "lib"


def make_engine(tmp_path: Path, lib: Path, store=None, **executor) -> Engine:
    env = {"PROVISIONING_STORAGE_DATA_DIR": str(tmp_path / "data"),
           "PROVISIONING_EXECUTOR_LIB_DIRS": str(lib),
           "PROVISIONING_EXECUTOR_KILL_GRACE_SECONDS": "1"}
    env.update({f"PROVISIONING_EXECUTOR_{k.upper()}": str(v) for k, v in executor.items()})
    engine = Engine(store or MemoryStore(tmp_path / "files"), load_config(environ=env))
    engine.start()
    return engine


@pytest.fixture
def engines():
    started: list[Engine] = []
    yield started
    for e in started:
        e.shutdown(0)


def spec_of(engine: Engine, *tasks, **head):
    return parse_workflow({"workflow": {"name": "test", **head}, "tasks": list(tasks)},
                          source="test", registry=engine.registry)


def step(tid: str, log: Path, **params) -> dict:
    extra = {k: params.pop(k) for k in ("depends_on", "priority", "retries", "timeout_s")
             if k in params}
    return {"id": tid, "op": "t.step", "params": {"log": str(log), **params}, **extra}


def records(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def count(log: Path, name: str, what: str = "end") -> int:
    return sum(1 for r in records(log) if r["name"] == name and r["what"] == what)


def by_id(view: dict) -> dict[str, dict]:
    return {t["id"]: t for t in view["tasks"]}


def test_fan_out_join_deploy_runs_the_fan_out_in_parallel(tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib))
    log = tmp_path / "side.log"
    servers = [step(f"web-{i}", log, sleep=1.5) for i in range(5)]
    join = step("join", log, depends_on=[t["id"] for t in servers])
    deploy = step("deploy", log, depends_on=["join"])
    view = e.submit(spec_of(e, *servers, join, deploy, max_parallel=5))
    assert view["status"] == "queued" and view["counts"]["queued"] == 7
    final = e.wait(view["workflow_id"], timeout=60)
    assert final["status"] == "succeeded", final
    tasks = by_id(final)
    fan = [tasks[f"web-{i}"] for i in range(5)]
    # Overlap: every server started before any of them finished.
    assert max(t["started_at"] for t in fan) < min(t["finished_at"] for t in fan)
    starts = [r["t"] for r in records(log) if r["name"].startswith("web") and r["what"] == "start"]
    ends = [r["t"] for r in records(log) if r["name"].startswith("web") and r["what"] == "end"]
    assert len(starts) == 5 and max(starts) < min(ends)
    assert tasks["join"]["started_at"] >= max(t["finished_at"] for t in fan)
    assert tasks["deploy"]["started_at"] >= tasks["join"]["finished_at"]
    assert tasks["deploy"]["result"] == {"name": "deploy"} and tasks["deploy"]["progress"] == 100
    assert final["counts"]["succeeded"] == 7 and final["duration_s"] > 0


def test_priority_then_submission_order_with_max_parallel_1(tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib))
    log = tmp_path / "side.log"
    prios = ["low", "normal", "critical", "high", "normal", "low", "critical", "high",
             "normal", "high"]
    tasks = [step(f"t{i}", log, priority=p) for i, p in enumerate(prios)]
    final = e.wait(e.submit(spec_of(e, *tasks, max_parallel=1))["workflow_id"], timeout=60)
    assert final["status"] == "succeeded"
    order = [t["id"] for t in sorted(final["tasks"], key=lambda t: t["started_at"])]
    assert order == ["t2", "t6", "t3", "t7", "t9", "t1", "t4", "t8", "t0", "t5"]
    # never two at once
    spans = sorted((t["started_at"], t["finished_at"]) for t in final["tasks"])
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_failure_skips_dependents_other_branch_completes_and_retry_reruns_only_those(
        tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib))
    log, broken = tmp_path / "side.log", tmp_path / "broken"
    broken.touch()
    wf = e.submit(spec_of(e,
                          step("a1", log, fail_if_exists=str(broken)),
                          step("a2", log, depends_on=["a1"]),
                          step("a3", log, depends_on=["a2"]),
                          step("b1", log), step("b2", log, depends_on=["b1"])))
    wid = wf["workflow_id"]
    final = e.wait(wid, timeout=60)
    tasks = by_id(final)
    assert final["status"] == "failed"
    assert tasks["a1"]["status"] == "failed" and tasks["a1"]["exit_code"] == 3
    assert tasks["a1"]["error"] == "exit code 3"
    assert tasks["a2"]["status"] == tasks["a3"]["status"] == "skipped"
    assert tasks["a2"]["error"] == "dependency 'a1' failed"
    assert tasks["b1"]["status"] == tasks["b2"]["status"] == "succeeded"

    broken.unlink()  # fix the cause
    again = e.retry(wid)
    assert again["status"] == "queued"
    final = e.wait(wid, timeout=60)
    assert final["status"] == "succeeded"
    assert {n: count(log, n) for n in ("a1", "a2", "a3", "b1", "b2")} == \
        {"a1": 1, "a2": 1, "a3": 1, "b1": 1, "b2": 1}
    assert count(log, "a1", "start") == 2 and count(log, "b1", "start") == 1
    assert by_id(final)["a1"]["attempts"] == 2
    with pytest.raises(Conflict, match="nothing to retry"):
        e.retry(wid)


def test_retry_of_an_unfinished_workflow_is_a_conflict(tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib))
    gate = tmp_path / "gate"
    wid = e.submit(spec_of(e, step("a", tmp_path / "l", wait_for=str(gate))))["workflow_id"]
    with pytest.raises(Conflict, match="still"):
        e.retry(wid)
    gate.touch()
    assert e.wait(wid, timeout=30)["status"] == "succeeded"
    with pytest.raises(Conflict, match="already finished"):
        e.cancel(wid)


def test_retries_with_backoff_then_success(tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib))
    log = tmp_path / "side.log"
    wid = e.submit(spec_of(e, step("flaky", log, fail_times=2, retries=2)))["workflow_id"]
    final = e.wait(wid, timeout=60)
    flaky = by_id(final)["flaky"]
    assert final["status"] == "succeeded" and flaky["attempts"] == 3
    starts = [r["t"] for r in records(log) if r["what"] == "start"]
    assert starts[1] - starts[0] >= 0.45 and starts[2] - starts[1] >= 0.95  # 0.5 s, 1 s
    events = e.events(wid)
    assert any("retry 1/2 in 0.5s" in (ev["message"] or "") for ev in events)


def test_cancel_kills_running_and_cancels_pending(tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib))
    log = tmp_path / "side.log"
    wid = e.submit(spec_of(e, step("long", log, sleep=120), step("after", log,
                                                                  depends_on=["long"]),
                           step("other", log, sleep=120)))["workflow_id"]
    wait_for(lambda: len([r for r in records(log) if r["what"] == "start"]) == 2, timeout=30,
             what="both tasks running")
    pids = [r["pid"] for r in records(log)]
    view = e.cancel(wid)
    assert by_id(view)["after"]["status"] == "cancelled"
    final = e.wait(wid, timeout=30)
    assert final["status"] == "cancelled"
    assert {t["status"] for t in final["tasks"]} == {"cancelled"}
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    again = e.retry(wid)  # cancelled tasks can be retried
    assert again["counts"]["queued"] == 3
    e.cancel(wid)
    assert e.wait(wid, timeout=30)["status"] == "cancelled"


def test_timeout_fails_the_task_and_records_it(tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib))
    wid = e.submit(spec_of(e, step("slow", tmp_path / "l", sleep=60, timeout_s=1)))["workflow_id"]
    final = e.wait(wid, timeout=30)
    slow = by_id(final)["slow"]
    assert final["status"] == "failed" and slow["status"] == "failed"
    assert slow["error"] == "timeout after 1s" and slow["signal"] is not None
    assert "timeout after 1s" in e.task_log_path(slow["key"]).read_text()


def test_global_limit_across_workflows(tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib, max_concurrent_tasks=2))
    log = tmp_path / "side.log"
    wids = [e.submit(spec_of(e, *[step(f"w{w}t{i}", log, sleep=0.3) for i in range(3)]))
            ["workflow_id"] for w in range(2)]
    spans = []
    for wid in wids:
        final = e.wait(wid, timeout=60)
        assert final["status"] == "succeeded"
        spans += [(t["started_at"], t["finished_at"]) for t in final["tasks"]]
    for start, _ in spans:
        assert sum(1 for s, f in spans if s <= start < f) <= 2


def test_progress_token_events_and_views(tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib))
    gate, token_file = tmp_path / "gate", tmp_path / "token"
    wid = e.submit(spec_of(e, step("a", tmp_path / "l", wait_for=str(gate),
                                   token_file=str(token_file)),
                           step("b", tmp_path / "l", depends_on=["a"])))["workflow_id"]
    key = f"{wid}.a"
    wait_for(token_file.exists, timeout=30, what="task token")
    token = token_file.read_text()
    assert e.check_task_token(key, token)
    assert not e.check_task_token(f"{wid}.b", token)
    assert not e.check_task_token(key, token + "x")
    wait_for(lambda: e.get_task(key)["progress"] == 50, timeout=30, what="stdout progress")
    view = e.report_progress(key, 70, "running", "copying image")
    assert view["progress"] == 70 and view["message"] == "copying image"
    assert view["pid"] and view["status"] == "running" and view["attempts"] == 1
    with pytest.raises(Conflict):
        e.report_progress(f"{wid}.b", 10, None, None)
    seen = e.events(wid)
    last = seen[-1]["seq"]
    assert [ev["seq"] for ev in seen] == list(range(1, last + 1))
    assert any(ev["type"] == "progress" and ev["progress"] == 70 for ev in seen)
    t0 = time.monotonic()
    assert e.events(wid, after=last, timeout=0.3) == []  # long-poll times out empty
    assert time.monotonic() - t0 >= 0.25
    gate.touch()
    newer = e.events(wid, after=last, timeout=30)
    assert newer and newer[0]["seq"] == last + 1
    e.wait(wid, timeout=30)
    assert not e.check_task_token(key, token)  # only good while it runs
    summary = e.list_workflows()[0]
    assert summary["workflow_id"] == wid and "tasks" not in summary
    assert e.list_workflows(status="succeeded")[0]["workflow_id"] == wid
    assert e.list_workflows(status="failed") == []
    st = e.stats()
    assert st["workflows"]["succeeded"] == 1 and st["tasks_running"] == 0


def test_ids_are_validated_before_any_lookup(tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib))
    for bad in ("../../etc/passwd", "", "x" * 300, str(uuid.uuid4()) + "/..", "A" * 36):
        with pytest.raises(NotFound):
            e.get_workflow(bad)
        with pytest.raises(NotFound):
            e.task_log_path(bad + ".a")
    with pytest.raises(NotFound):
        e.get_workflow(str(uuid.uuid4()))
    with pytest.raises(NotFound):
        e.get_task(f"{uuid.uuid4()}.../x")
    assert not e.check_task_token("../x", "t")


def test_submit_checks_ops_and_stop_accepting(tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib))
    unchecked = parse_workflow({"tasks": [{"id": "a", "op": "nope.nothing"}]}, source="x",
                               registry=None)
    with pytest.raises(ValidationError, match="unknown op 'nope.nothing'"):
        e.submit(unchecked)
    e.stop_accepting()
    with pytest.raises(ServiceUnavailable):
        e.submit(spec_of(e, {"id": "a", "op": "noop"}))


def count_tasks(store: MemoryStore) -> int:
    return len(store.tasks)


def test_shutdown_requeues_running_tasks(tmp_path, lib):
    store = MemoryStore(tmp_path / "files")
    e = make_engine(tmp_path, lib, store=store)
    log = tmp_path / "side.log"
    wid = e.submit(spec_of(e, step("a", log, sleep=120)))["workflow_id"]
    wait_for(lambda: records(log), timeout=30, what="task start")
    pid = records(log)[0]["pid"]
    e.shutdown(0.2)
    task = store.tasks[f"{wid}.a"]
    assert task["status"] == "queued" and task["lease"] is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    e2 = make_engine(tmp_path, lib, store=store)  # a restart resumes it
    try:
        e2.cancel(wid)
        assert e2.wait(wid, timeout=30)["status"] == "cancelled"
    finally:
        e2.shutdown(0)


def test_task_env_carries_the_protocol_variables(tmp_path, lib, engines):
    engines.append(e := make_engine(tmp_path, lib))
    (lib / "t" / "env.py").write_text(
        "import json, os\nprint('RESULT: ' + json.dumps(dict(os.environ)))\n")
    os.environ["SOME_SECRET_TOKEN"] = "s3cret"
    try:
        wid = e.submit(spec_of(e, {"id": "x", "op": "t.env"}))["workflow_id"]
        env = by_id(e.wait(wid, timeout=30))["x"]["result"]
    finally:
        del os.environ["SOME_SECRET_TOKEN"]
    assert "SOME_SECRET_TOKEN" not in env
    assert env["PROVISIONING_TASK_ID"] == f"{wid}.x"
    assert env["PROVISIONING_WORKFLOW_ID"] == wid
    assert env["PROVISIONING_LIB"] == str(lib)
    assert env["PROVISIONING_STORAGE_DATA_DIR"] == str(tmp_path / "data")
    assert env["PROVISIONING_CHECKPOINT"].endswith(f"{wid}/x.json")
    assert env["PROVISIONING_TASK_TOKEN"] == "***"  # a secret by name: redacted from its result
    assert "PROVISIONING_ENDPOINT" not in env
