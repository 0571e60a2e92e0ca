"""Any daemon answers any API call about any workflow (DESIGN.md 15).

With several daemons on one database (``storage.postgres_shared``) only the
owner of a workflow (its lease holder) has it in its engine. The endpoints
ask the engine first, and come here when it does not hold the workflow;
with any other store the Store's defaults ("no peers") make the engine's
answer, or its NotFound, the whole answer, as before. The decision (README
"Running several orchestrators"):

- Reads of a workflow this daemon does not hold come from the database as
  stored now: a task's view, events, a finished task's log (a running
  task's log is on its owner's host: empty here), and the list, which
  shows every workflow of the database in the same view shape. An events
  long poll waits on LISTEN for the owner's NOTIFY (Store.peer_events).
- Cancel and retry are applied by the owner's own engine, the same code
  path as a call made to it (Store.ask_owner: a request row, NOTIFY, the
  owner's lease thread applies it with ``serve_request`` and stores the
  outcome); the answer here is exactly its answer (the view, or its
  Conflict's 409 and message). When no live daemon holds the workflow
  (its lease is free or expired, or it finished and has none), this daemon
  claims it, adopts it from the database and applies the call itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from provisioning import model
from provisioning.engine import views
from provisioning.engine.engine import MAX_EVENTS_PER_CALL, Engine
from provisioning.errors import (
    Conflict,
    NotFound,
    ProvisioningError,
    ServiceUnavailable,
    UsageError,
    http_status_of,
)
from provisioning.polling import wait_until

log = logging.getLogger("provisioning.orchestrator")

REQUEST_WAIT_S = 30.0  # for the owner's outcome of a cancel or retry, then 503
ADOPTION_WAIT_S = 10.0  # the owner's side: for a workflow it claimed to be loaded
ERRORS_BY_STATUS: dict[int, type[ProvisioningError]] = {
    400: UsageError, 404: NotFound, 409: Conflict, 503: ServiceUnavailable}


# -- reads --------------------------------------------------------------------------

def list_workflows(engine: Engine) -> list[dict[str, Any]]:
    """The engine's workflows and every other one of the database, newest first."""
    mine = engine.list_workflows()
    theirs = []
    for record, counts in engine.store.peer_workflows({v["workflow_id"] for v in mine}):
        view = views.workflow_view(record, [], with_tasks=False)
        view["counts"].update(counts)
        theirs.append(view)
    if not theirs:
        return mine
    return sorted(mine + theirs, key=lambda v: v.get("created_at") or 0, reverse=True)


def get_task(engine: Engine, key: str) -> dict[str, Any]:
    try:
        return engine.get_task(key)
    except NotFound:
        _, task = _stored_task(engine, key)
        return views.task_view(task)


def events(engine: Engine, workflow_id: str, after: int, timeout: float) -> list[dict[str, Any]]:
    """Events with seq > after, waiting up to ``timeout`` s for some."""
    try:
        return engine.events(workflow_id, after=after, timeout=timeout)
    except NotFound:
        found = (engine.store.peer_events(workflow_id, after, MAX_EVENTS_PER_CALL, timeout)
                 if model.valid_workflow_id(workflow_id) else None)
        if found is None:
            raise
        return found


def task_log(engine: Engine, key: str) -> tuple[Path | None, bytes]:
    """(the local log file, or None and the backend's copy of a finished
    task's log: b"" while the task runs under another daemon)."""
    try:
        return engine.task_log_path(key), b""
    except NotFound:
        workflow_id, task = _stored_task(engine, key)
    if task["status"] not in model.FINISHED_TASK:
        return None, b""
    return None, engine.store.stored_task_log(workflow_id, task["id"]) or b""


def _stored_task(engine: Engine, key: str) -> tuple[str, model.Record]:
    """Another daemon's task as stored now; NotFound as the engine says it."""
    if not model.valid_task_key(key):
        raise NotFound(f"no task '{key}' (task ids look like <workflow id>.<task id>)")
    workflow_id, task_id = model.split_task_key(key)
    found = engine.store.read_workflow(workflow_id)
    if found is None:
        raise NotFound(f"no workflow {workflow_id}",
                       hint="`provisioning workflow list` shows the known ones")
    for task in found[1]:
        if task["id"] == task_id:
            return workflow_id, task
    raise NotFound(f"workflow {workflow_id} has no task '{task_id}'")


# -- cancel and retry ---------------------------------------------------------------

def cancel(engine: Engine, workflow_id: str) -> dict[str, Any]:
    return _apply(engine, workflow_id, "cancel")


def retry(engine: Engine, workflow_id: str) -> dict[str, Any]:
    return _apply(engine, workflow_id, "retry")


def _apply(engine: Engine, workflow_id: str, action: str) -> dict[str, Any]:
    """Apply ``action`` where the workflow runs: here when this engine runs
    it; else by its live owner; else (nobody holds it) here after a claim.
    A workflow finished here is asked about too: a peer may have retried it."""
    do = getattr(engine, action)
    flow = engine.flows.get(workflow_id) if model.valid_workflow_id(workflow_id) else None
    if flow is None or flow.finished:
        if flow is not None:  # what it wrote last is in the database before it is re-read
            engine.journal.settle(flow.written)
        for _ in range(3):  # the owner may die, or a peer claim it, between the two
            outcome = engine.store.ask_owner(workflow_id, action, REQUEST_WAIT_S)
            if outcome is not None:
                return _answer(outcome)
            found = engine.store.claim_workflow(workflow_id)
            if found is not None:
                engine.adopt(*found, refresh=True)
                return _claimed(engine, workflow_id, do)
    return do(workflow_id)


def _claimed(engine: Engine, workflow_id: str, do: Any) -> dict[str, Any]:
    try:
        return do(workflow_id)
    except ProvisioningError:
        flow = engine.flows.get(workflow_id)
        if flow is None or flow.finished:  # refused (cancel of a finished one): not ours to keep
            engine.store.release_workflow(workflow_id)
        raise


def _answer(outcome: dict[str, Any]) -> dict[str, Any]:
    """What the owner's engine returned: its view, or its error raised here."""
    if "view" in outcome:
        return outcome["view"]
    status = int(outcome.get("http_status") or 500)
    error = ERRORS_BY_STATUS.get(status, ProvisioningError)(
        str(outcome.get("error") or "the owner of the workflow refused"), hint=outcome.get("hint"))
    if status not in ERRORS_BY_STATUS:
        error.http_status = status  # type: ignore[attr-defined]
    raise error


def serve_request(engine: Engine, workflow_id: str, action: str) -> dict[str, Any]:
    """The owner's side of a forwarded cancel or retry (its lease thread calls
    it): applied by this engine; the outcome to store, never raised."""
    try:
        if action not in ("cancel", "retry"):
            raise UsageError(f"unknown action {action!r}")
        # Its lease is this daemon's, but a claim's adoption may still be loading it
        wait_until(lambda: engine.flows.get(workflow_id) is not None, ADOPTION_WAIT_S)
        return {"view": getattr(engine, action)(workflow_id)}
    except ProvisioningError as e:
        return {"error": e.message, "hint": e.hint, "http_status": http_status_of(e)}
    except Exception:
        log.exception("a peer's %s of workflow %s failed", action, workflow_id)
        return {"error": "internal error", "http_status": 500}
