"""JsonFileStore: the daemon's durable queue, one JSON file per record.

Layout under the data dir (see provisioning.paths.DataPaths, docs/store.md):

  workflows/<workflow_id>.json           one per workflow (the commit point)
  queue/<workflow_id>.<task_id>.json     one per task
  events/<workflow_id>.jsonl             append-only event log
  logs/<workflow_id>/<task_id>.log       captured task output
  checkpoints/<workflow_id>/<task_id>.json
  quarantine/                            corrupt or foreign files, moved aside
  spare/                                 inodes of replaced records, recycled as temp
                                         files (fileio.Spares); never read

Every record write is temp file, fsync, rename, directory fsync
(provisioning.fsutil). The daemon is the only writer of the data dir (it
holds the data dir's singleton lock), so record writes take no file lock.

Thread safety: methods may be called from several threads at once as long as
no two calls write the same record (the engine serializes per record).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from provisioning import fsutil
from provisioning.errors import ProvisioningError
from provisioning.model import first_task_records, task_key
from provisioning.paths import DataPaths
from provisioning.store import checks
from provisioning.store.base import Record, Store
from provisioning.store.events import EventLogs
from provisioning.store.fileio import (
    Spares,
    is_temp_name,
    quarantine,
    replace_many,
    storage_errors,
)
from provisioning.store.writer import WriterDied, WriterProcess, wait_for_old_writer

log = logging.getLogger("provisioning.store")


class JsonFileStore(Store):
    def __init__(self, data_paths: DataPaths, *, writer_process: bool = False):
        """``writer_process=True`` (the daemon): after load(), group commits
        are written by a child process (store/writer.py), which is stopped
        by close()."""
        self.paths = data_paths
        self._use_writer_process = writer_process
        self._writer: WriterProcess | None = None
        self._event_write_failed = False
        with storage_errors(data_paths.data_dir):
            fsutil.ensure_private_dir(data_paths.data_dir)
            for d in (data_paths.queue_dir, data_paths.workflows_dir, data_paths.events_dir,
                      data_paths.logs_dir, data_paths.checkpoints_dir,
                      data_paths.quarantine_dir):
                fsutil.ensure_private_dir(d)
        # Recycled inodes of replaced records (fileio.Spares): data/spare/ is on the
        # same filesystem as queue/ and workflows/ (renames move them there).
        self._spares: Spares | None = None
        spare_dir = data_paths.data_dir / "spare"
        try:
            fsutil.ensure_private_dir(spare_dir)
            if os.stat(spare_dir).st_dev == os.stat(data_paths.queue_dir).st_dev:
                self._spares = Spares(spare_dir)
        except OSError as e:  # only an optimisation: write without it
            log.warning("not recycling record files in %s: %s", spare_dir, e)
        self._events = EventLogs(data_paths.events_dir)
        self._guard = threading.Lock()
        # Per-workflow log/checkpoint dirs known to exist: no mkdir+chmod per task.
        self._made_dirs: set[Path] = set()

    # -- paths ---------------------------------------------------------------

    def _task_file(self, key: str) -> Path:
        return self.paths.queue_dir / f"{key}.json"

    def _workflow_file(self, workflow_id: str) -> Path:
        return self.paths.workflows_dir / f"{workflow_id}.json"

    # -- writes --------------------------------------------------------------

    def add_workflow(self, workflow: Record, tasks: list[Record]) -> None:
        self.add_workflows([(workflow, tasks)])

    def add_workflows(self, items: list[tuple[Record, list[Record]]]) -> None:
        """Group commit of several new workflows (same guarantees as add_workflow).

        See commit_batch: task files are durable before any workflow file
        (the commit points) is renamed into place. If the machine dies in the
        middle, a workflow file may still (rarely, on filesystems that reorder
        directory updates) survive without some task files: load() rebuilds
        those from the workflow's spec as queued, which is exactly what they
        were. On any error the files this call created are removed, so no
        half-added workflow is left behind.
        """
        self.commit_batch(adds=items)

    def save_records(self, *, tasks: list[Record] = (), workflows: list[Record] = ()) -> None:
        """Replace several existing records at once: durable on return.

        Each record is still atomic (old or new version after a crash), but
        the batch is not: a crash may keep some new versions and not others.
        Task records are made durable before workflow records.
        """
        self.commit_batch(tasks=tasks, workflows=workflows)

    def commit_batch(self, *, adds: list[tuple[Record, list[Record]]] = (),
                     tasks: list[Record] = (), workflows: list[Record] = (),
                     initial_tasks: dict[str, list[str]] | None = None,
                     events: list[tuple[str, dict[str, Any]]] = ()) -> None:
        """One group commit: new workflows (``adds``) plus replaced task and
        workflow records, durable on return.

        ``initial_tasks`` ``{workflow_id: [task_id, ...]}``: the first files of
        tasks whose workflow file is already durable, made from its spec
        (exactly as load() rebuilds a missing one: queued) and written first,
        atomically but without any fsync. The engine's committer has a new
        workflow's task files written that way, after the workflow's commit.

        ``events`` ``(workflow_id, event)`` are appended to the event logs
        once the records are durable, so a log never runs ahead of the
        records; an append that fails (disk full) is logged once per outage,
        never raised: the records are written, and events are derived from
        them (the one place that decides this for the engine's events).

        Each file is written to a temp file, fsynced and renamed into place
        (fsyncs in parallel, see fileio.replace_many): first every task file,
        then every workflow file; then queue/ and workflows/ are fsynced ONCE
        each for the whole batch. So a batch costs its file fsyncs
        (overlapping) plus the directory fsyncs. queue/ is fsynced before
        any workflow file is renamed, so a workflow's new status never
        becomes durable before the task records written with it (a workflow
        marked succeeded always has its tasks' completions on disk).

        On any error (StorageFull included) the temp files are removed and so
        are the files of ``adds`` already renamed (no half-added workflow is
        left behind); replaced records already renamed keep their new,
        complete version. The caller learns of the error and may write again.

        With a writer process running (the daemon), the same method runs in it.
        """
        if self._writer is not None:
            try:
                self._writer.commit_batch(adds=adds, tasks=tasks, workflows=workflows,
                                          initial_tasks=initial_tasks, events=events)
                return
            except WriterDied as e:  # redo the whole batch here: every write is idempotent
                log.error("%s; writing records in the daemon itself from now on", e)
                writer, self._writer = self._writer, None
                writer.close(timeout=5)
        self._commit_batch_here(adds=adds, tasks=tasks, workflows=workflows,
                                initial_tasks=initial_tasks)
        if events:
            self._append_batch_events(events)

    def _append_batch_events(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        by_workflow: dict[str, list[dict[str, Any]]] = {}
        for workflow_id, event in events:
            by_workflow.setdefault(workflow_id, []).append(event)
        for workflow_id, evs in by_workflow.items():
            try:
                self.append_events(workflow_id, evs)
            except (ProvisioningError, OSError) as e:
                if not self._event_write_failed:  # once per outage, not once per batch
                    log.error("cannot append to the event log of workflow %s: %s (said "
                              "once until it works again)", workflow_id, e)
                self._event_write_failed = True
            else:
                self._event_write_failed = False

    def _commit_batch_here(self, *, adds: list[tuple[Record, list[Record]]] = (),
                           tasks: list[Record] = (), workflows: list[Record] = (),
                           initial_tasks: dict[str, list[str]] | None = None) -> None:
        # New records (adds) and replaced ones apart: new files never take a
        # recycled inode, so on a full disk a new submission fails (507) while
        # the spares still let accepted work record its transitions.
        new_task_files: list[tuple[Path, Record]] = []
        new_wf_files: list[tuple[Path, Record]] = []
        for workflow, new_tasks in adds:
            wid = checks.check_id(workflow.get("id"), "workflow id")
            for task in new_tasks:
                checks.check_id(task.get("id"), "task id")
                key = task.get("key")
                if key != task_key(wid, task["id"]) or task.get("workflow_id") != wid:
                    raise ValueError(f"task {key!r} does not belong to workflow {wid!r}")
                new_task_files.append((self._task_file(key), task))
            new_wf_files.append((self._workflow_file(wid), workflow))
        created = {path for path, _ in new_task_files + new_wf_files}
        task_files = [(self._task_file(self._checked_key(t)), t) for t in tasks]
        wf_files = [(self._workflow_file(checks.check_id(w.get("id"), "workflow id")), w)
                    for w in workflows]
        unsynced = self._initial_files(initial_tasks or {})
        published: list[Path] = []
        try:
            with storage_errors(self.paths.data_dir):
                if unsynced:
                    replace_many(unsynced, [], sync=False)
                replace_many(new_task_files, published)
                replace_many(task_files, published, self._spares)
                if new_task_files or task_files:  # tasks durable before any workflow file
                    fsutil.fsync_dir(self.paths.queue_dir)
                replace_many(new_wf_files, published)
                replace_many(wf_files, published, self._spares)
                if new_wf_files or wf_files:
                    fsutil.fsync_dir(self.paths.workflows_dir)
        except BaseException:
            # Workflow files first, so no task is an orphan for a moment longer than needed.
            for path in sorted((p for p in published if p in created),
                               key=lambda p: p.parent != self.paths.workflows_dir):
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise

    def save_workflow(self, workflow: Record) -> None:
        wid = checks.check_id(workflow.get("id"), "workflow id")
        with storage_errors(self.paths.data_dir):
            fsutil.atomic_write_json(self._workflow_file(wid), workflow)

    def save_task(self, task: Record) -> None:
        key = self._checked_key(task)
        with storage_errors(self.paths.data_dir):
            fsutil.atomic_write_json(self._task_file(key), task)

    @staticmethod
    def _checked_key(task: Record) -> str:
        checks.check_id(task.get("workflow_id"), "workflow id")
        checks.check_id(task.get("id"), "task id")
        key = task_key(task["workflow_id"], task["id"])
        if task.get("key") != key:
            raise ValueError(f"task key {task.get('key')!r} should be {key!r}")
        return key

    # -- recovery ------------------------------------------------------------

    def load(self) -> tuple[list[Record], list[Record]]:
        """Every workflow and task, checked; see docs/store.md "Recovery".

        Never raises for bad content: a file that cannot be trusted goes to
        quarantine/ with a warning on the "provisioning.store" logger.
        Returns workflows in submission order (seq) and their tasks in
        workflow order, each workflow's tasks in its task_ids order.
        """
        touched: set[Path] = set()  # directories whose entries changed: fsync once at the end
        if self._use_writer_process and self._writer is None:
            wait_for_old_writer(self.paths.data_dir)  # a dead daemon's writer may still write
        if self._spares is not None:  # names left by a crash may still link live records
            self._spares.purge()

        def move_aside(path: Path, reason: str) -> None:
            if quarantine(path, self.paths.quarantine_dir, reason) is not None:
                touched.update((path.parent, self.paths.quarantine_dir))

        workflows: dict[str, Record] = {}
        parsed, bad_workflow_ids = self._read_dir(self.paths.workflows_dir, move_aside)
        for path, rec in parsed:
            problem = checks.check_workflow(rec, path.name[:-5])
            if problem:
                move_aside(path, problem)
                bad_workflow_ids.add(path.name[:-5])
            else:
                workflows[rec["id"]] = rec

        tasks: dict[str, Record] = {}
        parsed, _ = self._read_dir(self.paths.queue_dir, move_aside)
        for path, rec in parsed:
            problem = checks.check_task(rec, path.name[:-5])
            if problem:
                move_aside(path, problem)
                continue
            wf = workflows.get(rec["workflow_id"])
            if wf is None:
                if rec["workflow_id"] in bad_workflow_ids:
                    move_aside(path, "its workflow file was quarantined")
                else:
                    # A submission torn by a crash before its commit point: the
                    # client never got an id for it, so nothing refers to it.
                    log.warning("removed orphan task file %s: its workflow was never "
                                "committed (submission interrupted by a crash)", path)
                    os.unlink(path)
                    touched.add(path.parent)
            elif rec["id"] not in wf["task_ids"]:
                move_aside(path, f"task {rec['id']!r} is not part of workflow {wf['id']}")
            else:
                tasks[rec["key"]] = rec

        ordered_tasks: list[Record] = []
        rebuilt_files: list[tuple[Path, Record]] = []
        ordered_wfs = sorted(workflows.values(),
                             key=lambda w: (_num(w.get("seq")), _num(w.get("created_at"))))
        for wf in ordered_wfs:
            missing = [tid for tid in wf["task_ids"] if task_key(wf["id"], tid) not in tasks]
            rebuilt = {t["id"]: t for t in first_task_records(wf, missing)}
            for tid in wf["task_ids"]:
                task = tasks.get(task_key(wf["id"], tid)) or rebuilt[tid]
                ordered_tasks.append(task)
            rebuilt_files += [(self._task_file(t["key"]), t) for t in rebuilt.values()]
            if rebuilt:
                # Normal after a crash right after a submission: its task files
                # are written after its workflow file (engine/commit.py).
                log.info("workflow %s: rebuilt %d task file(s) from its spec, as queued",
                         wf["id"], len(rebuilt))
        if rebuilt_files:
            # Like the engine's first task files: atomic, not fsynced (the
            # spec rebuilds them again if need be), all at once.
            try:
                with storage_errors(self.paths.data_dir):
                    replace_many(rebuilt_files, [], sync=False)
            except Exception as e:  # usable from memory; written on their next change
                log.warning("could not write %d rebuilt task files: %s", len(rebuilt_files), e)
        for d in touched:
            fsutil.fsync_dir(d)
        if self._use_writer_process and self._writer is None:
            self._start_writer()
        return ordered_wfs, ordered_tasks

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid, or None when records are written in-process."""
        writer = self._writer
        return writer.pid if writer is not None else None

    def _start_writer(self) -> None:
        try:
            self._writer = WriterProcess(self.paths.data_dir)
        except OSError as e:  # only an optimisation: write in-process
            log.warning("cannot start the record writer process (%s); writing in-process", e)

    def _initial_files(self, initial: dict[str, list[str]]) -> list[tuple[Path, Record]]:
        """(path, record) of the first versions of these tasks, from their
        workflow files (committed before); a workflow that cannot be read is
        skipped: load() rebuilds its tasks the same way."""
        files: list[tuple[Path, Record]] = []
        for workflow_id, task_ids in initial.items():
            try:
                wf = fsutil.read_json(self._workflow_file(checks.check_id(workflow_id,
                                                                           "workflow id")))
                files += [(self._task_file(t["key"]), t) for t in first_task_records(wf, task_ids)]
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("not writing the first task files of workflow %s now (%s); "
                            "they are rebuilt from its spec at the next start", workflow_id, e)
        return files

    @staticmethod
    def _read_dir(directory: Path, move_aside) -> tuple[list[tuple[Path, Any]], set[str]]:
        """Parsed ``*.json`` files of ``directory`` and the stems of the unparseable
        ones (moved aside, as are temp and foreign files)."""
        out: list[tuple[Path, Any]] = []
        unparseable: set[str] = set()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return out, unparseable
        for entry in entries:
            path = Path(entry.path)
            name = entry.name
            if is_temp_name(name):
                move_aside(path, "leftover temp file of an interrupted write")
                continue
            if not name.endswith(".json") or not entry.is_file(follow_symlinks=False):
                move_aside(path, "not a record file")
                continue
            try:
                with open(path, "rb") as f:
                    rec = json.loads(f.read())
            except (OSError, ValueError) as e:
                move_aside(path, f"unreadable: {e}")
                unparseable.add(name[:-5])
                continue
            out.append((path, rec))
        return out, unparseable

    # -- events --------------------------------------------------------------

    def append_event(self, workflow_id: str, event: dict[str, Any]) -> None:
        self.append_events(workflow_id, [event])

    def append_events(self, workflow_id: str, events: list[dict[str, Any]]) -> None:
        """Append to the workflow's event log (store/events.py)."""
        self._events.append(workflow_id, events)

    def close(self) -> None:
        """Stop the writer process, close the event logs kept open (also done
        when the store is collected) and delete the spare inodes."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
        self._events.close()
        if self._spares is not None:
            self._spares.purge(keep_held=False)

    def quarantined_count(self) -> int:
        # One listdir of a directory that is normally empty; only /health asks.
        try:
            return sum(1 for _ in os.scandir(self.paths.quarantine_dir))
        except OSError:
            return 0

    def load_events(self, workflow_id: str) -> list[dict[str, Any]]:
        return self._events.load(workflow_id)

    # -- files written by task processes -------------------------------------

    def task_log_path(self, workflow_id: str, task_id: str) -> Path:
        return self._task_file_in(self.paths.logs_dir, workflow_id, task_id, ".log")

    def checkpoint_path(self, workflow_id: str, task_id: str) -> Path:
        return self._task_file_in(self.paths.checkpoints_dir, workflow_id, task_id, ".json")

    def _task_file_in(self, base: Path, workflow_id: str, task_id: str, suffix: str) -> Path:
        d = base / checks.check_id(workflow_id, "workflow id")
        if d not in self._made_dirs:
            with storage_errors(base):
                fsutil.ensure_private_dir(d)
            with self._guard:
                self._made_dirs.add(d)
        return d / f"{checks.check_id(task_id, 'task id')}{suffix}"


def _num(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
