"""The HTTP API of the real daemon: auth, Host/Origin, limits, bad input, every route.

One daemon serves the whole module (started with --daemon on a free port);
its log is checked for tracebacks at the end: no input may reach the 500 path.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from provisioning.orchestrator.endpoints import ROUTES
from tests.conftest import wait_for
from tests.daemon_fixture import start_daemon

MAX_BODY = 65536


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    env: dict[str, str | None] = {k: None for k in os.environ
                                  if k.startswith("PROVISIONING_") or k == "NOTIFY_SOCKET"}
    env.update({"PROVISIONING_SHARE_DIR": str(base / "share"),
                "PROVISIONING_ETC_DIR": str(base / "etc"),
                "PROVISIONING_USER_CONFIG_DIR": str(base / "userconfig")})
    d = start_daemon(base, env=env, storage={"data_dir": str(base / "data")},
                     server={"max_body_bytes": MAX_BODY, "request_timeout_seconds": 2,
                             "allowed_hosts": ["orchestrator.internal"]},
                     executor={"shutdown_grace_seconds": 2, "kill_grace_seconds": 1})
    yield d
    d.stop()
    log = (d.data_dir / "orchestrator.log").read_text()
    assert "Traceback" not in log and "internal error" not in log


def raw_http(port: int, data: bytes, timeout: float = 10) -> tuple[int | None, dict, bytes]:
    """Send raw bytes; return (status, headers, body) of the first response (None: closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return None, {}, buf
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body


def request_bytes(d, method: str, path: str, body: bytes = b"", headers: dict | None = None,
                  token: bool = True) -> bytes:
    hdrs = {"Host": f"127.0.0.1:{d.port}", "Connection": "close"}
    if token:
        hdrs["Authorization"] = f"Bearer {d.token}"
    if body:
        hdrs["Content-Type"] = "application/json"
        hdrs["Content-Length"] = str(len(body))
    hdrs.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return head.encode() + b"\r\n" + body


def assert_json_error(status: int, body, expected: int | tuple[int, ...]) -> None:
    expected = (expected,) if isinstance(expected, int) else expected
    assert status in expected, (status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
    assert "Traceback" not in body["error"]


def concrete(path: str) -> str:
    return (path.replace("{workflow_id}", "00000000-0000-0000-0000-000000000000")
                .replace("{task_key}", "00000000-0000-0000-0000-000000000000.t"))


def submit(d, spec: dict) -> str:
    status, body = d.request("POST", "/workflows", spec)
    assert status == 202 and body["status"] == "queued", body
    return body["workflow_id"]


# --------------------------------------------------------------- auth, Host, Origin


def test_health_needs_no_token_and_describes_the_daemon(daemon):
    status, body = daemon.request("GET", "/health", token=None)
    assert status == 200
    assert body["status"] == "healthy" and body["instance_id"] == daemon.instance_id
    assert body["api_version"] == "v1" and body["port"] == daemon.port
    compact = json.dumps(body, separators=(",", ":"))
    assert daemon.last_headers["Content-Length"] == str(len(compact))


@pytest.mark.parametrize("route", [r for r in ROUTES if r.auth != "none"],
                         ids=lambda r: f"{r.method} {r.path}")
@pytest.mark.parametrize("token", [None, "wrong-token", "Basic"])
def test_every_other_route_needs_the_token(daemon, route, token):
    headers = {"Authorization": f"Basic {daemon.token}"} if token == "Basic" else None
    status, body = daemon.request(route.method, concrete(route.path),
                                  token=None if token == "Basic" else token, headers=headers)
    assert_json_error(status, body, 401)
    assert daemon.last_headers.get("WWW-Authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("host,expected", [
    ("localhost:{port}", 200), ("[::1]:{port}", 200), ("orchestrator.internal:{port}", 200),
    ("evil.example:{port}", 421), ("127.0.0.1:{port}.evil.example", 421),
    ("127.0.0.1", 421), ("127.0.0.1:1", 421), ("", 421),
])
def test_only_exact_host_values_are_served(daemon, host, expected):
    status, body = daemon.request("GET", "/workflows",
                                  headers={"Host": host.format(port=daemon.port)})
    if expected == 200:
        assert status == 200 and "workflows" in body
    else:
        assert_json_error(status, body, expected)


@pytest.mark.parametrize("origin,expected", [
    ("http://127.0.0.1:{port}", 200), ("http://localhost:{port}", 200),
    ("http://evil.example", 403), ("null", 403), ("https://127.0.0.1:{port}", 403),
    ("http://127.0.0.1:{port}.evil.example", 403),
])
def test_cross_origin_requests_are_refused(daemon, origin, expected):
    # a text/plain cross-site form post is refused before its body is even looked at
    status, body = daemon.request(
        "POST", "/workflows", raw=b'{"tasks":[{"id":"a","op":"noop"}]}',
        headers={"Origin": origin.format(port=daemon.port), "Content-Type": "text/plain"})
    assert_json_error(status, body, 415 if expected == 200 else expected)


# --------------------------------------------------------------- bodies


GOOD = {"workflow": {"name": "ok"}, "tasks": [{"id": "a", "op": "noop"}]}


@pytest.mark.parametrize("path,raw,headers,expected", [
    ("/workflows", b"{", None, 400),
    ("/workflows", b'{"tasks": [', None, 400),
    ("/workflows", b"[]", None, 400),
    ("/workflows", b'"just a string"', None, 400),
    ("/workflows", b"\xff\xfe{}", None, 400),
    ("/workflows", b'{"tasks": NaN}', None, 400),
    ("/workflows", b"[" * 50000 + b"]" * 50000, None, (400, 413)),
    ("/workflows", b'{"tasks": [{"id": "a", "op": "noop", "params": ' + b'{"a": ' * 900 + b"1"
     + b"}" * 900 + b"}]}", None, 400),
    ("/workflows", b'{"tasks": [{"id": "a", "op": "noop"}], "extra": 1}', None, 400),
    ("/workflows", b'{"tasks": [{"id": "a", "op": "no-such-op"}]}', None, 400),
    ("/workflows", b'{"tasks": [{"id": "a", "op": "noop", "depends_on": ["a"]}]}', None, 400),
    ("/workflows", b'{"tasks": [{"id": "../x", "op": "noop"}]}', None, 400),
    ("/workflows", b'{"tasks": "noop"}', None, 400),
    ("/workflows", b"", None, 400),
    ("/workflows", json.dumps(GOOD).encode(), {"Content-Type": "text/plain"}, 415),
    ("/workflows", json.dumps(GOOD).encode(),
     {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ("/workflows", json.dumps(GOOD).encode(), {"Content-Length": "abc"}, 400),
    ("/workflows", json.dumps(GOOD).encode(), {"Content-Length": "-5"}, 400),
    ("/workflows", b"x" * (MAX_BODY + 1), None, 413),
    ("/workflows/servers/create", b'{"infra": 5}', None, 400),
    ("/workflows/servers/create", b'{"infra": ""}', None, 400),
    ("/workflows/servers/create", b'{"infra": "a", "params": []}', None, 400),
    ("/workflows/servers/create", b'{"infra": "a", "bogus": 1}', None, 400),
    ("/workflows/servers/create", b'{"infra": "no-such-infra-here"}', None, (400, 404)),
    ("/workflows/cluster/create", b'{"infra": "../../etc"}', None, (400, 404)),
    ("/workflows/00000000-0000-0000-0000-000000000000/cancel", b'{"force": true}', None, 400),
    ("/tasks/00000000-0000-0000-0000-000000000000.t/progress", b'{"progress": 101}', None, 400),
    ("/tasks/00000000-0000-0000-0000-000000000000.t/progress", b'{"progress": true}', None,
     400),
    ("/tasks/00000000-0000-0000-0000-000000000000.t/progress", b'{"progress": "5"}', None, 400),
    ("/tasks/00000000-0000-0000-0000-000000000000.t/progress",
     b'{"progress": 5, "message": 7}', None, 400),
    ("/tasks/00000000-0000-0000-0000-000000000000.t/progress", b'{"progress": 5, "x": 1}',
     None, 400),
    ("/tasks/00000000-0000-0000-0000-000000000000.t/progress", b'{"progress": 5}', None, 404),
])
def test_bad_bodies_get_the_right_4xx(daemon, path, raw, headers, expected):
    status, body = daemon.request("POST", path, raw=raw,
                                  headers={"Content-Type": "application/json", **(headers or {})})
    assert_json_error(status, body, expected)


def test_oversized_body_is_refused_before_it_is_sent(daemon):
    data = request_bytes(daemon, "POST", "/workflows", headers={
        "Content-Length": str(10 * MAX_BODY), "Content-Type": "application/json",
        "Expect": "100-continue"})
    status, _, body = raw_http(daemon.port, data)
    assert status == 413 and "error" in json.loads(body)


def test_chunked_bodies_are_refused(daemon):
    data = request_bytes(daemon, "POST", "/workflows", headers={
        "Transfer-Encoding": "chunked", "Content-Type": "application/json"})
    data += b"2\r\n{}\r\n0\r\n\r\n"
    status, _, body = raw_http(daemon.port, data)
    assert status == 411 and "error" in json.loads(body)


@pytest.mark.parametrize("method,path,expected", [
    ("GET", "/workflows/..%2F..%2Ftoken", 400),
    ("GET", "/workflows/%2e%2e", 400),
    ("GET", "/workflows/" + "a" * 300, 400),
    ("GET", "/workflows/a%00b", 400),
    ("GET", "/workflows/%ff%fe", 400),
    ("GET", "/workflows/00000000-0000-0000-0000-000000000000", 404),
    ("GET", "/tasks/no-dot-here", 400),
    ("GET", "/tasks/a.b.c", 400),
    ("GET", "/tasks/..%2Ftoken", 400),
    ("GET", "/tasks/00000000-0000-0000-0000-000000000000.t", 404),
    ("GET", "/tasks/00000000-0000-0000-0000-000000000000.t/log", 404),
    ("GET", "/tasks/../token", 404),
    ("GET", "/workflows?status=bogus", 400),
    ("GET", "/workflows?nope=1", 400),
    ("GET", "/workflows?status=queued&status=failed", 400),
    ("GET", "/workflows/00000000-0000-0000-0000-000000000000/events?after=-1", 400),
    ("GET", "/workflows/00000000-0000-0000-0000-000000000000/events?after=abc", 400),
    ("GET", "/workflows/00000000-0000-0000-0000-000000000000/events?timeout=nan", 400),
    ("GET", "/workflows/00000000-0000-0000-0000-000000000000/events?timeout=-1", 400),
    ("GET", "/workflows/00000000-0000-0000-0000-000000000000/events?after=1", 404),
    ("GET", "/tasks/00000000-0000-0000-0000-000000000000.t/log?offset=-5", 400),
    ("GET", "/no/such/route", 404),
    ("GET", "/", 404),
    ("GET", "/workflows/", 400),  # an empty id
    ("DELETE", "/workflows", 405),
    ("GET", "/workflows/servers/create", 405),  # a POST-only route
    ("PUT", "/health", 405),
    ("POST", "/workflows/00000000-0000-0000-0000-000000000000/retry", 404),
])
def test_bad_ids_queries_routes_and_methods_get_4xx(daemon, method, path, expected):
    status, body = daemon.request(method, path)
    assert_json_error(status, body, expected)
    if status == 405:
        assert daemon.last_headers.get("Allow")


@pytest.mark.parametrize("data,expected", [
    (b"GARBAGE\r\n\r\n", (400, None)),
    (b"GET /health HTTP/9.9\r\n\r\n", (400, 505, None)),
    (b"BREW /workflows HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n", (501,)),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", (414,)),
    (b"GET /health HTTP/1.1\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", (431,)),
])
def test_protocol_garbage_never_crashes_the_server(daemon, data, expected):
    status, headers, body = raw_http(daemon.port, data.replace(b"{port}",
                                                               str(daemon.port).encode()))
    assert status in expected
    if status is not None and body:
        assert "error" in json.loads(body)
    assert daemon.health() is not None


def test_slow_client_times_out_and_does_not_block_others(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as slow:
        slow.sendall(b"POST /workflows HTTP/1.1\r\nHost: 127.0.0.1")  # ...and then nothing
        started = time.monotonic()
        assert daemon.health() is not None  # served while the slow client hangs
        slow.settimeout(30)
        assert slow.recv(1024) == b""  # the server closed it (request_timeout_seconds = 2)
        assert time.monotonic() - started < 25
    assert daemon.health() is not None


def test_connections_over_the_cap_get_a_quick_503(tmp_path):
    d = start_daemon(tmp_path, server={"max_connections": 2, "request_timeout_seconds": 20})
    idle = [socket.create_connection(("127.0.0.1", d.port), timeout=10) for _ in range(2)]
    try:
        def refused():
            status, _, body = raw_http(d.port, request_bytes(d, "GET", "/health", token=False))
            return status == 503 and "error" in json.loads(body)

        wait_for(refused, timeout=10, what="a 503 over the connection cap")
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: d.health() is not None, timeout=10, what="service after the idle ones left")
    d.stop()


# --------------------------------------------------------------- the routes themselves


def test_submit_run_and_inspect_a_workflow(daemon):
    spec = {"workflow": {"name": "hello"},
            "tasks": [{"id": "say", "op": "shell.run",
                       "params": {"argv": [sys.executable, "-c", "print('hello from task')"]}},
                      {"id": "after", "op": "noop", "depends_on": ["say"]}]}
    wid = submit(daemon, spec)
    assert daemon.last_headers.get("Location") == f"/workflows/{wid}"
    wf = daemon.wait_workflow(wid)
    assert wf["status"] == "succeeded" and wf["name"] == "hello"
    assert {t["id"]: t["status"] for t in wf["tasks"]} == {"say": "succeeded",
                                                          "after": "succeeded"}

    status, listing = daemon.request("GET", "/workflows")
    assert status == 200 and wid in [w["workflow_id"] for w in listing["workflows"]]
    status, done = daemon.request("GET", "/workflows?status=succeeded")
    assert wid in [w["workflow_id"] for w in done["workflows"]]
    status, failed = daemon.request("GET", "/workflows?status=failed")
    assert wid not in [w["workflow_id"] for w in failed["workflows"]]

    status, task = daemon.request("GET", f"/tasks/{wid}.say")
    assert status == 200 and task["status"] == "succeeded" and task["attempts"] == 1
    status, text = daemon.request("GET", f"/tasks/{wid}.say/log")
    assert status == 200 and "hello from task" in text
    size = int(daemon.last_headers["X-Log-Size"])
    assert size == len(text.encode()) and daemon.last_headers["X-Log-Offset"] == str(size)
    status, rest = daemon.request("GET", f"/tasks/{wid}.say/log?offset={size}")
    assert status == 200 and rest == ""
    status, tail = daemon.request("GET", f"/tasks/{wid}.say/log?offset={size + 1000}")
    assert status == 200 and tail == ""

    status, events = daemon.request("GET", f"/workflows/{wid}/events?after=0")
    assert status == 200 and events["status"] == "succeeded" and events["events"]
    seqs = [e["seq"] for e in events["events"]]
    assert seqs == sorted(seqs) and events["last"] == seqs[-1]
    status, later = daemon.request("GET", f"/workflows/{wid}/events?after={events['last']}"
                                          "&timeout=20")
    assert status == 200 and later["events"] == [] and later["last"] == events["last"]


def test_events_long_poll_returns_when_something_happens(daemon):
    wid = submit(daemon, {"tasks": [{"id": "s", "op": "shell.run",
                                     "params": {"argv": ["sleep", "1"]}}]})
    last, statuses = 0, []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, page = daemon.request("GET", f"/workflows/{wid}/events?after={last}&timeout=30")
        assert status == 200 and page["last"] >= last
        last = page["last"]
        statuses += [e["status"] for e in page["events"]]
        if page["status"] == "succeeded":
            break
    assert page["status"] == "succeeded" and "succeeded" in statuses


def test_a_task_reports_progress_with_its_own_token(daemon):
    script = (
        "import json, os, urllib.request\n"
        "req = urllib.request.Request(\n"
        "    os.environ['PROVISIONING_ENDPOINT'] + '/tasks/' + os.environ['PROVISIONING_TASK_ID']"
        " + '/progress',\n"
        "    data=json.dumps({'progress': 42, 'message': 'almost'}).encode(), method='POST',\n"
        "    headers={'Content-Type': 'application/json',\n"
        "             'Authorization': 'Bearer ' + os.environ['PROVISIONING_TASK_TOKEN']})\n"
        "print('progress-post', urllib.request.urlopen(req, timeout=10).status)\n"
        "other = os.environ['PROVISIONING_WORKFLOW_ID'] + '.other'\n"
        "req2 = urllib.request.Request(os.environ['PROVISIONING_ENDPOINT'] + '/tasks/' + other"
        " + '/progress', data=b'{\"progress\": 1}', method='POST', headers={\n"
        "    'Content-Type': 'application/json',\n"
        "    'Authorization': 'Bearer ' + os.environ['PROVISIONING_TASK_TOKEN']})\n"
        "try:\n"
        "    urllib.request.urlopen(req2, timeout=10)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print('other-task', e.code)\n")
    wid = submit(daemon, {"tasks": [
        {"id": "reporter", "op": "shell.run", "params": {"argv": [sys.executable, "-c", script]}},
        {"id": "other", "op": "noop", "depends_on": ["reporter"]}]})
    wf = daemon.wait_workflow(wid)
    assert wf["status"] == "succeeded"
    _, log = daemon.request("GET", f"/tasks/{wid}.reporter/log")
    assert "progress-post 200" in log and "other-task 401" in log
    _, events = daemon.request("GET", f"/workflows/{wid}/events")
    assert any(e.get("progress") == 42 and e.get("message") == "almost"
               for e in events["events"])


def test_cancel_and_retry(daemon):
    wid = submit(daemon, {"tasks": [{"id": "long", "op": "shell.run",
                                     "params": {"argv": ["sleep", "60"]}}]})
    status, view = daemon.request("POST", f"/workflows/{wid}/cancel")
    assert status == 200 and view["workflow_id"] == wid
    assert daemon.wait_workflow(wid)["status"] == "cancelled"
    status, view = daemon.request("POST", f"/workflows/{wid}/retry", {})
    assert status == 200
    status, running = daemon.request("POST", f"/workflows/{wid}/retry")
    assert status in (200, 409)
    status, _ = daemon.request("POST", f"/workflows/{wid}/cancel", {})
    assert status == 200
    assert daemon.wait_workflow(wid)["status"] == "cancelled"


def test_business_workflow_routes_answer_json(daemon):
    for path in ("/workflows/servers/create", "/workflows/servers/delete",
                 "/workflows/taskserv/create", "/workflows/cluster/create"):
        status, body = daemon.request("POST", path, {"infra": "missing-infra", "params": {}})
        assert_json_error(status, body, (400, 404))


def test_openapi_is_served_with_the_token(daemon):
    status, doc = daemon.request("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert str(daemon.port) in doc["servers"][0]["url"]


def test_daemon_survived_everything(daemon):
    assert daemon.health()["instance_id"] == daemon.instance_id
    assert daemon.alive()
    log = Path(daemon.data_dir / "orchestrator.log").read_text()
    assert "Traceback" not in log
