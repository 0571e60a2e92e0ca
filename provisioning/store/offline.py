"""Submissions from processes other than the daemon (a CLI while it is down).

Only the daemon writes queue/ and workflows/. Anyone else drops a whole
submission into ``incoming/<workflow_id>.json`` under the queue lock; the
daemon's engine picks it up with JsonFileStore.take_incoming() at start and
on a slow timer, ingests it (add_workflow), then calls remove_incoming().
Delivery is at-least-once: if the daemon dies between ingesting and removing,
the file is seen again and the engine must skip an id it already knows.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioning import fsutil, locks
from provisioning.model import SCHEMA_VERSION
from provisioning.store.fileio import storage_errors

if TYPE_CHECKING:
    from provisioning.model import WorkflowSpec
    from provisioning.paths import DataPaths

SUBMIT_TIMEOUT = 30.0  # s a submitter waits for the queue lock
INCOMING_TIMEOUT = 5.0  # s the daemon waits; busy means "next timer tick"


def incoming_dir(data_paths: DataPaths) -> Path:
    """``<data_dir>/incoming`` (DataPaths.incoming_dir when paths.py has it)."""
    return getattr(data_paths, "incoming_dir", None) or data_paths.data_dir / "incoming"


def submit_offline(data_paths: DataPaths, spec: WorkflowSpec) -> str:
    """Queue ``spec`` for the daemon to pick up; returns the new workflow id.

    Durable when it returns (temp, fsync, rename, dir fsync). Raises
    StorageFull when the disk is full (nothing left behind) and LockBusy
    (a ProvisioningError) if the queue lock stays held for SUBMIT_TIMEOUT s.
    """
    workflow_id = str(uuid.uuid4())
    item = {"schema": SCHEMA_VERSION, "kind": "incoming", "workflow_id": workflow_id,
            "spec": spec.to_dict(), "submitted_at": time.time()}
    directory = incoming_dir(data_paths)
    with storage_errors(data_paths.data_dir):
        fsutil.ensure_private_dir(data_paths.data_dir)
        fsutil.ensure_private_dir(directory)
        with locks.acquire(data_paths.queue_lock, timeout=SUBMIT_TIMEOUT):
            fsutil.atomic_write_json(directory / f"{workflow_id}.json", item)
    return workflow_id


def check_incoming(item: Any, file_stem: str) -> str | None:
    """None if ``item`` is a submission stored as ``<file_stem>.json``, else why not."""
    if not isinstance(item, dict):
        return f"not a JSON object ({type(item).__name__})"
    if item.get("kind") != "incoming":
        return f"kind is {item.get('kind')!r}, expected 'incoming'"
    if item.get("schema") != SCHEMA_VERSION:
        return f"schema is {item.get('schema')!r}, this version reads {SCHEMA_VERSION}"
    if item.get("workflow_id") != file_stem:
        return f"workflow_id {item.get('workflow_id')!r} does not match the file name"
    spec = item.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("tasks"), list):
        return "spec is missing or has no task list"
    return None
