"""Hostile input: property-based tests of the workflow loader and the live API.

No input may produce a 500, a hang or a crash; params reach ops verbatim,
never through a shell. Inputs tried are counted in INPUTS (printed at the end
of the module; the figures are in tests/README.md).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning.engine.loader import parse_workflow
from provisioning.errors import ValidationError
from provisioning.model import WorkflowSpec
from tests.conftest import wait_for
from tests.daemon_fixture import start_daemon

INPUTS: Counter = Counter()
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# JSON with the nasty parts: huge and tiny numbers, unicode, NUL, lone surrogates
# excluded (not JSON-encodable as UTF-8), deep-ish nesting.
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                           max_leaves=30)
task_like = st.fixed_dictionaries({}, optional={
    "id": json_scalars | st.sampled_from(["a", "b", "../x", "a.b", "x" * 65, "ok-1"]),
    "op": json_scalars | st.sampled_from(["noop", "shell.run", "../../etc", "a..b", "x.y"]),
    "params": json_values,
    "depends_on": st.lists(st.sampled_from(["a", "b", "c"]) | json_scalars, max_size=3)
    | json_scalars,
    "priority": st.sampled_from(["low", "normal", "high", "critical", "urgent"]) | json_scalars,
    "retries": json_scalars, "timeout_s": json_scalars})
workflow_like = st.fixed_dictionaries({}, optional={
    "workflow": st.fixed_dictionaries({}, optional={
        "name": json_scalars, "max_parallel": json_scalars, "kind": json_scalars,
        "description": json_scalars}) | json_values,
    "tasks": st.lists(task_like, max_size=6) | json_values,
    "extra": json_values})


def check_loader(data) -> None:
    try:
        spec = parse_workflow(data, source="fuzz", registry=None)
    except ValidationError as e:
        assert e.message and "Traceback" not in e.message
        return
    assert isinstance(spec, WorkflowSpec)
    # whatever it accepts round-trips (API payloads)
    assert parse_workflow(spec.to_dict(), source="again", registry=None) == spec


@SETTINGS
@given(json_values)
def test_loader_arbitrary_json_is_a_spec_or_a_validation_error(data):
    INPUTS["loader arbitrary JSON"] += 1
    check_loader(data)


@SETTINGS
@given(workflow_like)
def test_loader_workflow_shaped_json_is_a_spec_or_a_validation_error(data):
    INPUTS["loader workflow-shaped"] += 1
    check_loader(data)


@pytest.mark.parametrize("depth", [100, 1000, 20000])
def test_loader_survives_deep_nesting_and_huge_inputs(depth):
    deep: object = "bottom"
    for _ in range(depth):
        deep = {"d": [deep]}
    for data in ({"tasks": [{"id": "a", "op": "noop", "params": deep}]},
                 {"tasks": deep}, {"workflow": deep, "tasks": []},
                 {"tasks": [{"id": f"t{i}", "op": "noop"} for i in range(20000)]},
                 {"tasks": [{"id": "a", "op": "noop", "retries": 10**4000 if depth > 1 else 1}]},
                 {"tasks": [{"id": "a\x00", "op": "no\x00op", "params": {"\x00": "\x00"}}]}):
        INPUTS["loader deep/huge"] += 1
        try:
            parse_workflow(data, source="deep", registry=None)
        except ValidationError:
            pass


# ------------------------------------------------------------------ the live API

ECHO_OP = """
import json, os, sys
raw = sys.stdin.buffer.read()
out = json.loads(raw)["out"]
with open(out, "wb") as f:
    f.write(raw)
"""
ARGV_DUMP = """
import json, os, sys
with open(sys.argv[1], "wb") as f:
    f.write(json.dumps(sys.argv[2:]).encode())
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    lib = base / "lib"
    (lib / "echo").mkdir(parents=True)
    (lib / "echo" / "stdin.py").write_text(ECHO_OP)
    env: dict[str, str | None] = {k: None for k in os.environ
                                  if k.startswith("PROVISIONING_") or k == "NOTIFY_SOCKET"}
    env.update({"PROVISIONING_SHARE_DIR": str(base / "share"),
                "PROVISIONING_ETC_DIR": str(base / "etc"),
                "PROVISIONING_USER_CONFIG_DIR": str(base / "userconfig"),
                "PROVISIONING_LIB": str(lib)})
    d = start_daemon(base, env=env, storage={"data_dir": str(base / "data")},
                     server={"request_timeout_seconds": 3, "max_connections": 48},
                     executor={"shutdown_grace_seconds": 2, "kill_grace_seconds": 1,
                               "max_concurrent_tasks": 4})
    d.base = base
    yield d
    d.stop()
    log = (d.data_dir / "orchestrator.log").read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    print(f"\nhostile inputs tried: {dict(INPUTS)}; total {sum(INPUTS.values())}")


class Conn:
    """One keep-alive connection that reconnects when the server closes it."""

    def __init__(self, d):
        self.d = d
        self.conn = None

    def request(self, method: str, path: str, body: bytes | None = None,
                ctype: str = "application/json") -> tuple[int, bytes, str]:
        import http.client

        for _ in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=30)
            try:
                headers = {"Host": f"127.0.0.1:{self.d.port}",
                           "Authorization": f"Bearer {self.d.token}"}
                if body is not None:
                    headers["Content-Type"] = ctype
                self.conn.request(method, path, body, headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status, data, resp.getheader("Content-Type", "")
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
        raise AssertionError(f"{method} {path}: connection failed twice")


def assert_no_500(status: int, data: bytes, ctype: str, what: str) -> None:
    assert status < 500, (what, status, data[:300])
    if status >= 400:
        assert ctype.startswith("application/json"), (what, status, data[:300])
        assert isinstance(json.loads(data).get("error"), str)


@pytest.fixture(scope="module")
def conn(daemon):
    return Conn(daemon)


@SETTINGS
@given(json_values | workflow_like)
def test_api_arbitrary_json_bodies_never_500(daemon, conn, data):
    body = json.dumps(data).encode()
    for path in ("/workflows", "/workflows/servers/create", f"/tasks/{uuid.uuid4()}.a/progress"):
        INPUTS["API JSON bodies"] += 1
        status, raw, ctype = conn.request("POST", path, body)
        assert_no_500(status, raw, ctype, f"POST {path} {body[:200]!r}")


@SETTINGS
@given(st.binary(max_size=200) | st.text(max_size=100).map(lambda s: s.encode("utf-8")))
def test_api_raw_bytes_bodies_never_500(daemon, conn, raw):
    INPUTS["API raw bodies"] += 1
    status, data, ctype = conn.request("POST", "/workflows", raw)
    assert_no_500(status, data, ctype, f"POST raw {raw[:100]!r}")
    assert status in (400, 413, 415), (status, data)


path_ids = (st.text(max_size=60)
            | st.sampled_from(["..", "../..", "..%2F..%2Ftoken", "%2e%2e%2ftoken", "..%5c..",
                               "%00", "a%00b", "%2F", "token", "...", ".a", "a/../../token",
                               "%252e%252e%252f", "x" * 5000, "%ff%fe", "é", "a.b.c",
                               "00000000-0000-0000-0000-000000000000.../../token"]))


@SETTINGS
@given(path_ids, st.sampled_from(["/workflows/{}", "/workflows/{}/events", "/tasks/{}",
                                  "/tasks/{}/log", "/workflows/{}/cancel", "/tasks/{}.a/log"]))
def test_api_hostile_ids_in_paths_never_500_or_leak(daemon, conn, ident, template):
    from urllib.parse import quote

    INPUTS["API path ids"] += 1
    raw = quote(ident, safe="%/.")  # raw '%', '/' and '.' kept: traversal attempts
    path = template.format(raw)
    method = "POST" if path.endswith("/cancel") else "GET"
    status, data, ctype = conn.request(method, path)
    assert_no_500(status, data, ctype, f"{method} {path[:200]}")
    assert status in (400, 404, 405), (path[:200], status, data[:200])
    assert daemon.token.encode() not in data


@SETTINGS
@given(st.dictionaries(st.sampled_from(["status", "after", "timeout", "offset", "x", ""]),
                       st.text(max_size=30) | st.integers().map(str), max_size=3))
def test_api_hostile_query_strings_never_500(daemon, conn, query):
    from urllib.parse import urlencode

    INPUTS["API query strings"] += 1
    wid = "00000000-0000-0000-0000-000000000000"
    for path in ("/workflows", f"/workflows/{wid}/events", f"/tasks/{wid}.a/log"):
        status, data, ctype = conn.request("GET", f"{path}?{urlencode(query)}")
        assert_no_500(status, data, ctype, f"GET {path}?{query}")


def test_10mb_body_is_refused_with_413(daemon):
    body = b'{"tasks": [' + b" " * (10 * 1024 * 1024) + b"]}"
    head = (f"POST /workflows HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\n"
            f"Authorization: Bearer {daemon.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as s:
        s.sendall(head)
        try:
            s.sendall(body)  # the server answers without reading it and closes
        except OSError:
            pass
        reply = b""
        try:
            while b"\r\n\r\n" not in reply:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            pass
    INPUTS["10 MB bodies"] += 1
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert daemon.health() is not None


def test_slow_loris_sockets_do_not_stop_other_clients(daemon):
    lorises = []
    try:
        for _ in range(30):  # well under max_connections
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
            s.sendall(b"POST /workflows HTTP/1.1\r\nHost: 127.0.0.1:")
            lorises.append(s)
        for s in lorises[:10]:
            s.sendall(b"1")  # keep trickling
        started = time.monotonic()
        status, body = daemon.request("GET", "/workflows", timeout=30)
        assert status == 200
        assert time.monotonic() - started < 10  # served now, not after the lorises time out
        # the lorises are cut off by the request timeout (3 s here), not kept forever
        for s in lorises:
            s.settimeout(30)
            try:
                data = s.recv(65536)  # EOF or an error reply, not a hang
            except ConnectionResetError:
                data = b""
            assert data == b"" or data.startswith(b"HTTP/1.1 4"), data[:100]
        INPUTS["slow-loris sockets"] += len(lorises)
    finally:
        for s in lorises:
            s.close()
    # over the cap: a quick 503, never a hang
    many = []
    try:
        for _ in range(60):
            many.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=30))
        status, body = daemon.request("GET", "/health", token=None, timeout=30)
        assert status in (200, 503)
    finally:
        for s in many:
            s.close()
    wait_for(lambda: daemon.health() is not None, timeout=30, what="the daemon to answer")


METACHARS = ["$(touch pwned)", "`touch pwned2`", "; touch pwned3", "a && b || c", "| cat",
             "> out", "< /etc/passwd", "'", '"', "\\", "*", "?", "~", "$HOME", "${PATH}",
             "\n", "\t", " leading and trailing ", "", "-c", "--", "é ü 中文 🚀", "%s%n",
             "!$", "#comment", "a\rb", "\x7f", "\x01\x02"]


def run_argv_dump(daemon, workdir: Path, args: list[str]) -> list[str]:
    script = workdir / "argv_dump.py"
    script.write_text(ARGV_DUMP)
    out = workdir / f"argv-{uuid.uuid4().hex}.json"
    status, body = daemon.request("POST", "/workflows", {"tasks": [{
        "id": "dump", "op": "shell.run",
        "params": {"argv": [sys.executable, str(script), str(out), *args],
                   "cwd": str(workdir)}}]})
    assert status == 202, body
    view = daemon.wait_workflow(body["workflow_id"], timeout=60)
    assert view["status"] == "succeeded", view["tasks"][0]["error"]
    return json.loads(out.read_bytes())


def test_shell_metacharacters_reach_the_op_verbatim(daemon, tmp_path):
    got = run_argv_dump(daemon, tmp_path, METACHARS)
    INPUTS["metacharacter params"] += len(METACHARS)
    assert got == METACHARS
    assert json.dumps(got).encode() == json.dumps(METACHARS).encode()  # byte for byte
    assert not list(tmp_path.glob("pwned*")), "a shell ran"
    # the same strings as params of a Python op: they arrive on its stdin untouched
    out = tmp_path / "stdin.json"
    params = {"out": str(out), "args": METACHARS, "nested": {"$(x)": ["`y`", {"; z": "|"}]}}
    status, body = daemon.request("POST", "/workflows", {"tasks": [
        {"id": "echo", "op": "echo.stdin", "params": params}]})
    assert status == 202, body
    view = daemon.wait_workflow(body["workflow_id"], timeout=60)
    assert view["status"] == "succeeded", view["tasks"][0]["error"]
    assert json.loads(out.read_bytes()) == params
    assert not list(tmp_path.glob("pwned*"))


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                        max_size=30), min_size=1, max_size=8))
def test_random_argv_reaches_shell_run_verbatim(daemon, tmp_path, args):
    INPUTS["random argv params"] += 1
    workdir = tmp_path / uuid.uuid4().hex
    workdir.mkdir()
    assert run_argv_dump(daemon, workdir, args) == args
    shutil.rmtree(workdir)


def test_nul_bytes_in_argv_fail_the_task_cleanly(daemon):
    INPUTS["NUL in argv"] += 1
    status, body = daemon.request("POST", "/workflows", {"tasks": [
        {"id": "nul", "op": "shell.run", "params": {"argv": ["echo", "a\x00b"]}}]})
    assert status in (202, 400), body
    if status == 202:
        view = daemon.wait_workflow(body["workflow_id"], timeout=60)
        assert view["status"] == "failed"
        assert "null" in (view["tasks"][0]["error"] or "").lower(), view["tasks"][0]
    assert daemon.health() is not None


def test_schemathesis_finds_no_server_error(daemon, tmp_path):
    pytest.importorskip("schemathesis")
    cli = Path(sys.executable).parent / "schemathesis"
    if not cli.exists():
        pytest.skip("schemathesis CLI not installed")
    result = subprocess.run(
        [str(cli), "run", f"{daemon.url}/openapi.json",
         "-H", f"Authorization: Bearer {daemon.token}",
         "--checks", "not_a_server_error", "--max-examples", "30", "--seed", "1",
         "--request-timeout", "35", "--generation-database", "none", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    INPUTS["schemathesis runs"] += 1
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
