"""The HTTP API's request pipeline (DESIGN.md 5) on the stdlib's BaseHTTPRequestHandler.

Every request passes, in order: exact Host check (421), Origin check (403),
routing (404/405), bearer token (401), body limits (411/413/415) and JSON
validation (400) before its endpoint (endpoints.py) sees it. Responses are
JSON with a Content-Length (keep-alive clients never hang), errors are
`{"error": ...}`. Anything unexpected is logged with its traceback to the
daemon log and answered 500 `{"error": "internal error"}`: no input may
reach that path. Paths under /ui/ (the dashboard's pages and files, ui.py)
leave the pipeline after the Host and Origin checks; a request without a
bearer token may instead carry a dashboard session (sessions.py).

Slow clients: each connection has a socket timeout
(server.request_timeout_seconds) and at most server.max_connections are
served at once; a connection over the cap is answered 503 at once and closed
(the server itself: server.py).
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from provisioning.errors import ProvisioningError, http_status_of
from provisioning.model import valid_task_key
from provisioning.orchestrator import auth, sessions, ui
from provisioning.orchestrator.endpoints import ROUTES, Call, Response, Route
from provisioning.orchestrator.validate import (
    MAX_JSON_DEPTH,
    HttpError,
    reject_constant,
    too_deep,
)
from provisioning.versions import PLATFORM_VERSION

if TYPE_CHECKING:
    from provisioning.orchestrator.server import OrchestratorServer

log = logging.getLogger("provisioning.orchestrator.api")
SIGN_IN_CODE_RE = re.compile(r"code=[^&\s\"]*")  # one-time codes stay out of the log


def _send_all_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: with Nagle on, the body waits for the
    # client's delayed ACK (40 ms per request on keep-alive connections).
    disable_nagle_algorithm = True
    server: OrchestratorServer

    def version_string(self) -> str:
        return f"provisioning-orchestrator/{PLATFORM_VERSION}"

    def setup(self) -> None:
        self.timeout = self.server.config.server.request_timeout_seconds
        super().setup()

    # --- plumbing -------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        log.debug("%s %s", self.address_string(), SIGN_IN_CODE_RE.sub("code=<redacted>",
                                                                    format % args))

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
            log.exception("internal error on %s %s", self.command,
                          SIGN_IN_CODE_RE.sub("code=<redacted>", self.path[:200]))
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
        if split.path == "/ui" or split.path.startswith("/ui/"):
            return self._dashboard(split)
        route, params = self._route(split.path)
        query = self._query(split.query, route)
        if route.auth != "none":
            self._authenticate(route, params)
        if self.server.engine is None:
            raise HttpError(503, "starting up; retry shortly")
        return route.handler(Call(route, self.server, params, query, self._read_json))

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
                and valid_task_key(params.get("task_key"))
                and self.server.engine.check_task_token(params["task_key"], presented)):
            return
        if presented is None:  # a browser of the dashboard: cookie + CSRF token
            verdict = sessions.authorize_request(
                self.server.sessions, port=self.server.server_address[1], method=self.command,
                route_path=route.path, headers=self.headers)
            if verdict is not None and verdict.ok:
                return
            if verdict is not None:
                raise HttpError(verdict.status, verdict.reason)
        raise HttpError(401, "missing or invalid token: send 'Authorization: Bearer <token>' "
                        "(the token is in the data dir's 'token' file)",
                        {"WWW-Authenticate": 'Bearer realm="provisioning"'})

    def _dashboard(self, split: Any) -> Response:
        if not self.server.config.server.ui:
            raise HttpError(404, "the dashboard is off (server.ui = false)")
        page = ui.serve(ui.UiRequest(self.command, split.path, split.query, self.headers,
                                     self.server.server_address[1]), self.server.sessions)
        return Response(page.status, page.body, page.content_type, page.headers)

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
            data = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise HttpError(400, f"malformed JSON body: {str(e)[:200]}") from None
        if not isinstance(data, dict):
            raise HttpError(400, f"the body must be a JSON object, got {type(data).__name__}")
        if too_deep(data, MAX_JSON_DEPTH):
            raise HttpError(400, f"JSON body nested deeper than {MAX_JSON_DEPTH} levels")
        return data
