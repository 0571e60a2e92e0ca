"""Checks of what a store reads back and names files after (formats: model/storage.py).

`check_workflow` / `check_task` say why a record read from disk cannot be
trusted (then it is quarantined); `check_id` refuses ids unusable as file
names. New records are built by provisioning.model, never here.
"""

from __future__ import annotations

from typing import Any

from provisioning.errors import ValidationError
from provisioning.model import SCHEMA_VERSION, TASK_STATUSES, WORKFLOW_STATUSES, task_key

MAX_NAME = 200  # file names are <workflow_id>.<task_id>.json: keep under NAME_MAX (255)


def check_id(value: Any, what: str) -> str:
    """An id that is safe as (part of) a file name in the data dir."""
    if (not isinstance(value, str) or not value or len(value) > MAX_NAME
            or value.startswith(".") or "/" in value or "\\" in value or "\0" in value
            or not value.isprintable()):
        raise ValidationError(f"invalid {what} {value!r}: not usable as a file name")
    return value


def _problem_common(rec: Any, kind: str) -> str | None:
    if not isinstance(rec, dict):
        return f"not a JSON object ({type(rec).__name__})"
    if rec.get("kind") != kind:
        return f"kind is {rec.get('kind')!r}, expected {kind!r}"
    if rec.get("schema") != SCHEMA_VERSION:
        return f"schema is {rec.get('schema')!r}, this version reads {SCHEMA_VERSION}"
    return None


def check_workflow(rec: Any, file_stem: str) -> str | None:
    """None if ``rec`` is a workflow record stored as ``<file_stem>.json``, else why not."""
    problem = _problem_common(rec, "workflow")
    if problem:
        return problem
    if rec.get("id") != file_stem:
        return f"id {rec.get('id')!r} does not match the file name"
    if rec.get("status") not in WORKFLOW_STATUSES:
        return f"unknown status {rec.get('status')!r}"
    task_ids = rec.get("task_ids")
    if not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids):
        return "task_ids is not a list of strings"
    spec = rec.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("tasks"), list):
        return "spec is missing or has no task list"
    spec_ids = {t.get("id") for t in spec["tasks"] if isinstance(t, dict)}
    missing = [t for t in task_ids if t not in spec_ids]
    if missing:
        return f"task_ids {missing} are not in its spec"
    return None


def check_task(rec: Any, file_stem: str) -> str | None:
    """None if ``rec`` is a task record stored as ``<file_stem>.json``, else why not."""
    problem = _problem_common(rec, "task")
    if problem:
        return problem
    wid, tid = rec.get("workflow_id"), rec.get("id")
    if not isinstance(wid, str) or not isinstance(tid, str):
        return "workflow_id or id missing"
    if rec.get("key") != file_stem or task_key(wid, tid) != file_stem:
        return f"key {rec.get('key')!r} does not match the file name"
    if rec.get("status") not in TASK_STATUSES:
        return f"unknown status {rec.get('status')!r}"
    return None
