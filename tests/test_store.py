"""The Store contract (provisioning/model/storage.py), run on every backend.

Each backend is an entry of BACKENDS: a function that returns a Backend for
a test's tmp_path. The suite runs every test on every entry, the daemon's
commit path included (the engine's committer, engine/commit.py, in its
grouped mode, and a whole engine run). To test a new backend (PostgreSQL),
add its entry: nothing else here needs to change. What only the JSON-file
store promises is in tests/test_store_jsonfile.py.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provisioning import model, procinfo
from provisioning.config import load_config
from provisioning.engine.commit import Committer
from provisioning.engine.engine import Engine
from provisioning.engine.loader import parse_workflow
from provisioning.model import TaskSpec, WorkflowSpec, new_submission
from provisioning.model.storage import Store
from provisioning.paths import DataPaths
from provisioning.store.jsonfile import JsonFileStore
from provisioning.store.memory import MemoryStore
from tests.pg_fixture import fresh_database

SPEC = WorkflowSpec(name="deploy", tasks=(
    TaskSpec(id="web-1", op="noop", params={"server": "web-1"}, priority="high"),
    TaskSpec(id="k8s", op="noop", depends_on=("web-1",)),
))


def make(spec: WorkflowSpec = SPEC, seq: int = 1, wid: str | None = None):
    return new_submission(wid or str(uuid.uuid4()), spec, last_seq=seq, now=time.time())


@dataclass
class Backend:
    """One backend under test. ``open()`` makes a store over the backend's data
    and calls load() on it, as the engine does at start; ``reopen()`` is a
    restart: the current store is closed and a new one opened over the same
    data (a backend that keeps nothing, MemoryStore, gives the same store)."""

    name: str
    opener: Callable[[], Store]
    durable: bool
    opened: list[Store] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None  # after the test (postgres: drop its database)

    def open(self) -> Store:
        store = self.opener()
        store.load()
        self.opened.append(store)
        return store

    @property
    def store(self) -> Store:
        return self.opened[-1] if self.opened else self.open()

    def reopen(self) -> Store:
        if not self.durable:
            return self.store
        self.store.close()
        return self.open()


def memory_backend(tmp_path: Path) -> Backend:
    store = MemoryStore(tmp_path / "files")
    return Backend("memory", lambda: store, durable=False)


def jsonfile_backend(tmp_path: Path) -> Backend:
    paths = DataPaths(tmp_path / "data")
    return Backend("jsonfile", lambda: JsonFileStore(paths), durable=True)


def jsonfile_writer_backend(tmp_path: Path) -> Backend:
    """The daemon's configuration: batches written by the record-writer child."""
    paths = DataPaths(tmp_path / "data")
    return Backend("jsonfile+writer", lambda: JsonFileStore(paths, writer_process=True),
                   durable=True)


def postgres_backend(tmp_path: Path) -> Backend:
    """A database of its own on the test server .ci/run starts (skips without one)."""
    from provisioning.store.postgres import PostgresStore  # lazy: needs the postgres extra

    dsn, drop = fresh_database()
    paths = DataPaths(tmp_path / "data")
    return Backend("postgres", lambda: PostgresStore(dsn, paths), durable=True, cleanup=drop)


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "memory": memory_backend,
    "jsonfile": jsonfile_backend,
    "jsonfile+writer": jsonfile_writer_backend,
    "postgres": postgres_backend,
}


@pytest.fixture(params=list(BACKENDS))
def backend(request, tmp_path: Path) -> Iterator[Backend]:
    b = BACKENDS[request.param](tmp_path)
    try:
        yield b
    finally:
        for store in b.opened:
            store.close()
        if b.cleanup is not None:
            b.cleanup()


def _plain(records):
    """Records as a store gives them back (JSON values, no enum members)."""
    import json

    return json.loads(json.dumps(records))


# -- records in, records out -----------------------------------------------------

def test_add_then_load_returns_workflow_and_tasks(backend: Backend):
    wf, tasks = make()
    backend.store.add_workflow(wf, tasks)
    workflows, loaded = backend.reopen().load()
    assert workflows == [wf]
    assert loaded == tasks
    assert [t["key"] for t in loaded] == [f"{wf['id']}.web-1", f"{wf['id']}.k8s"]


def test_load_returns_every_workflow_once_in_submission_order(backend: Backend):
    ids = []
    for seq in (30, 10, 20):
        wf, tasks = make(seq=seq)
        backend.store.add_workflow(wf, tasks)
        ids.append((seq, wf["id"]))
    workflows, tasks = backend.reopen().load()
    assert [w["id"] for w in workflows] == [i for _, i in sorted(ids)]
    assert [t["workflow_id"] for t in tasks] == [i for _, i in sorted(ids) for _ in range(2)]
    assert [t["id"] for t in tasks] == ["web-1", "k8s"] * 3  # task_ids order


def test_save_task_and_workflow_replace_the_record(backend: Backend):
    store = backend.store
    wf, tasks = make()
    store.add_workflow(wf, tasks)
    store.save_task(dict(tasks[0], status="succeeded", attempts=1, result={"ip": "10.0.0.1"}))
    store.save_workflow(dict(wf, status="running"))
    workflows, loaded = backend.reopen().load()
    assert workflows[0]["status"] == "running"
    assert loaded[0]["status"] == "succeeded" and loaded[0]["result"] == {"ip": "10.0.0.1"}
    assert loaded[1]["status"] == "queued"


def test_load_returns_copies(backend: Backend):
    store = backend.store
    wf, tasks = make()
    store.add_workflow(wf, tasks)
    tasks[0]["message"] = "changed after the write"  # the store kept its own copy
    workflows, loaded = store.load()
    assert loaded[0]["message"] is None
    workflows[0]["status"] = "mutated"
    loaded[0]["params"]["server"] = "mutated"
    workflows, loaded = store.load()
    assert workflows[0]["status"] == "queued"
    assert loaded[0]["params"]["server"] == "web-1"


def test_events_append_and_load_in_order(backend: Backend):
    wid = str(uuid.uuid4())
    for n in range(1, 4):
        backend.store.append_event(wid, {"seq": n, "type": "task", "status": "running"})
    backend.store.commit_batch(events=[(wid, {"seq": 4}), (wid, {"seq": 5})])
    assert [e["seq"] for e in backend.reopen().load_events(wid)] == [1, 2, 3, 4, 5]
    assert backend.store.load_events(str(uuid.uuid4())) == []


def test_task_file_paths_have_existing_parents(backend: Backend):
    wid = str(uuid.uuid4())
    log_path = backend.store.task_log_path(wid, "web-1")
    ckpt = backend.store.checkpoint_path(wid, "web-1")
    assert log_path.parent.is_dir() and ckpt.parent.is_dir()
    assert log_path.name == "web-1.log" and ckpt.name == "web-1.json"
    assert log_path != ckpt


def test_a_fresh_store_has_nothing_quarantined_and_says_who_writes(backend: Backend):
    store = backend.store
    assert store.quarantined_count() == 0
    pid = store.writer_pid
    if pid is not None:  # a helper process: alive, and not this one
        assert pid != os.getpid() and procinfo.identity(pid) is not None


# -- commit_batch: what the daemon's committer sends -------------------------------

def test_a_new_workflow_commits_alone_and_its_tasks_follow(backend: Backend):
    store = backend.store
    wf, tasks = make()
    store.commit_batch(adds=[(wf, [])])  # the commit point: the workflow record
    assert _plain(backend.reopen().load()) == _plain(([wf], tasks))  # tasks rebuilt as queued
    backend.store.commit_batch(initial_tasks={wf["id"]: ["web-1", "k8s"]})
    assert _plain(backend.reopen().load()[1]) == _plain(tasks)


def test_a_batch_applies_first_files_then_new_versions(backend: Backend):
    store = backend.store
    wf, tasks = make()
    store.commit_batch(adds=[(wf, [])])
    claimed = dict(tasks[0], status="running", attempts=1)
    store.commit_batch(initial_tasks={wf["id"]: ["k8s"]}, tasks=[claimed],
                       workflows=[dict(wf, status="running")],
                       events=[(wf["id"], {"seq": 1, "status": "running"})])
    workflows, loaded = backend.reopen().load()
    assert workflows[0]["status"] == "running"
    assert [(t["id"], t["status"]) for t in loaded] == [("web-1", "running"), ("k8s", "queued")]
    assert backend.store.load_events(wf["id"]) == [{"seq": 1, "status": "running"}]


def test_a_failed_batch_leaves_no_half_added_workflow(backend: Backend):
    store = backend.store
    kept, kept_tasks = make(seq=1)
    store.add_workflow(kept, kept_tasks)
    wf, tasks = make(seq=5)
    # A value JSON cannot encode fails the batch after its first task record.
    with pytest.raises(TypeError):
        store.commit_batch(adds=[(wf, [tasks[0], dict(tasks[1], params={"x": object()})])])
    workflows, loaded = backend.reopen().load()
    assert [w["id"] for w in workflows] == [kept["id"]]
    assert {t["workflow_id"] for t in loaded} == {kept["id"]}


def test_writes_after_close_still_work(backend: Backend):
    store = backend.store
    wf, tasks = make()
    store.add_workflow(wf, tasks)
    store.close()
    store.commit_batch(tasks=[dict(tasks[0], status="succeeded")])
    store.save_workflow(dict(wf, status="succeeded"))
    workflows, loaded = backend.reopen().load()
    assert workflows[0]["status"] == "succeeded" and loaded[0]["status"] == "succeeded"


def test_the_daemons_committer_round_trips(backend: Backend):
    """engine/commit.py's grouped path on this backend: new workflows, replaced
    records, first task files and events, as the daemon hands them over."""
    writer = Committer(backend.store, grouped=True)
    wf, tasks = make()
    writer.add_workflow(wf, tasks)  # returns once the workflow record is durable
    running = dict(tasks[0], status="running", attempts=1)
    writer.save_task(running)
    writer.append_event(wf["id"], {"seq": 1, "task": "web-1", "status": "running"})
    writer.wait(writer.save_workflow(dict(wf, status="running")))
    writer.close()  # the first file of k8s is written at close, not left behind
    workflows, loaded = backend.reopen().load()
    assert workflows[0]["status"] == "running"
    assert [(t["id"], t["status"]) for t in loaded] == [("web-1", "running"), ("k8s", "queued")]
    assert [e["task"] for e in backend.store.load_events(wf["id"])] == ["web-1"]


def test_an_engine_runs_a_workflow_and_a_restart_reads_it_back(backend: Backend, tmp_path):
    env = {"PROVISIONING_STORAGE_DATA_DIR": str(tmp_path / "data"),
           "PROVISIONING_EXECUTOR_KILL_GRACE_SECONDS": "1"}
    engine = Engine(backend.store, load_config(environ=env))
    engine.start()
    try:
        spec = parse_workflow({"workflow": {"name": "e2e"}, "tasks": [
            {"id": "a", "op": "noop"}, {"id": "b", "op": "noop", "depends_on": ["a"]}]},
            source="test", registry=engine.registry)
        wid = engine.submit(spec)["workflow_id"]
        shown = engine.wait(wid, timeout=60)
    finally:
        engine.shutdown(5)
    assert shown["status"] == "succeeded"
    workflows, loaded = backend.reopen().load()
    assert [(w["id"], w["status"]) for w in workflows] == [(wid, "succeeded")]
    assert [(t["id"], t["status"], t["attempts"]) for t in loaded] == [
        ("a", "succeeded", 1), ("b", "succeeded", 1)]
    events = backend.store.load_events(wid)
    assert events[-1]["type"] == "workflow" and events[-1]["status"] == "succeeded"
    assert model.valid_workflow_id(wid)


# -- MemoryStore only ----------------------------------------------------------------

def test_memory_store_prunes_direct_run_files_by_age(tmp_path: Path):
    store = MemoryStore(files_dir=tmp_path / "direct")
    old_log = store.task_log_path("old-run", "a")
    old_log.write_text("old output\n")
    old_ck = store.checkpoint_path("old-run", "a").parent
    new_log = store.task_log_path("new-run", "a")
    new_log.write_text("new output\n")
    week_ago = time.time() - 8 * 86400
    for d in (old_log.parent, old_ck):
        os.utime(d, (week_ago, week_ago))
    assert store.prune_files(7 * 86400) == 2
    assert not old_log.parent.exists() and not old_ck.exists()
    assert new_log.read_text() == "new output\n"
