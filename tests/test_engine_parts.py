"""The engine's parts, each built alone with exactly what it needs: the flow
index, the transitions, the scheduler (with a stand-in launcher whose
"processes" are events), the committer and the launcher. The whole engine
with real processes is tests/test_engine.py."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from provisioning import model
from provisioning.engine.commit import DONE, Committer
from provisioning.engine.executor import TaskOutcome
from provisioning.engine.flows import FlowIndex
from provisioning.engine.journal import Journal
from provisioning.engine.launch import TaskLauncher
from provisioning.engine.scheduler import Scheduler
from provisioning.engine.transitions import SHUTDOWN, Transitions
from provisioning.errors import ValidationError
from provisioning.model import TaskSpec, WorkflowSpec
from provisioning.store.memory import MemoryStore
from tests.conftest import wait_for


def submission(*tasks: TaskSpec, last_seq: int = 0, max_parallel: int | None = None):
    spec = WorkflowSpec(name="w", tasks=tasks, max_parallel=max_parallel)
    return model.new_submission(str(uuid.uuid4()), spec, last_seq=last_seq, now=time.time())


def T(tid: str, *deps: str, priority: str = "normal", retries: int = 0) -> TaskSpec:
    return TaskSpec(id=tid, op="noop", depends_on=deps, priority=priority, retries=retries)


class Parts:
    """FlowIndex + Journal + Transitions over an inline committer on a MemoryStore."""

    def __init__(self, tmp_path: Path, default_limit: int = 10):
        self.store = MemoryStore(tmp_path / "files")
        self.committer = Committer(self.store)
        self.flows = FlowIndex(default_limit=default_limit)
        self.wakes = 0
        self.transitions = Transitions(self.flows, Journal(self.committer),
                                       checkpoint_interval=30.0, wake_scheduler=self._woken)

    def _woken(self) -> None:
        self.wakes += 1

    def add(self, *tasks: TaskSpec, **kw):
        wrec, trecs = submission(*tasks, **kw)
        self.store.add_workflow(wrec, trecs)
        return self.flows.add(wrec, trecs)

    def run(self, flow, task, token: int, outcome: TaskOutcome):
        self.transitions.claim(flow, task, token, "test")
        return self.transitions.complete(task["key"], token, outcome)


# -- FlowIndex ------------------------------------------------------------------------

def test_flow_index_orders_by_priority_then_submission_and_respects_limits():
    flows = FlowIndex(default_limit=10)
    first = flows.add(*submission(T("a"), T("b", priority="high"), T("c", "a")))
    second = flows.add(*submission(T("x", priority="critical"), T("y"), last_seq=10,
                                   max_parallel=1))
    order = []
    while (picked := flows.pop_ready()) is not None:
        flow, task = picked
        order.append(task["id"])
        flow.running += 1
        task["status"] = "running"
    # critical, high, then normal in submission order; c waits for a; y for x's slot.
    assert order == ["x", "b", "a"]
    flows.succeeded(first, first.tasks["a"])
    second.running = 0
    assert [flows.pop_ready()[1]["id"] for _ in range(2)] == ["c", "y"]  # c is older
    assert flows.pop_ready() is None


def test_flow_index_skips_a_workflow_being_cancelled_and_releases_retries():
    flows = FlowIndex(default_limit=10)
    flow = flows.add(*submission(T("a"), T("b")))
    flow.rec["cancel_requested"] = True
    assert flows.pop_ready() is None
    flow.rec["cancel_requested"] = False
    _, task = flows.pop_ready()
    task["retry_at"] = time.time() + 60  # backing off: not ready, even if pushed again
    flows.retry_at(task["key"], time.monotonic() + 60)
    assert flows.pop_ready()[1]["id"] == "b"
    assert flows.next_retry() is not None
    flows.release_due(time.monotonic() + 61)
    assert task["retry_at"] is None and flows.pop_ready()[1]["id"] == "a"
    assert flows.lookup(task["key"]) == (flow, task) and flows.lookup("nope.a") is None


# -- Transitions ----------------------------------------------------------------------

def test_a_success_readies_dependents_and_the_last_one_ends_the_workflow(tmp_path: Path):
    parts = Parts(tmp_path)
    flow = parts.add(T("a"), T("b", "a"))
    a, b = flow.tasks["a"], flow.tasks["b"]
    assert parts.flows.pop_ready()[1] is a
    parts.run(flow, a, 1, TaskOutcome(exit_code=0, result={"ok": 1}))
    assert (a["status"], a["result"], a["attempts"]) == ("succeeded", {"ok": 1}, 1)
    assert flow.rec["status"] == "running" and parts.flows.pop_ready()[1] is b
    parts.run(flow, b, 2, TaskOutcome(exit_code=0))
    assert flow.rec["status"] == "succeeded" and flow.finished
    assert parts.store.workflows[flow.id]["status"] == "succeeded"  # saved
    assert [e["status"] for e in flow.events] == [
        "running", "running", "succeeded", "running", "succeeded", "succeeded"]


def test_a_failure_is_retried_then_fails_and_skips_its_dependents(tmp_path: Path):
    parts = Parts(tmp_path)
    flow = parts.add(T("a", retries=1), T("b", "a"), T("c", "b"))
    a = flow.tasks["a"]
    parts.run(flow, a, 1, TaskOutcome(exit_code=3))
    assert a["status"] == "queued" and a["retry_at"] and parts.flows.next_retry()
    assert "retry 1/1" in a["message"]
    parts.run(flow, a, 2, TaskOutcome(signal=9))
    assert (a["status"], a["error"]) == ("failed", "killed by signal 9")
    assert [flow.tasks[t]["status"] for t in "bc"] == ["skipped", "skipped"]
    assert flow.rec["status"] == "failed"


def test_a_stale_lease_is_ignored_and_a_shutdown_uses_no_retry(tmp_path: Path):
    parts = Parts(tmp_path)
    flow = parts.add(T("a"))
    a = flow.tasks["a"]
    parts.transitions.claim(flow, a, 5, "test")
    assert parts.transitions.complete(a["key"], 4, TaskOutcome(exit_code=0)) is None
    assert a["status"] == "running"
    parts.transitions.complete(a["key"], 5, TaskOutcome(stop_reason=SHUTDOWN))
    assert (a["status"], a["attempts"], a["attempt_base"]) == ("queued", 1, 1)
    assert not flow.finished


def test_cancel_and_rerun(tmp_path: Path):
    parts = Parts(tmp_path)
    flow = parts.add(T("a"), T("b"))
    a = flow.tasks["a"]
    parts.transitions.claim(flow, a, 1, "test")
    parts.transitions.request_cancel(flow)
    assert parts.store.workflows[flow.id]["cancel_requested"] is True  # durable first
    assert parts.transitions.cancel_queued(flow) == [a["key"]]  # for the scheduler to stop
    assert flow.tasks["b"]["status"] == "cancelled" and not flow.finished
    parts.transitions.complete(a["key"], 1, TaskOutcome(stop_reason="cancelled"))
    assert flow.rec["status"] == "cancelled"
    parts.transitions.rerun(flow, list(flow.tasks.values()))
    assert flow.rec["status"] == "queued" and not flow.rec["cancel_requested"]
    assert {parts.flows.pop_ready()[1]["id"] for _ in range(2)} == {"a", "b"}


def test_progress_is_saved_at_most_once_per_checkpoint_interval(tmp_path: Path):
    parts = Parts(tmp_path)
    flow = parts.add(T("a"))
    a = flow.tasks["a"]
    parts.transitions.claim(flow, a, 1, "test")
    parts.transitions.progress_of_run(a["key"], 1, 10, "first")  # saved at once
    parts.transitions.progress_of_run(a["key"], 1, 20, "second")  # due in 30 s
    parts.transitions.progress_of_run(a["key"], 9, 99, "stale lease")  # ignored
    assert parts.store.tasks[a["key"]]["progress"] == 10 and a["progress"] == 20
    assert parts.wakes == 1 and parts.transitions.progress_deadline() is not None
    parts.transitions.flush_progress(force=True)
    assert parts.store.tasks[a["key"]]["progress"] == 20
    assert parts.transitions.progress_deadline() is None


# -- Scheduler (with stand-in processes) -----------------------------------------------

class FakeProcess:
    """Runs until finish() or stop(); no real process."""

    def __init__(self):
        self.pid = None
        self.finished = False
        self.started = threading.Event()
        self._end = threading.Event()
        self._outcome = TaskOutcome(exit_code=0)

    def run(self) -> TaskOutcome:
        self.started.set()
        self._end.wait(30)
        self.finished = True
        return self._outcome

    def finish(self, outcome: TaskOutcome | None = None) -> None:
        self._outcome = outcome or self._outcome
        self._end.set()

    def stop(self, reason: str) -> None:
        self.finish(TaskOutcome(stop_reason=reason))


class FakeLauncher:
    def __init__(self):
        self.processes: dict[str, FakeProcess] = {}

    def resolve(self, op: str) -> list[str]:
        if op != "noop":
            raise ValidationError(f"unknown op '{op}'")
        return ["noop"]

    def prepare(self, task, argv, on_progress):
        self.processes[task["key"]] = FakeProcess()
        return self.processes[task["key"]], "token-" + task["id"]


@pytest.fixture
def scheduled(tmp_path: Path):
    parts = Parts(tmp_path)
    lock = threading.Lock()
    launcher = FakeLauncher()
    scheduler = Scheduler(lock, parts.flows, parts.transitions, launcher, parts.committer,
                          max_running=2, owner="me")
    with lock:
        scheduler.start(last_lease=41)
    yield parts, lock, launcher, scheduler
    with lock:
        for process in launcher.processes.values():
            process.finish()
        scheduler.stop()
    scheduler.join(10)


def test_the_scheduler_runs_at_most_max_running_and_starts_the_next_itself(scheduled):
    parts, lock, launcher, scheduler = scheduled
    with lock:
        flow = parts.add(T("a"), T("b"), T("c"))
        scheduler.wake()
    wait_for(lambda: len(launcher.processes) == 2, what="two tasks started")
    with lock:
        assert set(scheduler.running) == {f"{flow.id}.a", f"{flow.id}.b"}
        assert flow.tasks["a"]["lease"] == {"token": 42, "owner": "me", "pid": None,
                                            "pid_create_time": None}
        launcher.processes[f"{flow.id}.a"].finish()
    wait_for(lambda: f"{flow.id}.c" in launcher.processes, what="c started by a's end")
    with lock:
        assert flow.tasks["a"]["status"] == "succeeded"
        assert flow.tasks["c"]["lease"]["token"] == 44  # tokens only grow
        assert scheduler.live_pid(flow.tasks["c"]) is None  # not a real process


def test_drain_stops_what_still_runs_and_it_goes_back_to_queued(scheduled):
    parts, lock, launcher, scheduler = scheduled
    with lock:
        flow = parts.add(T("a"), T("b", "a"))
        scheduler.wake()
    wait_for(lambda: launcher.processes, what="a started")
    with lock:
        scheduler.drain(grace=0, kill_grace=1)
        assert scheduler.running == {} and scheduler.draining
        assert flow.tasks["a"]["status"] == "queued" and flow.tasks["b"]["status"] == "queued"


def test_an_op_that_no_longer_resolves_fails_its_task_without_a_process(scheduled):
    parts, lock, launcher, scheduler = scheduled
    with lock:
        wrec, trecs = submission(TaskSpec(id="gone", op="removed.op"), T("after", "gone"))
        flow = parts.flows.add(wrec, trecs)
        scheduler.start_ready()
        assert flow.tasks["gone"]["status"] == "failed" and "removed.op" in flow.tasks[
            "gone"]["error"]
        assert flow.tasks["after"]["status"] == "skipped" and flow.finished
        assert launcher.processes == {}


# -- Committer --------------------------------------------------------------------------

class CountingStore(MemoryStore):
    group_commit = True

    def __init__(self, files_dir):
        super().__init__(files_dir)
        self.batches: list[dict] = []

    def commit_batch(self, **batch):
        self.batches.append(batch)
        super().commit_batch(**batch)


def test_the_committer_writes_the_newest_version_once_per_batch(tmp_path: Path):
    store = CountingStore(tmp_path / "files")
    committer = Committer(store)
    wrec, (a,) = submission(T("a"))
    committer.add_workflow(wrec, [a])
    assert store.batches[-1]["adds"] == [(wrec, [])]  # the workflow file alone ...
    first = committer.save_task(dict(a, status="running"))
    second = committer.save_task(dict(a, status="succeeded"))
    assert first is second  # same batch: the later version replaces the earlier one
    committer.wait(second)
    written = [t for b in store.batches for t in b.get("tasks", [])]
    assert [t["status"] for t in written] == ["succeeded"]
    committer.close()  # ... its task's first file was superseded, never written as queued
    assert not any(b.get("initial_tasks") for b in store.batches)
    assert store.tasks[a["key"]]["status"] == "succeeded" and committer.current() is DONE


def test_an_inline_committer_writes_at_once(tmp_path: Path):
    store = MemoryStore(tmp_path / "files")
    committer = Committer(store)  # MemoryStore.group_commit is False
    wrec, (a,) = submission(T("a"))
    committer.add_workflow(wrec, [a])
    assert committer.save_task(dict(a, status="running")) is DONE
    assert store.tasks[a["key"]]["status"] == "running"


# -- TaskLauncher ------------------------------------------------------------------------

def test_the_launcher_builds_the_task_protocol_environment(tmp_path: Path):
    from provisioning.config import load_config
    from provisioning.ops.registry import OpRegistry

    config = load_config(environ={"PROVISIONING_STORAGE_DATA_DIR": str(tmp_path / "data")})
    store = MemoryStore(tmp_path / "files")
    launcher = TaskLauncher(OpRegistry.from_config(config), store, data_dir=tmp_path / "data",
                            endpoint="http://127.0.0.1:1", task_timeout_s=60, kill_grace_s=1)
    launcher.capture_env()
    wrec, (task,) = submission(TaskSpec(id="s", op="shell.run",
                                        params={"argv": ["echo", "hi"], "env": {"X": "1"}}))
    task["attempts"] = 1
    process, token = launcher.prepare(task, launcher.resolve("shell.run"), lambda p, m: None)
    run = process.spec
    assert run.argv == ["echo", "hi"] and not run.send_params  # shell.run: its own argv
    assert run.env["PROVISIONING_TASK_ID"] == task["key"] and run.env["X"] == "1"
    assert run.env["PROVISIONING_TASK_TOKEN"] == token
    assert run.env["PROVISIONING_ENDPOINT"] == "http://127.0.0.1:1"
    assert run.env["PROVISIONING_CHECKPOINT"] == str(store.checkpoint_path(wrec["id"], "s"))
    assert run.log_path == store.task_log_path(wrec["id"], "s") and run.timeout_s == 60
    with pytest.raises(ValidationError):
        launcher.resolve("no.such.op")
