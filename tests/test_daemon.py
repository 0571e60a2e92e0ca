"""The real `provisioning-orchestrator` process: lifecycle, locks, signals, durability.

Every test runs the installed entry point as a subprocess on a free port with
a temp data dir (see tests/daemon_fixture.py) and polls, never sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for
from tests.daemon_fixture import ORCHESTRATOR, start_daemon, write_config


def orchestrator(*args: str, timeout: float = 60, env: dict | None = None
                 ) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([ORCHESTRATOR, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def noop_workflow(name: str = "wf", n: int = 1) -> dict:
    return {"workflow": {"name": name},
            "tasks": [{"id": f"t{i}", "op": "noop"} for i in range(n)]}


def blocker_workflow(seconds: int = 30, name: str = "blocker") -> dict:
    return {"workflow": {"name": name},
            "tasks": [{"id": "block", "op": "shell.run",
                       "params": {"argv": ["sleep", str(seconds)]}}]}


def task_running(d, key: str) -> bool:
    status, body = d.request("GET", f"/tasks/{key}")
    return status == 200 and body["status"] == "running"


def test_daemon_starts_answers_and_stops(tmp_path: Path):
    d = start_daemon(tmp_path)
    assert "started (pid" in d.start_output
    health = d.health()
    assert health["status"] == "healthy"
    assert health["instance_id"] == d.instance_id and health["pid"] == d.pid
    assert health["api_version"] == "v1" and health["core_version"] and health["platform_version"]
    assert isinstance(health["queue"], dict)
    # the daemon is detached: its own session, not our child, stdin from /dev/null
    proc = psutil.Process(d.pid)
    assert proc.ppid() != os.getpid()
    assert os.getsid(d.pid) == d.pid or os.getsid(d.pid) != os.getsid(0)

    status = d.cli("--status")
    assert status.returncode == 0 and f"running (pid {d.pid}" in status.stdout

    d.stop()
    assert not (d.data_dir / "orchestrator.pid").exists()
    assert not psutil.pid_exists(d.pid) or psutil.Process(d.pid).status() == "zombie"
    status = d.cli("--status")
    assert status.returncode == 3 and "stopped" in status.stdout
    again = d.cli("--stop")
    assert again.returncode == 0 and "not running" in again.stdout


def test_second_start_is_refused_with_a_clear_message(tmp_path: Path):
    d = start_daemon(tmp_path)
    second = d.cli("--daemon")
    assert second.returncode == 0
    assert f"already running (pid {d.pid})" in second.stdout
    # the foreground form too (what a second systemd unit would run): the lock decides
    fg = d.cli()
    assert fg.returncode == 0 and f"already running (pid {d.pid})" in fg.stdout
    assert d.health()["instance_id"] == d.instance_id
    d.stop()


def test_token_file_and_data_dir_are_private(tmp_path: Path):
    d = start_daemon(tmp_path)
    assert stat.S_IMODE(d.data_dir.stat().st_mode) == 0o700
    token_file = d.data_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(d.token) >= 40
    assert stat.S_IMODE((d.data_dir / "orchestrator.pid").stat().st_mode) == 0o600
    first = d.token
    d.stop()
    d2 = start_daemon(tmp_path)
    assert d2.token == first  # created once, kept across restarts
    d2.stop()


def test_non_loopback_bind_is_refused_unless_allowed(tmp_path: Path):
    cfg = write_config(tmp_path / "c.toml", {"server": {"host": "0.0.0.0", "port": 0}})
    for args in (["--config", str(cfg)], ["--config", str(cfg), "--daemon"],
                 ["--config", str(cfg), "--check"], ["--host", "0.0.0.0", "--port", "0"]):
        result = orchestrator(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "not a loopback address" in result.stderr and "allow_remote" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (Path(os.environ["PROVISIONING_STORAGE_DATA_DIR"]) / "orchestrator.pid").exists()
    allowed = write_config(tmp_path / "ok.toml",
                           {"server": {"host": "0.0.0.0", "port": 0, "allow_remote": True}})
    assert orchestrator("--config", str(allowed), "--check").returncode == 0


def test_check_reports_config_and_versions(tmp_path: Path):
    ok = orchestrator("--check")
    assert ok.returncode == 0 and "compatible" in ok.stdout
    bad = write_config(tmp_path / "bad.toml", {"server": {"prot": 1}})
    result = orchestrator("--check", "--config", str(bad))
    assert result.returncode == 2
    assert "unknown key 'prot'" in result.stderr and "Traceback" not in result.stderr


def test_incompatible_versions_refuse_to_start_with_exit_4(tmp_path: Path):
    matrix = tmp_path / "versions.toml"
    matrix.write_text(textwrap.dedent("""
        [compatibility.platform."2.5.3"]
        core = "^4.0"
        api-version = "v1"
    """))
    env = {"PROVISIONING_VERSIONS_FILE": str(matrix)}
    for args in ([], ["--daemon"], ["--check"]):
        result = orchestrator(*args, "--port", "0", env=env)
        assert result.returncode == 4, (args, result.stderr)
        from provisioning import __version__
        from provisioning.versions import PLATFORM_VERSION

        assert __version__ in result.stderr and PLATFORM_VERSION in result.stderr
        assert "^4.0" in result.stderr and "Traceback" not in result.stderr
    assert not (Path(os.environ["PROVISIONING_STORAGE_DATA_DIR"]) / "orchestrator.pid").exists()


def test_stale_pidfile_of_a_live_unrelated_process_is_never_signalled(tmp_path: Path):
    data = Path(os.environ["PROVISIONING_STORAGE_DATA_DIR"])
    data.mkdir(mode=0o700)
    victim = subprocess.Popen(["sleep", "60"])
    try:
        # the pid is alive and even its create time is right: only the command line differs
        pidfile = data / "orchestrator.pid"
        pidfile.write_text(json.dumps({
            "pid": victim.pid, "create_time": psutil.Process(victim.pid).create_time(),
            "instance_id": "x", "port": 1, "host": "127.0.0.1", "started_at": 0}))
        status = orchestrator("--status")
        assert status.returncode == 3 and "stale" in status.stdout
        stop = orchestrator("--stop")
        assert stop.returncode == 0 and "stale" in stop.stdout
        assert victim.poll() is None  # not signalled
        assert not pidfile.exists()
        # and a reused pid with another create time is stale too; a new daemon starts
        pidfile.write_text(json.dumps({"pid": victim.pid, "create_time": 1.0,
                                       "instance_id": "y", "port": 1}))
        d = start_daemon(tmp_path)
        assert d.pid != victim.pid and victim.poll() is None
        d.stop()
    finally:
        victim.kill()
        victim.wait()


def test_failed_start_returns_non_zero_with_the_reason(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = orchestrator("--daemon", "--port", str(port))
    assert result.returncode != 0
    assert "address already in use" in result.stderr
    data = Path(os.environ["PROVISIONING_STORAGE_DATA_DIR"])
    assert not (data / "orchestrator.pid").exists()
    # nothing left behind: the lock is free, a normal start works
    d = start_daemon(tmp_path)
    d.stop()


def test_notify_socket_gets_ready_and_stopping(tmp_path: Path):
    name = f"@prov-test-{uuid.uuid4().hex}"  # abstract namespace: exercises the "@" form
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        sock.settimeout(30)
        d = start_daemon(tmp_path, foreground=True, env={"NOTIFY_SOCKET": name})
        ready = sock.recv(4096).decode()
        assert "READY=1" in ready.splitlines()
        assert f"MAINPID={d.pid}" in ready
        d.proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in sock.recv(4096).decode().splitlines()
        assert d.proc.wait(timeout=60) == 0


def test_sigterm_drains_running_task_and_refuses_new_work(tmp_path: Path):
    d = start_daemon(tmp_path, foreground=True, executor={"shutdown_grace_seconds": 120})
    release = tmp_path / "release"
    # The task runs until the test lets it go, so the drain window is the test's to
    # choose, whatever the machine's load (the path is $0 of the script, not text in it).
    gate = {"workflow": {"name": "drain"},
            "tasks": [{"id": "block", "op": "shell.run", "params": {"argv": [
                "sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done', str(release)]}}]}
    try:
        status, body = d.request("POST", "/workflows", gate)
        assert status == 202
        key = f"{body['workflow_id']}.block"
        wait_for(lambda: task_running(d, key), timeout=30, what="the task to run")
        d.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: (d.health() or {}).get("draining"), timeout=30, what="draining")
        status, refused = d.request("POST", "/workflows", noop_workflow("late"))
        assert status == 503 and "error" in refused
        assert d.proc.poll() is None, "the daemon must wait for its running task"
    finally:
        release.touch()  # whatever happened, the task must not poll forever
    assert d.proc.wait(timeout=60) == 0
    assert not (d.data_dir / "orchestrator.pid").exists()
    # after a restart the drained task is finished, run once, not re-queued
    d2 = start_daemon(tmp_path)
    status, task = d2.request("GET", f"/tasks/{key}")
    assert status == 200 and task["status"] == "succeeded" and task["attempts"] == 1
    d2.stop()


def test_kill9_with_200_queued_tasks_loses_and_duplicates_nothing(tmp_path: Path):
    d = start_daemon(tmp_path, executor={"max_concurrent_tasks": 1,
                                         "shutdown_grace_seconds": 1, "kill_grace_seconds": 1})
    status, blocker = d.request("POST", "/workflows", blocker_workflow(60))
    assert status == 202
    blocker_key = f"{blocker['workflow_id']}.block"
    wait_for(lambda: task_running(d, blocker_key), timeout=30, what="the blocker to run")
    blocker_pid = wait_for(lambda: d.request("GET", f"/tasks/{blocker_key}")[1].get("pid"),
                           timeout=30, what="the blocker's pid")
    spec = {"workflow": {"name": "many", "max_parallel": 1},
            "tasks": [{"id": f"t{i:03d}", "op": "noop"} for i in range(200)]}
    status, many = d.request("POST", "/workflows", spec)
    assert status == 202
    d.kill()

    d2 = start_daemon(tmp_path, executor={"max_concurrent_tasks": 1,
                                          "shutdown_grace_seconds": 1, "kill_grace_seconds": 1})
    assert d2.instance_id != d.instance_id
    status, wf = d2.request("GET", f"/workflows/{many['workflow_id']}")
    assert status == 200
    ids = [t["id"] for t in wf["tasks"]]
    assert len(ids) == 200 and sorted(set(ids)) == [f"t{i:03d}" for i in range(200)]
    assert all(t["status"] == "queued" for t in wf["tasks"])
    status, listing = d2.request("GET", "/workflows")
    listed = [w["workflow_id"] for w in listing["workflows"]]
    assert sorted(listed) == sorted([blocker["workflow_id"], many["workflow_id"]])
    d2.stop()
    # the blocker outlived the killed daemon; the next one waited for or killed it,
    # and its shutdown (grace 1 s) leaves no task process behind
    wait_for(lambda: not psutil.pid_exists(blocker_pid)
             or psutil.Process(blocker_pid).status() == psutil.STATUS_ZOMBIE,
             timeout=30, what="the orphaned blocker to be gone")


SUBMITTER = textwrap.dedent("""
    import http.client, json, sys
    port, token, who, count = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    ids = []
    for i in range(count):
        body = json.dumps({"workflow": {"name": f"{who}-{i}"},
                           "tasks": [{"id": "t", "op": "noop"}]})
        conn.request("POST", "/workflows", body, {"Authorization": "Bearer " + token,
                     "Content-Type": "application/json", "Host": f"127.0.0.1:{port}"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        assert resp.status == 202, (resp.status, data)
        ids.append(data["workflow_id"])
    print(json.dumps(ids))
""")

@pytest.mark.slow
def test_concurrent_http_submissions_each_land_exactly_once(tmp_path: Path):
    cfg = {"executor": {"max_concurrent_tasks": 1, "shutdown_grace_seconds": 1,
                        "kill_grace_seconds": 1}}
    d = start_daemon(tmp_path, **cfg)
    status, blocker = d.request("POST", "/workflows", blocker_workflow(120))
    assert status == 202
    http_procs = [subprocess.Popen([sys.executable, "-c", SUBMITTER, str(d.port), d.token,
                                    f"http{n}", "50"], stdout=subprocess.PIPE, text=True)
                  for n in range(20)]
    expected: dict[str, str] = {blocker["workflow_id"]: "blocker"}
    for who, procs, count in (("http", http_procs, 50),):
        for n, p in enumerate(procs):
            out, _ = p.communicate(timeout=300)
            assert p.returncode == 0
            ids = json.loads(out)
            assert len(ids) == count
            expected.update({wid: f"{who}{n}-{i}" for i, wid in enumerate(ids)})
    assert len(expected) == 1 + 20 * 50

    def all_present():
        status, body = d.request("GET", "/workflows")
        return body["workflows"] if len(body["workflows"]) >= len(expected) else None

    workflows = wait_for(all_present, timeout=60, what="every submission to be listed")
    listed = [w["workflow_id"] for w in workflows]
    assert len(listed) == len(set(listed)) == len(expected)
    assert {w["workflow_id"]: w["name"] for w in workflows} == expected
    d.stop()
