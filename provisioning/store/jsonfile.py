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

import logging
import os
import threading
from pathlib import Path

from provisioning import fsutil
from provisioning.errors import ProvisioningError
from provisioning.model import first_task_records, task_key
from provisioning.model.storage import Event, NewWorkflow, Record, Store
from provisioning.paths import DataPaths
from provisioning.store import checks
from provisioning.store.events import EventLogs
from provisioning.store.fileio import Spares, replace_many, storage_errors
from provisioning.store.queuefiles import load_queue, task_file, workflow_file
from provisioning.store.taskfiles import TaskFiles
from provisioning.store.writer import WriterDied, WriterProcess, wait_for_old_writer

log = logging.getLogger("provisioning.store")


class JsonFileStore(Store):
    group_commit = True  # a batch costs its fsyncs: the engine groups writes in a committer

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
        self._spares = _spares_for(data_paths)
        self._events = EventLogs(data_paths.events_dir)
        self._guard = threading.Lock()
        # Per-workflow log/checkpoint dirs known to exist: no mkdir+chmod per task.
        self.task_files = TaskFiles(data_paths)

    # -- writes --------------------------------------------------------------

    def add_workflow(self, workflow: Record, tasks: list[Record]) -> None:
        """See commit_batch: task files are durable before the workflow file
        (the commit point) is renamed into place. If the machine dies in the
        middle, a workflow file may still (rarely, on filesystems that reorder
        directory updates) survive without some task files: load() rebuilds
        those from the workflow's spec as queued, which is exactly what they
        were. On any error the files this call created are removed."""
        self.commit_batch(adds=[(workflow, tasks)])

    def commit_batch(self, *, adds: list[NewWorkflow] = (), tasks: list[Record] = (),
                     workflows: list[Record] = (),
                     initial_tasks: dict[str, list[str]] | None = None,
                     events: list[tuple[str, Event]] = ()) -> None:
        """The Store contract's group commit (model/storage.py), with files:

        Each file is written to a temp file, fsynced and renamed into place
        (fsyncs in parallel, see fileio.replace_many): first the unsynced
        ``initial_tasks`` files, then every task file, then every workflow
        file; queue/ and workflows/ are fsynced ONCE each for the whole batch.
        So a batch costs its file fsyncs (overlapping) plus the directory
        fsyncs. queue/ is fsynced before any workflow file is renamed, so a
        workflow's new status never becomes durable before the task records
        written with it.

        On any error (StorageFull included) the temp files are removed and so
        are the files of ``adds`` already renamed (no half-added workflow is
        left behind); replaced records already renamed keep their new,
        complete version. An event append that fails is logged once per
        outage (the one place that decides this for the engine's events).

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
        self._commit_files(adds=adds, tasks=tasks, workflows=workflows,
                           initial_tasks=initial_tasks)
        if events:
            self._append_batch_events(events)

    def _append_batch_events(self, events: list[tuple[str, Event]]) -> None:
        by_workflow: dict[str, list[Event]] = {}
        for workflow_id, event in events:
            by_workflow.setdefault(workflow_id, []).append(event)
        for workflow_id, evs in by_workflow.items():
            try:
                self._events.append(workflow_id, evs)
            except (ProvisioningError, OSError) as e:
                if not self._event_write_failed:  # once per outage, not once per batch
                    log.error("cannot append to the event log of workflow %s: %s (said "
                              "once until it works again)", workflow_id, e)
                self._event_write_failed = True
            else:
                self._event_write_failed = False

    def _commit_files(self, *, adds: list[NewWorkflow], tasks: list[Record],
                      workflows: list[Record], initial_tasks: dict[str, list[str]] | None) -> None:
        # New records (adds) and replaced ones apart: new files never take a
        # recycled inode, so on a full disk a new submission fails (507) while
        # the spares still let accepted work record its transitions.
        new_task_files, new_wf_files = self._new_files(adds)
        created = {path for path, _ in new_task_files + new_wf_files}
        task_files = [(task_file(self.paths, _checked_key(t)), t) for t in tasks]
        wf_files = [(workflow_file(self.paths, checks.check_id(w.get("id"), "workflow id")), w)
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

    def _new_files(self, adds: list[NewWorkflow]) -> tuple[list[tuple[Path, Record]],
                                                           list[tuple[Path, Record]]]:
        """(task files, workflow files) of new workflows, their ids checked."""
        new_task_files: list[tuple[Path, Record]] = []
        new_wf_files: list[tuple[Path, Record]] = []
        for workflow, new_tasks in adds:
            wid = checks.check_id(workflow.get("id"), "workflow id")
            for task in new_tasks:
                checks.check_id(task.get("id"), "task id")
                key = task.get("key")
                if key != task_key(wid, task["id"]) or task.get("workflow_id") != wid:
                    raise ValueError(f"task {key!r} does not belong to workflow {wid!r}")
                new_task_files.append((task_file(self.paths, key), task))
            new_wf_files.append((workflow_file(self.paths, wid), workflow))
        return new_task_files, new_wf_files

    def _initial_files(self, initial: dict[str, list[str]]) -> list[tuple[Path, Record]]:
        """(path, record) of the first versions of these tasks, from their
        workflow files (committed before); a workflow that cannot be read is
        skipped: load() rebuilds its tasks the same way."""
        files: list[tuple[Path, Record]] = []
        for workflow_id, task_ids in initial.items():
            try:
                wf = fsutil.read_json(workflow_file(self.paths,
                                                    checks.check_id(workflow_id, "workflow id")))
                files += [(task_file(self.paths, t["key"]), t)
                          for t in first_task_records(wf, task_ids)]
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("not writing the first task files of workflow %s now (%s); "
                            "they are rebuilt from its spec at the next start", workflow_id, e)
        return files

    def save_workflow(self, workflow: Record) -> None:
        wid = checks.check_id(workflow.get("id"), "workflow id")
        with storage_errors(self.paths.data_dir):
            fsutil.atomic_write_json(workflow_file(self.paths, wid), workflow)

    def save_task(self, task: Record) -> None:
        key = _checked_key(task)
        with storage_errors(self.paths.data_dir):
            fsutil.atomic_write_json(task_file(self.paths, key), task)

    def append_event(self, workflow_id: str, event: Event) -> None:
        self._events.append(workflow_id, [event])

    # -- reads -----------------------------------------------------------------

    def load(self) -> tuple[list[Record], list[Record]]:
        """Every workflow and task, checked (store/queuefiles.py, docs/store.md
        "Recovery"); then, for the daemon, the writer process starts."""
        if self._use_writer_process and self._writer is None:
            wait_for_old_writer(self.paths.data_dir)  # a dead daemon's writer may still write
        if self._spares is not None:  # names left by a crash may still link live records
            self._spares.purge()
        loaded = load_queue(self.paths)
        if self._use_writer_process and self._writer is None:
            self._start_writer()
        return loaded

    def load_events(self, workflow_id: str) -> list[Event]:
        return self._events.load(workflow_id)

    def quarantined_count(self) -> int:
        # One listdir of a directory that is normally empty; only /health asks.
        try:
            return sum(1 for _ in os.scandir(self.paths.quarantine_dir))
        except OSError:
            return 0

    # -- files written by task processes -------------------------------------

    def task_log_path(self, workflow_id: str, task_id: str) -> Path:
        return self.task_files.log_path(workflow_id, task_id)

    def checkpoint_path(self, workflow_id: str, task_id: str) -> Path:
        return self.task_files.checkpoint_path(workflow_id, task_id)

    # -- lifecycle ---------------------------------------------------------------

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

    def close(self) -> None:
        """Stop the writer process, close the event logs kept open (also done
        when the store is collected) and delete the spare inodes."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
        self._events.close()
        if self._spares is not None:
            self._spares.purge(keep_held=False)


def _checked_key(task: Record) -> str:
    checks.check_id(task.get("workflow_id"), "workflow id")
    checks.check_id(task.get("id"), "task id")
    key = task_key(task["workflow_id"], task["id"])
    if task.get("key") != key:
        raise ValueError(f"task key {task.get('key')!r} should be {key!r}")
    return key


def _spares_for(data_paths: DataPaths) -> Spares | None:
    """Recycled inodes of replaced records (fileio.Spares), if data/spare/ is on
    the same filesystem as queue/ and workflows/ (renames move them there)."""
    spare_dir = data_paths.data_dir / "spare"
    try:
        fsutil.ensure_private_dir(spare_dir)
        if os.stat(spare_dir).st_dev == os.stat(data_paths.queue_dir).st_dev:
            return Spares(spare_dir)
    except OSError as e:  # only an optimisation: write without it
        log.warning("not recycling record files in %s: %s", spare_dir, e)
    return None
