"""A stateful fake of the UpCloud API 1.3 on 127.0.0.1: a MOCK OF A CLOUD API.

Why a mock: tests must not reach api.upcloud.com (no network, no account, real
money), and the behaviour that matters (a server answered 202 `maintenance`
and `started` a while later; a stop answered while the server still runs;
SERVER_STATE_ILLEGAL while a stop lands; 401; 429) has to be produced on
demand. Only the cloud is faked: the provider talks real HTTP to it from
real task processes of the real daemon.

Modelled on the API's documented and recorded answers (developers.upcloud.com
1.3 chapter 8, upcloud-python-api's test/json_data, PITFALLS.md):
- errors are `{"error": {"error_code", "error_message"}}` with the HTTP status;
- GET /1.3/server[?label=k=v ...] -> 200 {"servers": {"server": [...]}} (labels ANDed);
- POST /1.3/server -> 202 {"server": {... "state": "maintenance"}}; the server
  turns `started` after `polls_to_start` GETs of it (or stays in maintenance
  while `hold` is set);
- POST /1.3/server/{uuid}/start -> 200 once started (a slow, blocking call);
- POST /1.3/server/{uuid}/stop -> 202 while still `started`; `stopped` after
  `polls_to_stop` GETs; stop of a server in maintenance -> 409 SERVER_STATE_ILLEGAL;
- DELETE /1.3/server/{uuid}?storages=1 -> 204; not stopped (or within
  `illegal_deletes` calls after a stop) -> 409 SERVER_STATE_ILLEGAL; unknown -> 404
  SERVER_NOT_FOUND;
- GET /1.3/storage/template -> the public templates;
- bad credentials -> 401 AUTHENTICATION_FAILED; `throttle` > 0 -> that many 429s;
  `redirect` -> a 302 elsewhere (the client must not follow it with its credentials);
- unknown zone -> 404 ZONE_NOT_FOUND; unknown plan -> 400 PLAN_INVALID (the
  recorded error lists name no plan code: this one is our assumption);
  unknown storage -> 404 STORAGE_NOT_FOUND.

Test-only knob `public_addresses`: a queue of IPv4 addresses handed out, in
order, as the public address of the next servers created (else 203.0.113.x,
an address nothing answers at). The mock's server is then backed by a REAL
machine: tests put there the address of a namespaced sshd test host
(tests/hosts.py), so what goes on the server afterwards (taskservs over
SSH) is real; only the cloud API in front of it is faked.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid as uuidlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TEMPLATES = {"Ubuntu Server 24.04 LTS (Noble Numbat)": "01000000-0000-4000-8000-000030240200",
             "Debian GNU/Linux 12 (Bookworm)": "01000000-0000-4000-8000-000020070100"}
PLANS = ("1xCPU-1GB", "1xCPU-2GB", "2xCPU-4GB")
ZONES = ("fi-hel1", "de-fra1", "nl-ams1")


class FakeUpCloud:
    def __init__(self, *, username: str = "user", password: str = "secret",
                 token: str | None = None):
        self.username, self.password, self.token = username, password, token
        self.servers: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (method, path+query): never a header
        self.counts: dict[str, int] = {}
        self.polls_to_start = 2
        self.polls_to_stop = 1
        self.hold = False  # keep new servers in maintenance
        self.throttle = 0  # answer this many next requests with 429
        self.illegal_deletes = 0  # answer this many deletes after a stop with 409
        self.redirect = ""  # answer every request with a 302 to this URL
        self.public_addresses: list[str] = []  # next servers' public IPv4 (a real test host)
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # -- life ------------------------------------------------------------------
    def start(self) -> FakeUpCloud:
        fake = self

        class Handler(_Handler):
            api = fake

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def count(self, what: str) -> int:
        with self.lock:
            return self.counts.get(what, 0)

    def by_hostname(self) -> dict[str, list[dict[str, Any]]]:
        with self.lock:
            out: dict[str, list[dict[str, Any]]] = {}
            for s in self.servers.values():
                out.setdefault(s["hostname"], []).append(dict(s))
            return out

    # -- the API (called under self.lock) ----------------------------------------
    def authorized(self, header: str) -> bool:
        if self.token and header == f"Bearer {self.token}":
            return True
        basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return header == f"Basic {basic}"

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any
               ) -> tuple[int, Any]:
        parts = path.strip("/").split("/")  # ["1.3", "server", uuid, "stop"]
        if parts[:1] != ["1.3"]:
            return _error(404, "NOT_FOUND", "Unknown API version.")
        route = parts[1:]
        if route == ["server"] and method == "GET":
            return 200, {"servers": {"server": [_summary(s) for s in self._filter(query)]}}
        if route == ["server"] and method == "POST":
            return self._create(body)
        if route == ["storage", "template"] and method == "GET":
            return 200, {"storages": {"storage": [
                {"uuid": u, "title": t, "type": "template", "access": "public"}
                for t, u in TEMPLATES.items()]}}
        if len(route) >= 2 and route[0] == "server":
            server = self.servers.get(route[1])
            if server is None:
                return _error(404, "SERVER_NOT_FOUND", f"The server {route[1]} does not exist.")
            if len(route) == 2 and method == "GET":
                return 200, {"server": self._poll(server)}
            if route[2:] == ["stop"] and method == "POST":
                return self._stop(server)
            if route[2:] == ["start"] and method == "POST":
                return self._start(server)
            if len(route) == 2 and method == "DELETE":
                return self._delete(server, query)
        return _error(405, "METHOD_NOT_ALLOWED", "Method not allowed.")

    def _filter(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        wanted = [lbl.partition("=") for lbl in query.get("label", [])]
        out = []
        for s in self.servers.values():
            labels = {i["key"]: i["value"] for i in s["labels"]["label"]}
            if all(k in labels and (not sep or labels[k] == v) for k, sep, v in wanted):
                out.append(s)
        return out

    def _create(self, body: Any) -> tuple[int, Any]:
        s = (body or {}).get("server") or {}
        if s.get("zone") not in ZONES:
            return _error(404, "ZONE_NOT_FOUND", f"The zone {s.get('zone')} does not exist.")
        if s.get("plan") not in PLANS:
            return _error(400, "PLAN_INVALID", f"The plan {s.get('plan')} is invalid.")
        devices = (s.get("storage_devices") or {}).get("storage_device") or []
        if not devices or devices[0].get("storage") not in TEMPLATES.values():
            return _error(404, "STORAGE_NOT_FOUND", "The storage does not exist.")
        uuid = "00" + str(uuidlib.uuid4())[2:]
        n = len(self.servers) + len(self.deleted) + 1
        public = self.public_addresses.pop(0) if self.public_addresses \
            else f"203.0.113.{n % 250 + 1}"
        server = {
            "uuid": uuid, "hostname": s.get("hostname"), "title": s.get("title"),
            "zone": s["zone"], "plan": s["plan"], "state": "maintenance",
            "labels": {"label": list((s.get("labels") or {}).get("label") or [])},
            "ip_addresses": {"ip_address": [
                {"access": "utility", "address": f"10.3.{n // 250}.{n % 250 + 1}",
                 "family": "IPv4"},
                {"access": "public", "address": public, "family": "IPv4"}]},
            "storage_devices": {"storage_device": [
                {"storage": str(uuidlib.uuid4()), "storage_size": devices[0].get("size", 25),
                 "storage_title": devices[0].get("title"), "type": "disk"}]},
            "_polls": 0, "_illegal": 0,
        }
        self.servers[uuid] = server
        return 202, {"server": _public(server)}

    def _poll(self, server: dict[str, Any]) -> dict[str, Any]:
        server["_polls"] += 1
        if server["state"] == "maintenance" and not self.hold:
            if server["_polls"] >= self.polls_to_start:
                server["state"] = "started"
        elif server["state"] == "stopping" and server["_polls"] >= self.polls_to_stop:
            server["state"] = "stopped"
        return _public(server)

    def _stop(self, server: dict[str, Any]) -> tuple[int, Any]:
        if server["state"] != "started":
            return _error(409, "SERVER_STATE_ILLEGAL", "The server is not started.")
        server["state"], server["_polls"] = "stopping", 0
        server["_illegal"] = self.illegal_deletes
        return 202, {"server": _public(server)}

    def _start(self, server: dict[str, Any]) -> tuple[int, Any]:
        if server["state"] != "stopped":
            return _error(409, "SERVER_STATE_ILLEGAL", "The server is not stopped.")
        server["state"] = "started"  # the real start answers once the server runs
        return 200, {"server": _public(server)}

    def _delete(self, server: dict[str, Any], query: dict[str, list[str]]) -> tuple[int, Any]:
        if server["state"] != "stopped" or server["_illegal"] > 0:
            server["_illegal"] = max(0, server["_illegal"] - 1)
            self.counts["illegal"] = self.counts.get("illegal", 0) + 1
            return _error(409, "SERVER_STATE_ILLEGAL", "The server is not stopped.")
        if query.get("storages") != ["1"]:
            return _error(400, "STORAGES_INVALID", "This fake expects storages=1.")
        del self.servers[server["uuid"]]
        self.deleted.append(server["uuid"])
        return 204, None


def _public(server: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in server.items() if not k.startswith("_")}
    if out["state"] == "stopping":
        out["state"] = "started"  # a stop answers while the server still runs
    return json.loads(json.dumps(out))


def _summary(server: dict[str, Any]) -> dict[str, Any]:
    out = _public(server)
    out.pop("ip_addresses")
    out.pop("storage_devices")
    return out


def _error(status: int, code: str, message: str) -> tuple[int, Any]:
    return status, {"error": {"error_code": code, "error_message": message}}


class _Handler(BaseHTTPRequestHandler):
    api: FakeUpCloud
    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        api = self.api
        location = ""
        with api.lock:
            api.requests.append((self.command, self.path))
            key = f"{self.command} {parts.path.rstrip('/').split('/', 3)[-1]}"
            api.counts[key] = api.counts.get(key, 0) + 1
            if api.redirect:
                location = api.redirect
                status, doc = 302, None
            elif not api.authorized(self.headers.get("Authorization", "")):
                status, doc = _error(401, "AUTHENTICATION_FAILED",
                                     "Authentication failed using the given username and "
                                     "password.")
            elif api.throttle > 0:
                api.throttle -= 1
                api.counts["429"] = api.counts.get("429", 0) + 1
                status, doc = _error(429, "TOO_MANY_REQUESTS", "Too many requests.")
            else:
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                status, doc = api.handle(self.command, parts.path, parse_qs(parts.query), body)
            if self.command == "POST" and parts.path.rstrip("/").endswith("/server"):
                api.counts["create"] = api.counts.get("create", 0) + (status == 202)
        payload = json.dumps(doc).encode() if doc is not None else b""
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        if payload:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _serve
