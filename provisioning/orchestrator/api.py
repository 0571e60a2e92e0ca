"""The HTTP API (DESIGN.md 5) on the standard library's ThreadingHTTPServer.

Every request passes, in order: exact Host check (421), Origin check (403),
routing (404/405), bearer token (401), body limits (411/413/415) and JSON
validation (400) before the engine sees it. Responses are JSON with a
Content-Length (keep-alive clients never hang), errors are `{"error": ...}`.
Anything unexpected is logged with its traceback to the daemon log and
answered 500 `{"error": "internal error"}`: no input may reach that path.

Slow clients: each connection has a socket timeout
(server.request_timeout_seconds) and at most server.max_connections are
served at once; a connection over the cap is answered 503 at once and closed
(the server itself: server.py).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from provisioning.errors import ProvisioningError, http_status_of
from provisioning.orchestrator import auth

if TYPE_CHECKING:
    from provisioning.orchestrator.server import OrchestratorServer

log = logging.getLogger("provisioning.orchestrator.api")

WORKFLOW_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
TASK_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}\.[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_EVENTS_WAIT_S = 30.0
LOG_CHUNK_BYTES = 1024 * 1024
MAX_TEXT = 4096  # progress messages, infra names
MAX_JSON_DEPTH = 64  # deeper documents would hit recursion limits later, in the engine
WORKFLOW_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TASK_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "skipped")

# POST /workflows/<area>/<verb> -> the business-logic workflow kind
KIND_ROUTES = {
    "/workflows/servers/create": "server.create",
    "/workflows/servers/delete": "server.delete",
    "/workflows/taskserv/create": "taskserv.create",
    "/workflows/cluster/create": "cluster.create",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI template, e.g. /workflows/{workflow_id}
    handler: str
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
    Route("GET", "/health", "health", auth="none"),
    Route("GET", "/openapi.json", "openapi"),
    *(Route("POST", path, "submit_kind") for path in KIND_ROUTES),
    Route("POST", "/workflows", "submit_definition"),
    Route("GET", "/workflows", "list_workflows", query=("status",)),
    Route("GET", "/workflows/{workflow_id}", "get_workflow"),
    Route("POST", "/workflows/{workflow_id}/cancel", "cancel"),
    Route("POST", "/workflows/{workflow_id}/retry", "retry"),
    Route("GET", "/workflows/{workflow_id}/events", "events", query=("after", "timeout")),
    Route("GET", "/tasks/{task_key}", "get_task"),
    Route("GET", "/tasks/{task_key}/log", "task_log", query=("offset",)),
    Route("POST", "/tasks/{task_key}/progress", "progress", auth="task"),
)


@dataclass
class Response:
    status: int
    body: Any  # dict/list -> JSON; bytes -> as is
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _send_all_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: with Nagle on, the body waits for the
    # client's delayed ACK (40 ms per request on keep-alive connections).
    disable_nagle_algorithm = True
    server: OrchestratorServer

    def version_string(self) -> str:
        from provisioning.versions import PLATFORM_VERSION

        return f"provisioning-orchestrator/{PLATFORM_VERSION}"

    def setup(self) -> None:
        self.timeout = self.server.config.server.request_timeout_seconds
        super().setup()

    # --- plumbing -------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        log.debug("%s %s", self.address_string(), format % args)

    def handle_expect_100(self) -> bool:
        # Refuse an oversized body before the client sends it.
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        if length > self.server.config.server.max_body_bytes:
            self.send_error(413)
            return False
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Errors the stdlib raises itself (bad request line, 414, 431, 501): JSON too."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._write(Response(code, {"error": message or phrase}))

    def _write(self, response: Response) -> None:
        if isinstance(response.body, bytes):
            body = response.body
        else:
            body = _send_all_json(response.body)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._responded = True

    def _dispatch(self) -> None:
        self._responded = False
        self._body_read = False
        try:
            response = self._handle()
        except HttpError as e:
            response = Response(e.status, {"error": e.message}, headers=e.headers)
        except ProvisioningError as e:
            response = Response(http_status_of(e), {"error": str(e)})
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return
        except Exception:
            log.exception("internal error on %s %s", self.command, self.path[:200])
            response = Response(500, {"error": "internal error"})
        if self._responded:  # failed half-way through a response: nothing sane to add
            self.close_connection = True
            return
        if not self._body_read and self.headers.get("Content-Length", "0").strip() != "0":
            self.close_connection = True  # unread body would be parsed as the next request
        try:
            self._write(response)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch
    # Other registered methods reach the router too: 404/405 with Allow, not the
    # stdlib's 501 (a 5xx, flagged by schemathesis). Unknown tokens (BREW) stay 501.
    do_HEAD = do_TRACE = do_CONNECT = do_QUERY = _dispatch

    # --- checks -----------------------------------------------------------

    def _handle(self) -> Response:
        allowed = self.server.allowed_hosts
        if not auth.host_allowed(self.headers.get("Host"), allowed):
            raise HttpError(421, "unexpected Host header; use "
                            f"http://127.0.0.1:{self.server.server_address[1]}")
        if not auth.origin_allowed(self.headers.get("Origin"), allowed):
            raise HttpError(403, "cross-origin requests are not allowed")
        split = urlsplit(self.path)
        route, params = self._route(split.path)
        query = self._query(split.query, route)
        if route.auth != "none":
            self._authenticate(route, params)
        if self.server.engine is None:
            raise HttpError(503, "starting up; retry shortly")
        return getattr(self, "h_" + route.handler)(route, params, query)

    def _route(self, raw_path: str) -> tuple[Route, dict[str, str]]:
        if not raw_path.startswith("/") or len(raw_path) > 1024:
            raise HttpError(404, "no such endpoint")
        try:
            parts = [unquote(p, errors="strict") if "%" in p else p
                     for p in raw_path[1:].split("/")]
        except UnicodeDecodeError:
            raise HttpError(400, "path is not valid UTF-8 once decoded") from None
        methods = []
        for route in ROUTES:
            params = route.match(parts)
            if params is None:
                continue
            if route.method == self.command:
                return route, params
            methods.append(route.method)
        if methods:
            raise HttpError(405, f"method {self.command} not allowed here",
                            {"Allow": ", ".join(sorted(set(methods)))})
        raise HttpError(404, f"no such endpoint: {raw_path[:200]}")

    def _query(self, raw: str, route: Route) -> dict[str, str]:
        try:
            pairs = parse_qs(raw, keep_blank_values=True, strict_parsing=False,
                             errors="strict", max_num_fields=20)
        except ValueError as e:
            raise HttpError(400, f"bad query string: {e}") from None
        out = {}
        for key, values in pairs.items():
            if key not in route.query:
                known = ", ".join(route.query) or "none"
                raise HttpError(400, f"unknown query parameter '{key[:50]}' (known: {known})")
            if len(values) != 1:
                raise HttpError(400, f"query parameter '{key}' given more than once")
            out[key] = values[0]
        return out

    def _authenticate(self, route: Route, params: dict[str, str]) -> None:
        presented = auth.bearer_token(self.headers.get("Authorization"))
        if auth.token_matches(presented, self.server.token):
            return
        if (route.auth == "task" and presented is not None and self.server.engine is not None
                and TASK_KEY_RE.match(params.get("task_key", ""))
                and self.server.engine.check_task_token(params["task_key"], presented)):
            return
        raise HttpError(401, "missing or invalid token: send 'Authorization: Bearer <token>' "
                        "(the token is in the data dir's 'token' file)",
                        {"WWW-Authenticate": 'Bearer realm="provisioning"'})

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        if not raw.strip().isdigit():
            raise HttpError(400, "invalid Content-Length")
        return int(raw)

    def _read_json(self, *, optional: bool = False) -> dict[str, Any]:
        """The request body as a JSON object (checked size, type, encoding)."""
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "chunked bodies are not supported; send Content-Length")
        length = self._content_length()
        if length > self.server.config.server.max_body_bytes:
            raise HttpError(413, f"body too large ({length} bytes; the limit is "
                            f"{self.server.config.server.max_body_bytes})")
        if length == 0:
            self._body_read = True
            if optional:
                return {}
            raise HttpError(400, "a JSON object body is required")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "Content-Type must be application/json")
        raw = self.rfile.read(length)
        self._body_read = True
        if len(raw) != length:
            self.close_connection = True
            raise HttpError(400, "body shorter than Content-Length")
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise HttpError(400, f"malformed JSON body: {str(e)[:200]}") from None
        if not isinstance(data, dict):
            raise HttpError(400, f"the body must be a JSON object, got {type(data).__name__}")
        if _too_deep(data, MAX_JSON_DEPTH):
            raise HttpError(400, f"JSON body nested deeper than {MAX_JSON_DEPTH} levels")
        return data

    # --- routes -------------------------------------------------------------

    def h_health(self, route: Route, params: dict, query: dict) -> Response:
        import os

        from provisioning.versions import version_info

        return Response(200, {
            "status": "healthy", "instance_id": self.server.instance_id, "pid": os.getpid(),
            **version_info(), "uptime_s": round(time.monotonic() - self.server.started, 3),
            "port": self.server.server_address[1], "draining": self.server.draining,
            "queue": self.server.engine.stats(),
            # None: records are written in-process (off by config, or the child died)
            "record_writer_pid": getattr(self.server.engine.store, "writer_pid", None),
        })

    def h_openapi(self, route: Route, params: dict, query: dict) -> Response:
        from provisioning.orchestrator.openapi import openapi_document

        return Response(200, openapi_document(self.server.server_address[1]))

    def h_submit_kind(self, route: Route, params: dict, query: dict) -> Response:
        body = self._read_json()
        _only_fields(body, ("infra", "params"))
        infra = body.get("infra")
        if not isinstance(infra, str) or not infra.strip() or len(infra) > 256:
            raise HttpError(400, "'infra' must be a non-empty string (at most 256 characters)")
        op_params = body.get("params", {})
        if not isinstance(op_params, dict):
            raise HttpError(400, f"'params' must be an object, got {_json_type(op_params)}")
        from provisioning.planner import build_workflow

        spec = build_workflow(KIND_ROUTES[route.path], infra, op_params)
        return self._submitted(self.server.engine.submit(spec))

    def h_submit_definition(self, route: Route, params: dict, query: dict) -> Response:
        from provisioning.engine.loader import parse_workflow

        body = self._read_json()
        spec = parse_workflow(body, source="request body", registry=self.server.registry)
        return self._submitted(self.server.engine.submit(spec))

    @staticmethod
    def _submitted(view: dict[str, Any]) -> Response:
        return Response(202, {"workflow_id": view["workflow_id"],
                              "status": view.get("status", "queued")},
                        headers={"Location": f"/workflows/{view['workflow_id']}"})

    def h_list_workflows(self, route: Route, params: dict, query: dict) -> Response:
        status = query.get("status") or None
        if status is not None and status not in WORKFLOW_STATUSES:
            raise HttpError(400, f"status must be one of {', '.join(WORKFLOW_STATUSES)}")
        return Response(200, {"workflows": self.server.engine.list_workflows(status)})

    def h_get_workflow(self, route: Route, params: dict, query: dict) -> Response:
        return Response(200, self.server.engine.get_workflow(_workflow_id(params)))

    def h_cancel(self, route: Route, params: dict, query: dict) -> Response:
        workflow_id = _workflow_id(params)
        _only_fields(self._read_json(optional=True), ())
        return Response(200, self.server.engine.cancel(workflow_id))

    def h_retry(self, route: Route, params: dict, query: dict) -> Response:
        workflow_id = _workflow_id(params)
        _only_fields(self._read_json(optional=True), ())
        return Response(200, self.server.engine.retry(workflow_id))

    def h_events(self, route: Route, params: dict, query: dict) -> Response:
        workflow_id = _workflow_id(params)
        after = _int_param(query, "after", 0, minimum=0)
        timeout = _float_param(query, "timeout", 0.0, minimum=0.0)
        engine = self.server.engine
        # Status first: a monitor that sees a finished status has seen every event.
        status = engine.get_workflow(workflow_id)["status"]
        if status in ("succeeded", "failed", "cancelled") or self.server.draining:
            timeout = 0.0
        events = engine.events(workflow_id, after=after,
                               timeout=min(timeout, MAX_EVENTS_WAIT_S))
        last = max([after] + [int(e.get("seq", 0)) for e in events])
        return Response(200, {"events": events, "last": last, "status": status})

    def h_get_task(self, route: Route, params: dict, query: dict) -> Response:
        return Response(200, self.server.engine.get_task(_task_key(params)))

    def h_task_log(self, route: Route, params: dict, query: dict) -> Response:
        key = _task_key(params)
        offset = _int_param(query, "offset", 0, minimum=0)
        path = self.server.engine.task_log_path(key)
        try:
            with open(path, "rb") as f:
                import os

                size = os.fstat(f.fileno()).st_size
                f.seek(min(offset, size))
                data = f.read(LOG_CHUNK_BYTES) if offset < size else b""
        except FileNotFoundError:
            size, data = 0, b""
        return Response(200, data, content_type="text/plain; charset=utf-8",
                        headers={"X-Log-Size": str(size),
                                 "X-Log-Offset": str(min(offset, size) + len(data))})

    def h_progress(self, route: Route, params: dict, query: dict) -> Response:
        key = _task_key(params)
        body = self._read_json()
        _only_fields(body, ("progress", "status", "message"))
        progress = body.get("progress")
        if isinstance(progress, bool) or not isinstance(progress, int) \
                or not 0 <= progress <= 100:
            raise HttpError(400, "'progress' must be an integer from 0 to 100")
        status = body.get("status")
        if status is not None and (not isinstance(status, str) or len(status) > 64):
            raise HttpError(400, "'status' must be a short string")
        message = body.get("message")
        if message is not None and (not isinstance(message, str) or len(message) > MAX_TEXT):
            raise HttpError(400, f"'message' must be a string (at most {MAX_TEXT} characters)")
        return Response(200, self.server.engine.report_progress(key, progress, status, message))


# --- validation helpers ---------------------------------------------------


def _too_deep(data: Any, limit: int) -> bool:
    """Iterative (no recursion) check of the nesting depth of a parsed document."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null", int: "number", float: "number"}.get(type(value), "value")


def _only_fields(body: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = [k for k in body if k not in known]
    if unknown:
        raise HttpError(400, f"unknown field '{str(unknown[0])[:50]}' "
                        f"(known: {', '.join(known) or 'none'})")


def _workflow_id(params: dict[str, str]) -> str:
    value = params["workflow_id"]
    if not WORKFLOW_ID_RE.match(value):
        raise HttpError(400, "invalid workflow id: 1-128 letters, digits, '-' or '_'")
    return value


def _task_key(params: dict[str, str]) -> str:
    value = params["task_key"]
    if not TASK_KEY_RE.match(value):
        raise HttpError(400, "invalid task id: expected <workflow_id>.<task_id>")
    return value


def _int_param(query: dict[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 18 or int(raw) < minimum:
        raise HttpError(400, f"'{name}' must be an integer >= {minimum}")
    return int(raw)


def _float_param(query: dict[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HttpError(400, f"'{name}' must be a number of seconds") from None
    if not value >= minimum or value != value or value == float("inf"):
        raise HttpError(400, f"'{name}' must be a number >= {minimum:g}")
    return value
