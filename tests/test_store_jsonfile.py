"""What only the JSON-file store promises, beyond the shared Store contract
(tests/test_store.py): atomic 0600 files, quarantine, torn event lines,
orphan and missing task files, ENOSPC, and the network-filesystem check."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from provisioning.errors import ProvisioningError, StorageFull, ValidationError
from provisioning.model import TaskSpec, WorkflowSpec, new_submission
from provisioning.paths import DataPaths
from provisioning.store import fscheck
from provisioning.store.jsonfile import JsonFileStore

SPEC = WorkflowSpec(name="deploy", tasks=(
    TaskSpec(id="web-1", op="noop", params={"server": "web-1"}, priority="high"),
    TaskSpec(id="k8s", op="noop", depends_on=("web-1",)),
))


def make(spec: WorkflowSpec = SPEC, seq: int = 1, wid: str | None = None):
    return new_submission(wid or str(uuid.uuid4()), spec, last_seq=seq, now=time.time())


@pytest.fixture
def paths(tmp_path: Path) -> DataPaths:
    return DataPaths(tmp_path / "data")


# -- JsonFileStore: files on disk -------------------------------------------------

def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_files_are_private_and_no_temp_files_remain(paths: DataPaths):
    store = JsonFileStore(paths)
    wf, tasks = make()
    store.add_workflow(wf, tasks)
    store.save_task(dict(tasks[0], status="running"))
    store.append_event(wf["id"], {"seq": 1})
    store.task_log_path(wf["id"], "web-1")
    files = [p for p in paths.data_dir.rglob("*") if p.is_file()]
    dirs = [paths.data_dir, *(p for p in paths.data_dir.rglob("*") if p.is_dir())]
    assert {p.name for p in paths.queue_dir.iterdir()} == {f"{t['key']}.json" for t in tasks}
    assert [p.name for p in paths.workflows_dir.iterdir()] == [f"{wf['id']}.json"]
    assert not [p for p in files if p.name.endswith(".tmp")]
    assert {p: _mode(p) for p in files} == {p: 0o600 for p in files}
    assert {p: _mode(p) for p in dirs} == {p: 0o700 for p in dirs}
    assert json.loads((paths.queue_dir / f"{tasks[0]['key']}.json").read_text())["status"] \
        == "running"


@pytest.mark.parametrize("bad_id", ["../evil", "a/b", ".hidden", "", "x" * 300, "nul\0"])
def test_ids_unusable_as_file_names_are_refused(paths: DataPaths, bad_id: str):
    store = JsonFileStore(paths)
    with pytest.raises(ValidationError):
        store.task_log_path(bad_id, "t")
    with pytest.raises(ValidationError):
        store.append_event(bad_id, {"seq": 1})
    wf, tasks = make(wid="w1")
    with pytest.raises(ValidationError):
        store.add_workflow(dict(wf, id=bad_id), [])
    assert not list(paths.workflows_dir.iterdir())


FOREIGN = {
    "garbage.json": b"\x00\x00\x00garbage",
    "truncated.json": b'{"schema": 1, "kind": "task", "key": "trunc',
    "list.json": b"[1, 2, 3]",
    "notes.txt": b"hello",
}


def test_corrupt_and_foreign_files_are_quarantined_with_a_log_line(paths, caplog):
    store = JsonFileStore(paths)
    wf, tasks = make()
    store.add_workflow(wf, tasks)
    for name, data in FOREIGN.items():
        (paths.queue_dir / name).write_bytes(data)
    other = dict(tasks[0], schema=99)  # a newer/foreign schema
    (paths.queue_dir / "w9.web-1.json").write_text(json.dumps(dict(other, key="w9.web-1")))
    (paths.workflows_dir / "renamed.json").write_text(json.dumps(wf))  # id != name
    (paths.workflows_dir / f".{wf['id']}.json.abc123.tmp").write_text("{")  # torn temp
    with caplog.at_level(logging.WARNING, logger="provisioning.store"):
        workflows, loaded = store.load()
    assert [w["id"] for w in workflows] == [wf["id"]]
    assert loaded == tasks
    moved = sorted(p.name for p in paths.quarantine_dir.iterdir())
    assert len(moved) == len(FOREIGN) + 3
    for name in [*FOREIGN, "w9.web-1.json", "renamed.json"]:
        assert any(m.startswith(f"{'workflows' if name == 'renamed.json' else 'queue'}-{name}.")
                   for m in moved), name
    assert sorted(os.listdir(paths.queue_dir)) == sorted(f"{t['key']}.json" for t in tasks)
    warned = [r.getMessage() for r in caplog.records if r.name == "provisioning.store"]
    assert sum("quarantined" in m for m in warned) == len(FOREIGN) + 3
    assert any("schema is 99" in m for m in warned)
    # Quarantined files keep their bytes for inspection.
    garbage = next(p for p in paths.quarantine_dir.iterdir() if "garbage" in p.name)
    assert garbage.read_bytes() == FOREIGN["garbage.json"]


def test_quarantine_never_overwrites(paths: DataPaths):
    store = JsonFileStore(paths)
    for _ in range(3):
        (paths.queue_dir / "same.json").write_bytes(b"not json")
        store.load()
    assert len(list(paths.quarantine_dir.iterdir())) == 3


def test_orphan_tasks_of_a_torn_submission_are_removed(paths: DataPaths, caplog):
    store = JsonFileStore(paths)
    wf, tasks = make()
    store.add_workflow(wf, tasks)
    torn_wf, torn_tasks = make(seq=2)  # crash after task files, before the commit point
    for t in torn_tasks:
        (paths.queue_dir / f"{t['key']}.json").write_text(json.dumps(t))
    with caplog.at_level(logging.WARNING, logger="provisioning.store"):
        workflows, loaded = JsonFileStore(paths).load()
    assert [w["id"] for w in workflows] == [wf["id"]]
    assert loaded == tasks
    assert not any(torn_wf["id"] in p.name for p in paths.queue_dir.iterdir())
    assert not list(paths.quarantine_dir.iterdir())
    assert sum("orphan" in r.getMessage() for r in caplog.records) == 2


def test_tasks_of_a_quarantined_workflow_are_quarantined_too(paths: DataPaths):
    store = JsonFileStore(paths)
    wf, tasks = make()
    store.add_workflow(wf, tasks)
    (paths.workflows_dir / f"{wf['id']}.json").write_bytes(b"{broken")
    assert store.load() == ([], [])
    assert len(list(paths.quarantine_dir.iterdir())) == 3
    assert not list(paths.queue_dir.iterdir())


def test_missing_task_files_are_rebuilt_from_the_spec_as_queued(paths: DataPaths, caplog):
    store = JsonFileStore(paths)
    wf, tasks = make()
    store.add_workflow(wf, tasks)
    (paths.queue_dir / f"{tasks[1]['key']}.json").unlink()
    with caplog.at_level(logging.INFO, logger="provisioning.store"):
        _, loaded = JsonFileStore(paths).load()
    assert [t["key"] for t in loaded] == [t["key"] for t in tasks]
    rebuilt = loaded[1]
    for field in ("op", "params", "depends_on", "priority", "retries", "timeout_s",
                  "workflow_id", "schema", "kind"):
        assert rebuilt[field] == tasks[1][field], field
    assert rebuilt["status"] == "queued" and rebuilt["attempts"] == 0
    assert (paths.queue_dir / f"{tasks[1]['key']}.json").exists()  # written back
    assert any("rebuilt" in r.getMessage() for r in caplog.records)


def test_torn_last_event_line_is_ignored_and_the_next_append_is_whole(paths: DataPaths):
    store = JsonFileStore(paths)
    wid = str(uuid.uuid4())
    store.append_event(wid, {"seq": 1})
    store.append_event(wid, {"seq": 2})
    with open(paths.events_dir / f"{wid}.jsonl", "ab") as f:
        f.write(b'{"seq": 3, "ty')  # a crash mid-write
    assert [e["seq"] for e in store.load_events(wid)] == [1, 2]
    fresh = JsonFileStore(paths)  # a restarted daemon appends after the torn line
    fresh.append_event(wid, {"seq": 3})
    fresh.append_event(wid, {"seq": 4})
    assert [e["seq"] for e in fresh.load_events(wid)] == [1, 2, 3, 4]


def test_add_workflows_commits_a_batch(paths: DataPaths):
    store = JsonFileStore(paths)
    batch = [make(seq=n) for n in range(1, 11)]  # 30 files: the parallel fsync path
    store.commit_batch(adds=batch)
    workflows, tasks = JsonFileStore(paths).load()
    assert [w["id"] for w in workflows] == [wf["id"] for wf, _ in batch]
    assert len(tasks) == 20
    assert not [p for p in paths.data_dir.rglob("*.tmp")]


def test_failed_add_leaves_nothing_behind(paths: DataPaths):
    store = JsonFileStore(paths)
    wf, tasks = make()
    # A value JSON cannot encode fails the second file, after the first was staged.
    bad = [tasks[0], dict(tasks[1], params={"x": object()})]
    with pytest.raises(TypeError):
        store.add_workflow(wf, bad)
    assert not list(paths.queue_dir.iterdir())
    assert not list(paths.workflows_dir.iterdir())


# -- ENOSPC on a small tmpfs --------------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path: Path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k,nr_inodes=400", "tmpfs",
                            str(mnt)], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs to fill up: {e}")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root/CAP_SYS_ADMIN): "
                    f"{r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_disk_full_raises_storage_full_and_corrupts_nothing(tiny_fs: Path):
    paths = DataPaths(tiny_fs / "data")
    store = JsonFileStore(paths)
    big = WorkflowSpec(name="big", tasks=tuple(
        TaskSpec(id=f"t{i}", op="noop", params={"pad": "x" * 3000}) for i in range(3)))
    committed = []
    with pytest.raises(StorageFull) as err:
        for seq in range(1, 1000):
            wf, tasks = make(big, seq=seq)
            store.add_workflow(wf, tasks)
            committed.append(wf["id"])
    assert "no space left" in str(err.value)
    assert err.value.http_status == 507
    assert committed, "the tmpfs filled before anything was written"
    # Nothing partial: no temp files, no tasks of the refused workflow.
    assert not [p for p in paths.data_dir.rglob("*") if p.name.endswith(".tmp")]
    workflows, loaded = JsonFileStore(paths).load()
    assert [w["id"] for w in workflows] == committed
    assert len(loaded) == 3 * len(committed)
    assert not list(paths.quarantine_dir.iterdir())
    # Replacing a record on a full disk fails cleanly and keeps the old version.
    with pytest.raises(StorageFull):
        store.save_task(dict(loaded[0], message="y" * 200_000))
    assert JsonFileStore(paths).load()[1][0] == loaded[0]
    # An event append that does not fit leaves no torn line.
    wid = committed[0]
    with pytest.raises(StorageFull):
        for n in range(100_000):
            store.append_event(wid, {"seq": n, "message": "z" * 500})
    events = store.load_events(wid)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert (paths.events_dir / f"{wid}.jsonl").read_bytes().endswith(b"\n") or not events
    with pytest.raises(StorageFull):  # a new submission is still refused
        store.add_workflow(*make(big, seq=1000))
    assert not [p for p in paths.data_dir.rglob("*") if p.name.endswith(".tmp")]


# -- network filesystem check ---------------------------------------------------------

MOUNTS = [("/", "ext4"), ("/srv", "xfs"), ("/srv/shared", "nfs4"), ("/mnt/box", "fuse.sshfs"),
          ("/mnt/smb", "cifs"), ("/mnt/wsl", "9p"), ("/mnt/usb", "fuse.exfat")]


@pytest.mark.parametrize("path,fstype", [
    ("/srv/shared/provisioning", "nfs4"), ("/srv/sharedx/p", "xfs"),
    ("/mnt/box/data", "fuse.sshfs"),
    ("/mnt/smb", "cifs"), ("/mnt/wsl/q", "9p"), ("/var/lib/provisioning", "ext4"),
    ("/mnt/usb/q", "fuse.exfat"),
])
def test_mount_of_picks_the_longest_mount_point(path, fstype):
    assert fscheck.mount_of(path, MOUNTS)[1] == fstype


def test_network_fs_is_refused_unless_allowed(caplog):
    for path in ("/srv/shared/q", "/mnt/box/q", "/mnt/smb/q", "/mnt/wsl/q"):
        with pytest.raises(ProvisioningError) as err:
            fscheck.check_data_dir(path, allow_network_fs=False, mounts=MOUNTS)
        assert err.value.exit_code == 2
        assert "flock" in str(err.value) and "storage.allow_network_fs" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="provisioning.store"):
        assert fscheck.check_data_dir("/srv/shared/q", allow_network_fs=True,
                                      mounts=MOUNTS) == "nfs4"
    assert any("allow_network_fs" in r.getMessage() for r in caplog.records)
    assert fscheck.check_data_dir("/mnt/usb/q", allow_network_fs=False,
                                  mounts=MOUNTS) == "fuse.exfat"


def test_local_data_dir_passes_on_the_real_mount_table(paths: DataPaths):
    fstype = fscheck.check_data_dir(paths.data_dir / "not" / "yet", allow_network_fs=False)
    assert fstype and not fscheck.is_network_fs(fstype)


def test_real_tmpfs_mount_is_found(tiny_fs: Path):
    assert fscheck.mount_of(tiny_fs / "data", fscheck.read_mounts()) == (str(tiny_fs), "tmpfs")
