"""The API's endpoints (DESIGN.md 5): one function per route, and the route table.

An endpoint gets a `Call` (the routed request: path parameters, query, a
reader for the checked JSON body, the server with its engine) and returns a
`Response`. Host, Origin, token and body-size checks have run before it
(api.ApiHandler); what an endpoint checks is its own input (validate.py).
`ROUTES` is the one list of what the daemon answers: the router, the
OpenAPI test and the auth test read it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from provisioning.engine.loader import parse_workflow
from provisioning.errors import ProvisioningError
from provisioning.model import FINISHED_WORKFLOW, WORKFLOW_STATUSES, WorkflowStatus
from provisioning.orchestrator import peers
from provisioning.orchestrator.openapi import openapi_document
from provisioning.orchestrator.validate import (
    MAX_TEXT,
    HttpError,
    float_param,
    int_param,
    json_type,
    only_fields,
    task_key,
    workflow_id,
)
from provisioning.planner import build_workflow
from provisioning.versions import version_info

if TYPE_CHECKING:
    from provisioning.orchestrator.server import OrchestratorServer

MAX_EVENTS_WAIT_S = 30.0
LOG_CHUNK_BYTES = 1024 * 1024
MAX_PAGE = 1000  # GET /workflows?limit=

# POST /workflows/<area>/<verb> -> the business-logic workflow kind (the planner's)
KIND_ROUTES = {
    "/workflows/servers/create": "server.create",
    "/workflows/servers/delete": "server.delete",
    "/workflows/taskserv/create": "taskserv.create",
    "/workflows/cluster/create": "cluster.create",
}


@dataclass
class Response:
    status: int
    body: Any  # dict/list -> JSON; bytes -> as is
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """One routed request, as an endpoint sees it."""

    route: Route
    server: OrchestratorServer
    params: dict[str, str]  # from the path template
    query: dict[str, str]
    read_json: Callable[..., dict[str, Any]]  # read_json(optional=False): the checked body

    @property
    def engine(self) -> Any:
        return self.server.engine


# --- endpoints ----------------------------------------------------------------


def health(call: Call) -> Response:
    server = call.server
    return Response(200, {
        "status": "healthy", "instance_id": server.instance_id, "pid": os.getpid(),
        **version_info(), "uptime_s": round(time.monotonic() - server.started, 3),
        "port": server.server_address[1], "draining": server.draining,
        "queue": server.engine.stats(),
        # None: records are written in-process (off by config, or the child died)
        "record_writer_pid": server.engine.store.writer_pid,
        # None: Python ops are spawned plainly (off, starting, restarting, given up)
        "python_zygote_pid": zygote.pid if (zygote := server.engine.zygotes.lean) else None,
        # the zygote with the SDKs (business ops); None also when no SDK is installed
        "python_sdk_zygote_pid": sdk.pid if (sdk := server.engine.zygotes.sdk) else None,
        "storage_backend": server.engine.config.storage.backend,  # filesystem | postgres
        **_shared_database(server.engine.store),
    })


def _shared_database(store: Any) -> dict[str, Any]:
    """storage.postgres_shared: this daemon's id and every daemon's last
    heartbeat (peers null while the database does not answer); else nothing."""
    peers = getattr(store, "peers", None)
    if peers is None:
        return {}
    try:
        found = peers()
    except ProvisioningError:  # the database is away: /health still answers
        found = None
    return {"daemon_id": store.daemon_id, "peers": found}


def openapi(call: Call) -> Response:
    return Response(200, openapi_document(call.server.server_address[1]))


def submit_kind(call: Call) -> Response:
    body = call.read_json()
    only_fields(body, ("infra", "params"))
    infra = body.get("infra")
    if not isinstance(infra, str) or not infra.strip() or len(infra) > 256:
        raise HttpError(400, "'infra' must be a non-empty string (at most 256 characters)")
    op_params = body.get("params", {})
    if not isinstance(op_params, dict):
        raise HttpError(400, f"'params' must be an object, got {json_type(op_params)}")
    spec = build_workflow(KIND_ROUTES[call.route.path], infra, op_params)
    return _submitted(call.engine.submit(spec))


def submit_definition(call: Call) -> Response:
    body = call.read_json()
    spec = parse_workflow(body, source="request body", registry=call.server.registry)
    return _submitted(call.engine.submit(spec))


def _submitted(view: dict[str, Any]) -> Response:
    return Response(202, {"workflow_id": view["workflow_id"],
                          "status": view.get("status", WorkflowStatus.QUEUED.value)},
                    headers={"Location": f"/workflows/{view['workflow_id']}"})


def list_workflows(call: Call) -> Response:
    status = call.query.get("status") or None
    if status is not None and status not in WORKFLOW_STATUSES:
        raise HttpError(400, f"status must be one of {', '.join(WORKFLOW_STATUSES)}")
    limit = int_param(call.query, "limit", 0, minimum=1)
    offset = int_param(call.query, "offset", 0, minimum=0)
    if limit > MAX_PAGE:
        raise HttpError(400, f"'limit' must be at most {MAX_PAGE}")
    views = peers.list_workflows(call.engine)  # another daemon's too (shared database)
    counts = dict.fromkeys(WORKFLOW_STATUSES, 0)
    for view in views:
        counts[view["status"]] = counts.get(view["status"], 0) + 1
    if status is not None:
        views = [v for v in views if v["status"] == status]
    page = views[offset:offset + limit] if limit else views[offset:]
    return Response(200, {"workflows": page, "total": len(views), "offset": offset,
                          "limit": limit or None, "counts": counts})


def sign_in_code(call: Call) -> Response:
    only_fields(call.read_json(optional=True), ())
    if not call.server.config.server.ui:
        raise HttpError(404, "the dashboard is off (server.ui = false)")
    return Response(201, call.server.sessions.mint_code())


def get_workflow(call: Call) -> Response:
    return Response(200, call.engine.get_workflow(workflow_id(call.params)))


def cancel(call: Call) -> Response:
    wid = workflow_id(call.params)
    only_fields(call.read_json(optional=True), ())
    return Response(200, peers.cancel(call.engine, wid))  # applied by its owner


def retry(call: Call) -> Response:
    wid = workflow_id(call.params)
    only_fields(call.read_json(optional=True), ())
    return Response(200, peers.retry(call.engine, wid))


def events(call: Call) -> Response:
    wid = workflow_id(call.params)
    after = int_param(call.query, "after", 0, minimum=0)
    timeout = float_param(call.query, "timeout", 0.0, minimum=0.0)
    engine = call.engine
    # Status first: a monitor that sees a finished status has seen every event.
    status = engine.get_workflow(wid)["status"]
    if status in FINISHED_WORKFLOW or call.server.draining:
        timeout = 0.0
    found = peers.events(engine, wid, after=after, timeout=min(timeout, MAX_EVENTS_WAIT_S))
    last = max([after] + [int(e.get("seq", 0)) for e in found])
    return Response(200, {"events": found, "last": last, "status": status})


def get_task(call: Call) -> Response:
    return Response(200, peers.get_task(call.engine, task_key(call.params)))


def task_log(call: Call) -> Response:
    key = task_key(call.params)
    offset = int_param(call.query, "offset", 0, minimum=0)
    path, stored = peers.task_log(call.engine, key)  # path None: another daemon's task
    try:
        if path is None:
            raise FileNotFoundError(key)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(min(offset, size))
            data = f.read(LOG_CHUNK_BYTES) if offset < size else b""
    except FileNotFoundError:  # not on this host: the backend's copy, if it keeps one
        if path is not None:
            stored = call.engine.stored_task_log(key) or b""
        size = len(stored)
        data = stored[offset:offset + LOG_CHUNK_BYTES]
    return Response(200, data, content_type="text/plain; charset=utf-8",
                    headers={"X-Log-Size": str(size),
                             "X-Log-Offset": str(min(offset, size) + len(data))})


def progress(call: Call) -> Response:
    key = task_key(call.params)
    body = call.read_json()
    only_fields(body, ("progress", "status", "message"))
    value = body.get("progress")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise HttpError(400, "'progress' must be an integer from 0 to 100")
    status = body.get("status")
    if status is not None and (not isinstance(status, str) or len(status) > 64):
        raise HttpError(400, "'status' must be a short string")
    message = body.get("message")
    if message is not None and (not isinstance(message, str) or len(message) > MAX_TEXT):
        raise HttpError(400, f"'message' must be a string (at most {MAX_TEXT} characters)")
    return Response(200, call.engine.report_progress(key, value, status, message))


# --- the route table ----------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI template, e.g. /workflows/{workflow_id}
    handler: Callable[[Call], Response]
    auth: str = "admin"  # admin | none | task (admin or the task's own token)
    query: tuple[str, ...] = ()
    segments: tuple[str, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.path.strip("/").split("/")))

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params = {}
        for want, got in zip(self.segments, parts, strict=True):
            if want.startswith("{"):
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", health, auth="none"),
    Route("GET", "/openapi.json", openapi),
    *(Route("POST", path, submit_kind) for path in KIND_ROUTES),
    Route("POST", "/workflows", submit_definition),
    Route("GET", "/workflows", list_workflows, query=("status", "limit", "offset")),
    Route("GET", "/workflows/{workflow_id}", get_workflow),
    Route("POST", "/workflows/{workflow_id}/cancel", cancel),
    Route("POST", "/workflows/{workflow_id}/retry", retry),
    Route("GET", "/workflows/{workflow_id}/events", events, query=("after", "timeout")),
    Route("GET", "/tasks/{task_key}", get_task),
    Route("GET", "/tasks/{task_key}/log", task_log, query=("offset",)),
    Route("POST", "/tasks/{task_key}/progress", progress, auth="task"),
    Route("POST", "/auth/codes", sign_in_code),  # DESIGN.md 16: dashboard sign-in
)
