"""The JSON-file queue's files: where each record lives, and reading them back.

``load_queue`` is JsonFileStore.load's work (docs/store.md "Recovery"): every
file of ``workflows/`` and ``queue/`` is parsed and checked; what cannot be
trusted goes to ``quarantine/`` with a warning, orphan task files of a
submission torn before its commit point are deleted, and task files a
committed workflow lacks are rebuilt from its spec (model.first_task_records).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioning import fsutil
from provisioning.model import Record, first_task_records, task_key
from provisioning.paths import DataPaths
from provisioning.store import checks
from provisioning.store.fileio import is_temp_name, quarantine, replace_many, storage_errors

log = logging.getLogger("provisioning.store")

MoveAside = Callable[[Path, str], None]


def task_file(paths: DataPaths, key: str) -> Path:
    return paths.queue_dir / f"{key}.json"


def workflow_file(paths: DataPaths, workflow_id: str) -> Path:
    return paths.workflows_dir / f"{workflow_id}.json"


def load_queue(paths: DataPaths) -> tuple[list[Record], list[Record]]:
    """Every trusted workflow in submission order (seq) and every task of
    them, grouped by workflow in that order, each in its task_ids order.
    Never raises for bad content."""
    touched: set[Path] = set()  # directories whose entries changed: fsync once at the end

    def move_aside(path: Path, reason: str) -> None:
        if quarantine(path, paths.quarantine_dir, reason) is not None:
            touched.update((path.parent, paths.quarantine_dir))

    workflows, bad_workflow_ids = _read_workflows(paths, move_aside)
    tasks = _read_tasks(paths, workflows, bad_workflow_ids, move_aside, touched)
    ordered_workflows = sorted(workflows.values(),
                               key=lambda w: (_num(w.get("seq")), _num(w.get("created_at"))))
    ordered_tasks: list[Record] = []
    rebuilt_files: list[tuple[Path, Record]] = []
    for wf in ordered_workflows:
        missing = [tid for tid in wf["task_ids"] if task_key(wf["id"], tid) not in tasks]
        rebuilt = {t["id"]: t for t in first_task_records(wf, missing)}
        ordered_tasks += [tasks.get(task_key(wf["id"], tid)) or rebuilt[tid]
                          for tid in wf["task_ids"]]
        rebuilt_files += [(task_file(paths, t["key"]), t) for t in rebuilt.values()]
        if rebuilt:
            # Normal after a crash right after a submission: its task files
            # are written after its workflow file (engine/commit.py).
            log.info("workflow %s: rebuilt %d task file(s) from its spec, as queued",
                     wf["id"], len(rebuilt))
    _write_rebuilt(paths, rebuilt_files)
    for d in touched:
        fsutil.fsync_dir(d)
    return ordered_workflows, ordered_tasks


def _read_workflows(paths: DataPaths,
                    move_aside: MoveAside) -> tuple[dict[str, Record], set[str]]:
    """Trusted workflow records by id, and the ids of those set aside."""
    workflows: dict[str, Record] = {}
    parsed, bad_ids = _read_dir(paths.workflows_dir, move_aside)
    for path, rec in parsed:
        problem = checks.check_workflow(rec, path.name[:-5])
        if problem:
            move_aside(path, problem)
            bad_ids.add(path.name[:-5])
        else:
            workflows[rec["id"]] = rec
    return workflows, bad_ids


def _read_tasks(paths: DataPaths, workflows: dict[str, Record], bad_workflow_ids: set[str],
                move_aside: MoveAside, touched: set[Path]) -> dict[str, Record]:
    """Trusted task records of trusted workflows, by key."""
    tasks: dict[str, Record] = {}
    parsed, _ = _read_dir(paths.queue_dir, move_aside)
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
    return tasks


def _read_dir(directory: Path, move_aside: MoveAside) -> tuple[list[tuple[Path, Any]], set[str]]:
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


def _write_rebuilt(paths: DataPaths, files: list[tuple[Path, Record]]) -> None:
    """Like the engine's first task files: atomic, not fsynced (the spec
    rebuilds them again if need be), all at once."""
    if not files:
        return
    try:
        with storage_errors(paths.data_dir):
            replace_many(files, [], sync=False)
    except Exception as e:  # usable from memory; written on their next change
        log.warning("could not write %d rebuilt task files: %s", len(files), e)


def _num(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
