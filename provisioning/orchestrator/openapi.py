"""The OpenAPI 3.0 description of the API (served at GET /openapi.json).

Written by hand so it can say what each route means; tests/test_openapi.py
keeps it true: every route in endpoints.ROUTES is described here, and every path
described here answers on a live daemon.
"""

from __future__ import annotations

from typing import Any

from provisioning.model import PRIORITIES, TASK_STATUSES, WORKFLOW_STATUSES, WorkflowStatus
from provisioning.versions import API_VERSION, PLATFORM_VERSION

_ERROR = {"$ref": "#/components/responses/Error"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, responses: dict[str, Any], *, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, secured: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses,
                                                            "4XX": _ERROR}}
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    if not secured:
        op["security"] = []
    return op


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "maxLength": 193}}


def _query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


WORKFLOW_ID = _path_param("workflow_id", "workflow id (as returned on submission)")
TASK_KEY = _path_param("task_key", "<workflow_id>.<task_id>")

_KIND_BODY = {"type": "object", "additionalProperties": False, "required": ["infra"],
              "properties": {"infra": {"type": "string", "maxLength": 256},
                             "params": {"type": "object"}}}

_ACCEPTED = {"202": _json(_ref("Accepted"), WorkflowStatus.QUEUED.value)}
# storage.postgres_shared: another daemon runs the workflow and did not answer in 30 s
_PEER_SILENT = {"503": _ERROR}

_KIND_SUMMARIES = {
    "/workflows/servers/create": "Create the servers of an infra (params: servers, ...)",
    "/workflows/servers/delete": "Delete servers of an infra",
    "/workflows/taskserv/create": "Install a task service on servers of an infra",
    "/workflows/cluster/create": "Create a cluster (servers + task services)",
}


def _workflow_paths() -> dict[str, Any]:
    """/health, this document and the /workflows routes (the business kinds aside)."""
    return {
        "/health": {"get": _op("Liveness, versions and queue counts (no token)",
                               {"200": _json(_ref("Health"))}, secured=False)},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})})},
        "/workflows": {
            "post": _op("Submit a whole workflow definition (DESIGN.md 6)", _ACCEPTED,
                        body=_ref("WorkflowDefinition")),
            "get": _op("List workflows, newest first; in pages with limit/offset",
                       {"200": _json(_ref("WorkflowList"))},
                       params=[_query_param("status", {"type": "string", "enum": [
                           s.value for s in WORKFLOW_STATUSES]},
                           "only workflows in this state"),
                           _query_param("limit", {"type": "integer", "minimum": 1,
                                                  "maximum": 1000},
                                        "at most this many (default: all)"),
                           _query_param("offset", {"type": "integer", "minimum": 0},
                                        "skip this many of the (filtered) list first")]),
        },
        "/workflows/{workflow_id}": {"get": _op(
            "One workflow with every task's state, progress, attempts and timings",
            {"200": _json(_ref("Workflow"))}, params=[WORKFLOW_ID])},
        "/workflows/{workflow_id}/cancel": {"post": _op(
            "Cancel running and pending tasks (body optional: {}); 503: another daemon "
            "runs it (storage.postgres_shared) and did not answer in 30 s",
            {"200": _json(_ref("Workflow")), **_PEER_SILENT}, params=[WORKFLOW_ID])},
        "/workflows/{workflow_id}/retry": {"post": _op(
            "Re-run failed/cancelled tasks from their checkpoints, never completed ones "
            "(body optional: {}); 409 while the workflow runs; 503 as for cancel",
            {"200": _json(_ref("Workflow")), **_PEER_SILENT}, params=[WORKFLOW_ID])},
        "/workflows/{workflow_id}/events": {"get": _op(
            "Long-poll state/progress events with seq > after (waits up to timeout s, max 30)",
            {"200": _json({"type": "object", "properties": {
                "events": {"type": "array", "items": _ref("Event")},
                "last": {"type": "integer"}, "status": {"type": "string"}}})},
            params=[WORKFLOW_ID,
                    _query_param("after", {"type": "integer", "minimum": 0}, "last seq seen"),
                    _query_param("timeout", {"type": "number", "minimum": 0, "maximum": 30},
                                 "seconds to wait for new events")])},
    }


def _task_and_auth_paths() -> dict[str, Any]:
    """/tasks/{task_key}... and /auth/codes."""
    return {
        "/tasks/{task_key}": {"get": _op("One task", {"200": _json(_ref("Task"))},
                                         params=[TASK_KEY])},
        "/tasks/{task_key}/log": {"get": _op(
            "The task's captured output from offset (headers X-Log-Size, X-Log-Offset)",
            {"200": {"description": "log bytes",
                     "headers": {"X-Log-Size": {"schema": {"type": "integer"}},
                                 "X-Log-Offset": {"schema": {"type": "integer"}}},
                     "content": {"text/plain": {"schema": {"type": "string"}}}}},
            params=[TASK_KEY, _query_param("offset", {"type": "integer", "minimum": 0},
                                           "byte offset to read from")])},
        "/tasks/{task_key}/progress": {"post": _op(
            "Progress report from a running task (API token or the task's own token)",
            {"200": _json(_ref("Task"))}, params=[TASK_KEY], body={
                "type": "object", "additionalProperties": False, "required": ["progress"],
                "properties": {"progress": {"type": "integer", "minimum": 0, "maximum": 100},
                               "status": {"type": "string", "maxLength": 64},
                               "message": {"type": "string", "maxLength": 4096}}})},
        "/auth/codes": {"post": _op(
            "Mint a one-time dashboard sign-in code (what `provisioning orchestrator ui` "
            "prints as a URL; good once, for expires_in seconds; body optional: {})",
            {"201": _json(_ref("SignInCode"), "created")})},
    }


def openapi_document(port: int | None = None) -> dict[str, Any]:
    """The whole document; `port` fills the servers entry when known."""
    paths: dict[str, Any] = {**_workflow_paths(), **_task_and_auth_paths()}
    for path, summary in _KIND_SUMMARIES.items():
        paths[path] = {"post": _op(summary, _ACCEPTED, body=_KIND_BODY)}

    return {
        "openapi": "3.0.3",
        "info": {"title": "provisioning orchestrator", "version": PLATFORM_VERSION,
                 "description": f"API {API_VERSION}. Every route but /health needs "
                                "'Authorization: Bearer <token>' (the data dir's token file). "
                                "The dashboard's reads, cancel and retry also accept its "
                                "session cookie together with an X-CSRF-Token header."},
        "servers": [{"url": f"http://127.0.0.1:{port or 9090}"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": _json(_ref("Error"), "bad request, auth, not found, ...")},
            "schemas": _SCHEMAS,
        },
    }


_NUM = {"type": "number", "nullable": True}
_STR = {"type": "string", "nullable": True}

_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}}},
    "Accepted": {"type": "object", "properties": {"workflow_id": {"type": "string"},
                                                  "status": {"type": "string"}}},
    "Health": {"type": "object", "properties": {
        "status": {"type": "string"}, "instance_id": {"type": "string"},
        "pid": {"type": "integer"}, "platform_version": {"type": "string"},
        "core_version": {"type": "string"}, "api_version": {"type": "string"},
        "uptime_s": {"type": "number"}, "port": {"type": "integer"},
        "draining": {"type": "boolean"}, "queue": {"type": "object"},
        "record_writer_pid": {"type": "integer", "nullable": True,
                              "description": "the daemon's record-writer child; null when "
                                             "records are written in-process"},
        "python_zygote_pid": {"type": "integer", "nullable": True,
                              "description": "the daemon's Python zygote (forks Python ops); "
                                             "null when they are spawned plainly"},
        "python_sdk_zygote_pid": {"type": "integer", "nullable": True,
                                  "description": "the zygote with the SDKs pre-imported (forks "
                                                 "the server/taskserv/cluster ops); null when "
                                                 "none is installed or ops spawn plainly"},
        "storage_backend": {"type": "string", "enum": ["filesystem", "postgres"],
                            "description": "where the records live (storage.backend)"},
        "daemon_id": {"type": "string",
                      "description": "storage.postgres_shared only: this daemon's lease owner id"},
        "peers": {"type": "array", "nullable": True, "items": {"type": "object"},
                  "description": "storage.postgres_shared only: every daemon of the database "
                                 "(id, host, pid, endpoint, heartbeat_age_s)"}}},
    "WorkflowDefinition": {"type": "object", "required": ["tasks"], "properties": {
        "workflow": {"type": "object", "properties": {
            "name": {"type": "string"}, "max_parallel": {"type": "integer", "minimum": 1},
            "kind": {"type": "string"}, "description": {"type": "string"}}},
        "tasks": {"type": "array", "minItems": 1, "items": {"type": "object",
                  "required": ["id", "op"], "properties": {
                      "id": {"type": "string"}, "op": {"type": "string"},
                      "params": {"type": "object"},
                      "depends_on": {"type": "array", "items": {"type": "string"}},
                      "priority": {"type": "string",
                                   "enum": list(PRIORITIES)},
                      "retries": {"type": "integer"}, "timeout_s": {"type": "integer"}}}}}},
    "Task": {"type": "object", "properties": {
        "key": {"type": "string"}, "workflow_id": {"type": "string"}, "id": {"type": "string"},
        "op": {"type": "string"}, "params": {"type": "object"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "priority": {"type": "string"}, "status": {"type": "string", "enum": [
            s.value for s in TASK_STATUSES]},
        "progress": {"type": "integer"}, "message": _STR, "attempts": {"type": "integer"},
        "retries": {"type": "integer"}, "started_at": _NUM, "finished_at": _NUM,
        "duration_s": _NUM, "exit_code": {"type": "integer", "nullable": True},
        "signal": {"type": "integer", "nullable": True}, "error": _STR, "result": {},
        "pid": {"type": "integer", "nullable": True}}},
    "Workflow": {"type": "object", "properties": {
        "workflow_id": {"type": "string"}, "name": {"type": "string"},
        "kind": {"type": "string"}, "status": {"type": "string"},
        "created_at": _NUM, "started_at": _NUM, "finished_at": _NUM, "duration_s": _NUM,
        "max_parallel": {"type": "integer", "nullable": True},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "tasks": {"type": "array", "items": _ref("Task")}}},
    "WorkflowList": {"type": "object", "properties": {
        "workflows": {"type": "array", "items": _ref("Workflow")},
        "total": {"type": "integer", "description": "how many match the status filter"},
        "offset": {"type": "integer"}, "limit": {"type": "integer", "nullable": True},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"},
                   "description": "every workflow by status, whatever the filter"}}},
    "SignInCode": {"type": "object", "properties": {
        "code": {"type": "string"}, "expires_in": {"type": "integer"},
        "path": {"type": "string", "description": "/ui/login?code=...: open it on this "
                                                  "daemon's address"}}},
    "Event": {"type": "object", "properties": {
        "seq": {"type": "integer"}, "ts": {"type": "number"},
        "type": {"type": "string", "enum": ["workflow", "task", "progress"]},
        "task": _STR, "status": _STR, "progress": {"type": "integer", "nullable": True},
        "message": _STR}},
}
