"""A small client of the UpCloud API 1.3 over plain HTTPS (stdlib urllib).

Only what the `upcloud` provider needs: list servers by label, get one,
create, stop, delete with its storages, list public templates. Credentials
come from the environment only (UPCLOUD_TOKEN as a Bearer token, else
UPCLOUD_USERNAME/UPCLOUD_PASSWORD as Basic auth) and live only in the
Authorization header of each request: never in a message, a log line or a
record. Errors become UpCloudError (a ProvisioningError) with the API's own
error code, the HTTP status and a plain reason. HTTP 429 is retried here
with capped, jittered backoff, bounded in attempts and time.

Why not the `upcloud-api` SDK: it brings `requests` (+ urllib3, idna,
certifi, charset-normalizer) for six calls, and its error middleware drops
the HTTP status, so a 429 cannot be told from any other error without
parsing its text (README Decisions).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from provisioning.errors import ProvisioningError

DEFAULT_ENDPOINT = "https://api.upcloud.com"
API_VERSION = "1.3"
CREDENTIAL_VARS = ("UPCLOUD_TOKEN", "UPCLOUD_USERNAME", "UPCLOUD_PASSWORD")
USER_AGENT = "provisioning-upcloud/1"
REQUEST_TIMEOUT_S = 60.0
RETRY_BASE_S = 0.5
RETRY_CAP_S = 20.0
RETRY_ATTEMPTS = 8  # a 429 more than this many times in a row is a task failure

# Plain reasons by UpCloud error code (or a code's tail), for the failure message.
REASONS = {
    "AUTHENTICATION_FAILED": "UpCloud refused the credentials",
    "INSUFFICIENT_CREDITS": "the account has not enough credits",
    "ZONE_NOT_FOUND": "unknown zone", "ZONE_INVALID": "unknown zone",
    "PLAN_INVALID": "unknown plan", "PLAN_NOT_FOUND": "unknown plan",
    "STORAGE_NOT_FOUND": "unknown template or storage",
    "SERVER_NOT_FOUND": "no such server",
    "SERVER_STATE_ILLEGAL": "the server is not in a state that allows this",
    "SERVER_FORBIDDEN": "the account may not use this server",
    "TRIAL_PLAN": "the plan is not available to a trial account",
}
REASON_TAILS = {"_LIMIT_REACHED": "account quota reached",
                "_RESOURCES_UNAVAILABLE": "no capacity in the zone right now",
                "_INVALID": "the cloud refused a value of the request"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would resend the Authorization header to wherever a 3xx points:
    a redirect is an error here, never followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class UpCloudError(ProvisioningError):
    """A failed UpCloud API call: its error code, HTTP status and a plain reason."""

    def __init__(self, message: str, *, code: str = "", status: int = 0):
        super().__init__(message)
        self.code = code
        self.status = status


def plain_reason(code: str, status: int) -> str:
    if code in REASONS:
        return REASONS[code]
    for tail, reason in REASON_TAILS.items():
        if code.endswith(tail):
            return reason
    if 300 <= status < 400:
        return "redirected elsewhere; not followed, the credentials go only to endpoint_url"
    if status == 401:
        return REASONS["AUTHENTICATION_FAILED"]
    if status == 403:
        return "forbidden for this account"
    if status == 404:
        return "not found"
    return "the request failed" if status < 500 else "UpCloud had an internal error"


def credentials_from_env(environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(Authorization header value, where it came from). UPCLOUD_TOKEN wins."""
    env = os.environ if environ is None else environ
    token = env.get("UPCLOUD_TOKEN", "")
    if token:
        return f"Bearer {token}", "UPCLOUD_TOKEN"
    user, password = env.get("UPCLOUD_USERNAME", ""), env.get("UPCLOUD_PASSWORD", "")
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return f"Basic {basic}", "UPCLOUD_USERNAME/UPCLOUD_PASSWORD"
    missing = "UPCLOUD_PASSWORD is" if user else ("UPCLOUD_USERNAME is" if password else
                                                   "none of them is")
    raise ProvisioningError(
        f"no UpCloud credentials: looked for UPCLOUD_TOKEN, or UPCLOUD_USERNAME and "
        f"UPCLOUD_PASSWORD, in the task's environment ({missing} set)",
        hint="export them where the daemon starts (or for `--direct`, in your shell); "
             "they never go in the infra file")


def check_endpoint(url: str) -> str | None:
    """A problem with endpoint_url, or None: https, or http only to a loopback host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"endpoint_url must be an http(s) URL, got {url!r}"
    if parts.scheme == "http":
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return (f"endpoint_url {url!r}: credentials go only over https "
                    "(plain http only to 127.0.0.0/8 or localhost)")
    return None


class UpCloudAPI:
    def __init__(self, endpoint: str = "", *, auth: str, auth_source: str = "",
                 log: Any = print, sleep: Any = time.sleep):
        base = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        base = base[:-len("/" + API_VERSION)] if base.endswith("/" + API_VERSION) else base
        self.root = base + "/" + API_VERSION
        self._auth = auth
        self.auth_source = auth_source
        self._log = log
        self._sleep = sleep

    # -- one request, 429 retried ---------------------------------------------
    def request(self, method: str, path: str, body: Any = None,
                query: list[tuple[str, str]] | None = None, *, what: str = "") -> Any:
        url = self.root + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + RETRY_CAP_S * RETRY_ATTEMPTS
        for attempt in range(RETRY_ATTEMPTS + 1):
            status, payload, retry_after = self._send(method, url, data)
            if status != 429:
                return self._answer(status, payload, what or f"{method} {path}")
            delay = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** attempt) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = min(RETRY_CAP_S, max(delay, retry_after))
            if attempt == RETRY_ATTEMPTS or time.monotonic() + delay > deadline:
                break
            self._log(f"UpCloud rate limit (HTTP 429) on {what or method + ' ' + path}; "
                      f"retry {attempt + 1}/{RETRY_ATTEMPTS} in {delay:.1f}s")
            self._sleep(delay)
        raise UpCloudError(f"UpCloud {what or method + ' ' + path} failed: still rate limited "
                           f"(HTTP 429) after {RETRY_ATTEMPTS} retries", code="TOO_MANY_REQUESTS",
                           status=429)

    def _send(self, method: str, url: str, data: bytes | None
              ) -> tuple[int, bytes, float | None]:
        headers = {"Authorization": self._auth, "Accept": "application/json",
                   "User-Agent": USER_AGENT}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(req, timeout=REQUEST_TIMEOUT_S) as resp:
                return resp.status, resp.read(), None
        except urllib.error.HTTPError as e:
            retry_after = e.headers.get("Retry-After") if e.headers else None
            try:
                after = float(retry_after) if retry_after else None
            except ValueError:
                after = None
            return e.code, e.read(), after
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UpCloudError(f"cannot reach the UpCloud API at {self.root}: {reason}",
                               code="UNREACHABLE") from None

    def _answer(self, status: int, payload: bytes, what: str) -> Any:
        try:
            doc = json.loads(payload) if payload.strip() else {}
        except ValueError:
            doc = {}
        if 200 <= status < 300:
            return doc
        code, detail = "", ""
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            code = str(doc["error"].get("error_code", ""))
            detail = str(doc["error"].get("error_message", ""))
        elif isinstance(doc, dict) and doc.get("type"):  # RFC 7807 problem (newer endpoints)
            code = str(doc["type"]).rpartition("#")[2].replace("ERROR_", "")
            detail = str(doc.get("title", ""))
        code = code or f"HTTP_{status}"
        message = f"UpCloud {what} failed: {code} (HTTP {status}): {plain_reason(code, status)}"
        if detail:
            message += f" ({detail})"
        if status == 401 and self.auth_source:
            message += f"; credentials from {self.auth_source}"
        raise UpCloudError(message, code=code, status=status)

    # -- the calls the provider makes ---------------------------------------------
    def list_servers(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Servers carrying every label (filtered by the API, and here again)."""
        query = [("label", f"{k}={v}") for k, v in labels.items()]
        doc = self.request("GET", "/server", query=query, what="list servers")
        servers = (doc.get("servers") or {}).get("server") or []
        return [s for s in servers if all(label_map(s).get(k) == v for k, v in labels.items())]

    def get_server(self, uuid: str) -> dict[str, Any] | None:
        """The server's details, or None when UpCloud has no such server."""
        try:
            return self.request("GET", f"/server/{uuid}", what=f"get server {uuid}")["server"]
        except UpCloudError as e:
            if e.status == 404:
                return None
            raise

    def create_server(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/server", {"server": body}, what="create server")["server"]

    def start_server(self, uuid: str) -> None:
        self.request("POST", f"/server/{uuid}/start", what=f"start server {uuid}")

    def stop_server(self, uuid: str, timeout_s: int = 60) -> None:
        self.request("POST", f"/server/{uuid}/stop",
                     {"stop_server": {"stop_type": "soft", "timeout": str(timeout_s)}},
                     what=f"stop server {uuid}")

    def delete_server(self, uuid: str) -> None:
        """Delete the server and its storages (`storages=1`)."""
        self.request("DELETE", f"/server/{uuid}", query=[("storages", "1")],
                     what=f"delete server {uuid}")

    def templates(self) -> list[dict[str, Any]]:
        doc = self.request("GET", "/storage/template", what="list templates")
        return (doc.get("storages") or {}).get("storage") or []


def label_map(server: dict[str, Any]) -> dict[str, str]:
    """{key: value} of a server's labels ({"labels": {"label": [{key, value}]}})."""
    items = (server.get("labels") or {}).get("label") or []
    return {str(i.get("key")): str(i.get("value", "")) for i in items if isinstance(i, dict)}


def public_ipv4(server: dict[str, Any]) -> str | None:
    items = (server.get("ip_addresses") or {}).get("ip_address") or []
    for want in ("public", "utility", "private"):
        for a in items:
            if a.get("access") == want and a.get("family", "IPv4") == "IPv4":
                return a.get("address")
    return None
