"""provisioning.client against a real daemon: routes, errors, versions, auto-start.

Also home of the `cold` fixture the CLI tests share: a free port with no
daemon on it, and a finalizer that stops every daemon started for the test's
data dir (found by its --data-dir argument, confirmed with psutil).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from provisioning.errors import (
    EXIT_UNAVAILABLE,
    IncompatibleVersions,
    NotFound,
    OrchestratorUnavailable,
    UsageError,
)
from tests.conftest import free_port, run_cli, wait_for

NOOP_WORKFLOW = """\
[workflow]
name = "two-noops"

[[tasks]]
id = "a"
op = "noop"

[[tasks]]
id = "b"
op = "noop"
depends_on = ["a"]
"""


@dataclass
class Cold:
    port: int
    url: str
    data_dir: Path
    tmp: Path

    def workflow_file(self, text: str = NOOP_WORKFLOW, name: str = "wf.toml") -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path


def daemon_processes(data_dir: Path) -> list[psutil.Process]:
    """Orchestrator processes serving `data_dir` (its path is on their command line;
    not their record writer child, provisioning/store/writer.py, and not a child
    caught between fork and exec, which still shows its parent's command line)."""
    found = []
    needle = str(data_dir)
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        cmd = proc.info.get("cmdline") or []
        if any("provisioning.store.writer" in part for part in cmd):
            continue
        if needle in cmd and any("orchestrator" in part for part in cmd):
            found.append(proc)
    pids = {p.pid for p in found}
    return [p for p in found if p.info.get("ppid") not in pids]


def stop_daemons(data_dir: Path) -> None:
    procs = daemon_processes(data_dir)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def cold(isolated, tmp_path, monkeypatch) -> Cold:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_ENDPOINT", url)
    monkeypatch.setenv("PROVISIONING_SERVER_PORT", str(port))
    monkeypatch.setenv("PROVISIONING_EXECUTOR_KILL_GRACE_SECONDS", "1")
    monkeypatch.setenv("PROVISIONING_EXECUTOR_SHUTDOWN_GRACE_SECONDS", "2")
    data_dir = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    yield Cold(port, url, data_dir, tmp_path)
    stop_daemons(data_dir)


def submit_id(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    """The id from `Workflow submitted: <id>`, after checking the exit code."""
    assert result.returncode == code, result.stderr
    for line in result.stdout.splitlines():
        if line.startswith("Workflow submitted: "):
            return line.split(": ", 1)[1].strip()
    raise AssertionError(f"no workflow id in {result.stdout!r}")


def _config():
    from provisioning.config import load_config

    return load_config()


# -- client against a real daemon ---------------------------------------------------


@pytest.fixture
def live(cold):
    from provisioning.autostart import ensure_orchestrator

    client = ensure_orchestrator(_config())
    return cold, client


def test_auto_start_then_every_route(live):
    cold, client = live
    health = client.health()
    assert health["status"] == "healthy"
    assert health["api_version"] == "v1"
    assert len(daemon_processes(cold.data_dir)) == 1

    spec = {"workflow": {"name": "c"}, "tasks": [
        {"id": "say", "op": "shell.run",
         "params": {"argv": [sys.executable, "-c", "print('hello from the task')"]}}]}
    submitted = client.submit_workflow(spec)
    wid = submitted["workflow_id"]
    assert submitted["status"] == "queued"

    seen: list[dict] = []

    def finished():
        seen.extend(client.events(wid, after=seen[-1]["seq"] if seen else 0, timeout=2))
        return client.get_workflow(wid)["status"] in ("succeeded", "failed")

    wait_for(finished, timeout=30, what="workflow end")
    view = client.get_workflow(wid)
    assert view["status"] == "succeeded"
    assert [e["seq"] for e in seen] == sorted({e["seq"] for e in seen})
    assert any(e["type"] == "workflow" and e["status"] == "succeeded" for e in seen)
    assert any(w["workflow_id"] == wid for w in client.list_workflows())
    assert all(w["status"] == "succeeded" for w in client.list_workflows("succeeded"))

    key = view["tasks"][0]["key"]
    assert client.get_task(key)["status"] == "succeeded"
    text, offset = client.task_log(key)
    assert "hello from the task" in text
    assert offset >= len(text.encode())
    more, offset2 = client.task_log(key, offset)
    assert more == "" and offset2 == offset

    with pytest.raises(NotFound):
        client.get_workflow("00000000-0000-4000-8000-000000000000")
    with pytest.raises(UsageError):
        client.submit_workflow({"workflow": {"name": "bad"}, "tasks": [{"id": "x", "op": 1}]})


def test_wrong_token_is_refused_with_hint(live):
    from provisioning.client import Client

    cold, _ = live
    bad = Client(cold.url, token="not-the-token", timeout=5)
    with pytest.raises(OrchestratorUnavailable) as info:
        bad.list_workflows()
    assert "refused" in info.value.message
    assert info.value.exit_code == EXIT_UNAVAILABLE


def test_closed_port_is_unavailable_and_not_delivered(cold):
    from provisioning.client import Client, Unreachable

    client = Client(cold.url, token="x", timeout=5)
    with pytest.raises(Unreachable) as info:
        client.health()
    assert info.value.exit_code == EXIT_UNAVAILABLE
    assert info.value.delivered is False
    assert cold.url in info.value.message


def test_unreadable_token_is_a_clear_error(tmp_path):
    from provisioning.client import read_token

    with pytest.raises(OrchestratorUnavailable) as info:
        read_token(tmp_path / "missing-token")
    assert "missing-token" in info.value.message
    assert info.value.hint


def test_proxy_environment_is_ignored(live, monkeypatch):
    cold, client = live
    # a proxy that does not exist: the request must not go there
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert client.health()["status"] == "healthy"


# -- version check against a foreign /health ------------------------------------------


class _FakeHealth(http.server.BaseHTTPRequestHandler):
    platform = "9.0.0"

    def do_GET(self):  # noqa: N802 - http.server naming
        body = json.dumps({"status": "healthy", "platform_version": self.platform,
                           "core_version": "0", "api_version": "v1", "pid": os.getpid(),
                           "instance_id": "fake"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_daemon(cold):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", cold.port), _FakeHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield cold
    server.shutdown()
    server.server_close()


def test_incompatible_platform_is_exit_4_with_both_versions(fake_daemon, monkeypatch):
    from provisioning import __version__
    from provisioning.autostart import ensure_orchestrator

    (fake_daemon.data_dir).mkdir(parents=True, exist_ok=True)
    (fake_daemon.data_dir / "token").write_text("t")
    with pytest.raises(IncompatibleVersions) as info:
        ensure_orchestrator(_config())
    assert "9.0.0" in str(info.value) and __version__ in str(info.value)
    assert info.value.exit_code == 4

    wf = fake_daemon.workflow_file()
    result = run_cli("--orchestrated", "workflow", "submit", str(wf))
    assert result.returncode == 4, result.stderr
    assert "9.0.0" in result.stderr and __version__ in result.stderr
    assert "Traceback" not in result.stderr


# -- auto-start races -----------------------------------------------------------------


@pytest.mark.slow
def test_ten_cold_clis_start_exactly_one_daemon(cold):
    wf = cold.workflow_file()
    env = dict(os.environ)
    procs = [subprocess.Popen([str(Path(sys.executable).parent / "provisioning"),
                               "--orchestrated", "workflow", "submit", str(wf)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(10)]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "warning" not in err  # nobody fell back to direct
        ids += [line.split(": ", 1)[1] for line in out.splitlines()
                if line.startswith("Workflow submitted: ")]
    assert len(set(ids)) == 10
    daemons = daemon_processes(cold.data_dir)
    assert len(daemons) == 1, [p.cmdline() for p in daemons]
    pidfile = json.loads((cold.data_dir / "orchestrator.pid").read_text())
    assert pidfile["pid"] == daemons[0].pid

    from provisioning.autostart import ensure_orchestrator

    client = ensure_orchestrator(_config())
    assert client.health()["pid"] == daemons[0].pid
    listed = {w["workflow_id"] for w in client.list_workflows()}
    assert set(ids) <= listed


def test_auto_start_off_raises_with_hint(cold, monkeypatch):
    from provisioning.autostart import ensure_orchestrator

    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_AUTO_START", "false")
    t0 = time.monotonic()
    with pytest.raises(OrchestratorUnavailable) as info:
        ensure_orchestrator(_config())
    assert time.monotonic() - t0 < 10
    assert "provisioning orchestrator start" in str(info.value)
    assert daemon_processes(cold.data_dir) == []
