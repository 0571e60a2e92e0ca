"""HTTP client for the orchestrator API (DESIGN.md 5); finding or starting a daemon
(DESIGN.md 4) is autostart.py.

Stdlib only (urllib). Proxies from the environment are ignored: the API is on
loopback and a corporate HTTP_PROXY must never see the bearer token.

Errors become ProvisioningError subclasses so the CLI shows one line and the
right exit code:
  connection refused, reset or timed out  -> OrchestratorUnavailable (exit 3)
  401/403 (wrong token, Host refused)      -> OrchestratorUnavailable (exit 3)
  400/413/422 -> UsageError, 404 -> NotFound, 409 -> Conflict (exit 2)
  503 -> ServiceUnavailable, 507 -> StorageFull, other 5xx -> exit 1
  versions out of range on first contact  -> IncompatibleVersions (exit 4)
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioning.errors import (
    Conflict,
    NotFound,
    OrchestratorUnavailable,
    ProvisioningError,
    ServiceUnavailable,
    StorageFull,
    Unreachable,
    UsageError,
)
from provisioning.versions import CORE_VERSION, check_compatibility

if TYPE_CHECKING:
    from provisioning.config import Config

HEALTH_PROBE_TIMEOUT = 2.0  # a live daemon answers /health in milliseconds


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def read_token(token_file: Path) -> str:
    """The bearer token the daemon wrote at first start (0600, data dir)."""
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise OrchestratorUnavailable(
            f"cannot read the orchestrator token {token_file}: {e.strerror or e}",
            hint="the orchestrator creates it at first start; run the CLI as the user "
                 "owning the data dir, with the same storage.data_dir as the daemon",
        ) from None
    if not token:
        raise OrchestratorUnavailable(f"the orchestrator token file {token_file} is empty",
                                      hint="restart the orchestrator to recreate it")
    return token


class Client:
    """One orchestrator endpoint. Methods mirror the REST API of DESIGN.md 5."""

    def __init__(self, endpoint: str, token: str | None = None, timeout: float = 60, *,
                 token_file: Path | None = None, check_versions: bool = True):
        self.endpoint = endpoint.rstrip("/")
        self.timeout = float(timeout)
        self._token = token
        self._token_file = token_file
        self._check_versions = check_versions
        self._checked = False
        self.last_health: dict[str, Any] | None = None

    # -- plumbing -----------------------------------------------------------

    @property
    def token(self) -> str:
        if self._token is None:
            if self._token_file is None:
                raise OrchestratorUnavailable("no orchestrator token configured")
            self._token = read_token(self._token_file)
        return self._token

    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = True,
                 timeout: float | None = None, raw: bool = False,
                 _retried: bool = False) -> Any:
        if auth and self._check_versions and not self._checked:
            self.check_versions()
        url = self.endpoint + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with _opener.open(req, timeout=timeout or self.timeout) as resp:
                payload = resp.read()
                content_type = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            if e.code == 401 and auth and self._token_file is not None and not _retried:
                # a restarted daemon may have written a new token: read it again once
                self._token = None
                return self._request(method, path, body, auth=auth, timeout=timeout,
                                     raw=raw, _retried=True)
            raise self._http_error(e) from None
        except urllib.error.URLError as e:
            raise self._unreachable(e.reason) from None
        except (OSError, http.client.HTTPException) as e:  # reset, timeout, disconnect
            raise self._unreachable(e) from None
        if raw:
            return payload, content_type
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise ProvisioningError(
                f"orchestrator at {self.endpoint} sent a non-JSON answer to {method} {path}"
            ) from None

    def _unreachable(self, reason: object) -> Unreachable:
        refused = isinstance(reason, ConnectionRefusedError) or (
            isinstance(reason, OSError) and getattr(reason, "errno", None) in (111, 61))
        if isinstance(reason, (socket.timeout, TimeoutError)):
            what = "timed out"
        else:
            what = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return Unreachable(f"orchestrator not reachable at {self.endpoint}: {what}",
                           delivered=not refused)

    def _http_error(self, e: urllib.error.HTTPError) -> ProvisioningError:
        try:
            body = e.read()
            message = json.loads(body).get("error") or body.decode(errors="replace")
        except (ValueError, AttributeError, OSError):
            message = e.reason or ""
        message = str(message).strip() or f"HTTP {e.code}"
        where = f"orchestrator at {self.endpoint}"
        if e.code in (401, 403):
            return OrchestratorUnavailable(
                f"{where} refused the request: {message}",
                hint="is it running with a different data dir (token)? "
                     "check `provisioning env` and `provisioning orchestrator status`")
        if e.code == 404:
            return NotFound(message)
        if e.code == 409:
            return Conflict(message)
        if e.code == 503:
            return ServiceUnavailable(f"{where} is not taking work: {message}",
                                      hint="it is shutting down; retry once it is back")
        if e.code == 507:
            return StorageFull(f"{where}: {message}")
        if 400 <= e.code < 500:
            return UsageError(message)
        return ProvisioningError(f"{where} failed: {message} (HTTP {e.code})")

    @staticmethod
    def _q(value: str) -> str:
        return urllib.parse.quote(str(value), safe="")

    # -- versions -----------------------------------------------------------

    def check_versions(self, health: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check the daemon's platform version against our core (first contact)."""
        if health is None:
            health = self.health()
        platform = health.get("platform_version")
        if not isinstance(platform, str):
            raise ProvisioningError(f"orchestrator at {self.endpoint} did not report "
                                    "its platform_version on /health")
        check_compatibility(core=CORE_VERSION, platform=platform).raise_if_incompatible()
        self._checked = True
        return health

    # -- API ----------------------------------------------------------------

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        result = self._request("GET", "/health", auth=False, timeout=timeout)
        if not isinstance(result, dict):
            raise ProvisioningError(f"orchestrator at {self.endpoint}: bad /health answer")
        self.last_health = result
        return result

    def submit_workflow(self, definition: dict[str, Any]) -> dict[str, Any]:
        """POST /workflows with a WorkflowSpec.to_dict() -> {"workflow_id","status"}."""
        return self._request("POST", "/workflows", definition)

    def submit_operation(self, route: str, infra: str, params: dict[str, Any]) -> dict[str, Any]:
        """POST /workflows/<route> (e.g. "servers/create") with {"infra","params"}."""
        return self._request("POST", "/workflows/" + route.strip("/"),
                             {"infra": infra, "params": params})

    def list_workflows(self, status: str | None = None) -> list[dict[str, Any]]:
        path = "/workflows" + (f"?status={self._q(status)}" if status else "")
        result = self._request("GET", path)
        if isinstance(result, dict):
            result = result.get("workflows", [])
        return list(result or [])

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        return self._request("GET", f"/workflows/{self._q(workflow_id)}")

    def cancel(self, workflow_id: str) -> dict[str, Any]:
        return self._request("POST", f"/workflows/{self._q(workflow_id)}/cancel", {})

    def retry(self, workflow_id: str) -> dict[str, Any]:
        return self._request("POST", f"/workflows/{self._q(workflow_id)}/retry", {})

    def events(self, workflow_id: str, after: int = 0, timeout: float = 0) -> list[dict]:
        """Long-poll: events with seq > after, waiting up to `timeout` s for one."""
        path = (f"/workflows/{self._q(workflow_id)}/events?after={int(after)}"
                f"&timeout={timeout:g}")
        # the socket must outlive the server-side wait
        result = self._request("GET", path, timeout=self.timeout + timeout)
        if isinstance(result, dict):
            result = result.get("events", [])
        return list(result or [])

    def get_task(self, key: str) -> dict[str, Any]:
        return self._request("GET", f"/tasks/{self._q(key)}")

    def task_log(self, key: str, offset: int = 0) -> tuple[str, int]:
        """Captured output of a task from byte `offset` -> (text, next offset)."""
        payload, content_type = self._request(
            "GET", f"/tasks/{self._q(key)}/log?offset={int(offset)}", raw=True)
        if "json" in content_type:
            doc = json.loads(payload or b"{}")
            text = doc.get("log", doc.get("text", doc.get("data", "")))
            nxt = doc.get("next_offset", doc.get("offset", offset + len(text.encode())))
            return text, int(nxt)
        return payload.decode("utf-8", errors="replace"), offset + len(payload)

    def report_progress(self, key: str, progress: int, status: str | None = None,
                        message: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"progress": progress}
        if status is not None:
            body["status"] = status
        if message is not None:
            body["message"] = message
        return self._request("POST", f"/tasks/{self._q(key)}/progress", body)

    def sign_in_code(self) -> dict[str, Any]:
        """A one-time dashboard sign-in code: {"code", "expires_in", "path"}."""
        return self._request("POST", "/auth/codes", {})

    def openapi(self) -> dict[str, Any]:
        return self._request("GET", "/openapi.json", auth=False)


# -- one endpoint's client, and /health without exceptions ----------------------


def client_for(config: Config, endpoint: str | None = None) -> Client:
    """A Client for `endpoint` (default orchestrator.endpoint) using the data dir's token."""
    return Client(endpoint or config.orchestrator.endpoint,
                  timeout=config.orchestrator.timeout_seconds,
                  token_file=config.data_paths().token_file)


def probe(client: Client | str, timeout: float = HEALTH_PROBE_TIMEOUT) -> dict[str, Any] | None:
    """/health if a daemon answers at `client` (a Client or an endpoint URL), else
    None (no exception). The one /health probe: the CLI's auto-start, `orchestrator
    status`, and the daemon's own --daemon/--status checks all ask through it."""
    if isinstance(client, str):
        client = Client(client, check_versions=False)
    try:
        return client.health(timeout=timeout)
    except OrchestratorUnavailable:
        return None
    except ProvisioningError:
        return None  # something answers, but not our API
