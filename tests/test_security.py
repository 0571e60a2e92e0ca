"""Security: the token, file modes, the bind policy, extension dirs, task environment."""

from __future__ import annotations

import inspect
import json
import os
import stat
import subprocess
from pathlib import Path

from provisioning.engine import engine as engine_module
from provisioning.orchestrator import api, auth
from tests.conftest import wait_for
from tests.daemon_fixture import ORCHESTRATOR, start_daemon, write_config

CFG = {"executor": {"shutdown_grace_seconds": 2, "kill_grace_seconds": 1}}

# A Python op that records its environment and what its own token can do.
PROBE_OP = """
import http.client, json, os, sys, time
params = json.loads(sys.stdin.read())
env = dict(os.environ)
url = env["PROVISIONING_ENDPOINT"].removeprefix("http://")
host, port = url.rsplit(":", 1)
token = env["PROVISIONING_TASK_TOKEN"]
key = env["PROVISIONING_TASK_ID"]
def call(method, path, body=None):
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": "Bearer " + token, "Host": url}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    return conn.getresponse().status
# wait until the sibling runs too, so its progress route is live
sibling = params["sibling"]
open(params["started"], "w").close()
deadline = time.time() + 30
while not os.path.exists(params["sibling_started"]) and time.time() < deadline:
    time.sleep(0.02)
wid = env["PROVISIONING_WORKFLOW_ID"]
out = {"env": env,
       "own_progress": call("POST", f"/tasks/{key}/progress", {"progress": 50}),
       "other_progress": call("POST", f"/tasks/{wid}.{sibling}/progress", {"progress": 50}),
       "read_workflow": call("GET", f"/workflows/{wid}"),
       "list": call("GET", "/workflows"),
       "cancel": call("POST", f"/workflows/{wid}/cancel")}
with open(params["out"], "w") as f:
    json.dump(out, f)
"""


def probe_lib(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    (lib / "probe").mkdir(parents=True)
    (lib / "probe" / "env.py").write_text(PROBE_OP)
    for p in (lib, lib / "probe", lib / "probe" / "env.py"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return lib


def test_token_is_compared_in_constant_time():
    assert "hmac.compare_digest" in inspect.getsource(auth.token_matches)
    assert "==" not in inspect.getsource(auth.token_matches).split('"""')[-1]
    assert "hmac.compare_digest" in inspect.getsource(engine_module.Engine.check_task_token)
    assert "auth.token_matches" in inspect.getsource(api.ApiHandler._authenticate)


def test_token_required_file_modes_and_private_data_dir(tmp_path: Path):
    d = start_daemon(tmp_path, **CFG)
    token_file = d.data_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.data_dir.stat().st_mode) == 0o700
    for sub in d.data_dir.iterdir():
        mode = stat.S_IMODE(sub.stat().st_mode)
        assert mode & 0o077 == 0, f"{sub} is {oct(mode)}"
    for token in (None, "x", d.token[:-1], d.token + "x", d.token.upper(), f"{d.token} "):
        status, body = d.request("GET", "/workflows", token=token)
        if token == f"{d.token} ":  # surrounding blanks are not part of the token
            assert status == 200
            continue
        assert status == 401, (token, status)
    for header in (f"Basic {d.token}", "Bearer ", "Bearer", d.token):
        status, _ = d.request("GET", "/workflows", headers={"Authorization": header},
                              token=None)
        assert status == 401, header
    assert d.request("GET", "/workflows")[0] == 200
    # a loosened token file is tightened again at the next start
    d.stop()
    os.chmod(token_file, 0o644)
    d2 = start_daemon(tmp_path, **CFG)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert d2.token == d.token
    d2.stop()


def test_non_loopback_bind_is_refused_without_allow_remote(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "PROVISIONING_STORAGE_DATA_DIR"}
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        cfg = write_config(tmp_path / "remote.toml", {
            "server": {"host": host, "port": 0}, "storage": {"data_dir": str(tmp_path / "d")}})
        for args in (["--check"], []):
            result = subprocess.run([ORCHESTRATOR, "--config", str(cfg), *args],
                                    capture_output=True, text=True, env=env, timeout=60)
            assert result.returncode == 2, (host, args, result.stdout, result.stderr)
            assert "not a loopback address" in result.stderr and "allow_remote" in result.stderr
    assert not (tmp_path / "d" / "token").exists()  # refused before the token was made
    cfg = write_config(tmp_path / "ok.toml", {
        "server": {"host": "0.0.0.0", "port": 0, "allow_remote": True},
        "storage": {"data_dir": str(tmp_path / "d")}})
    result = subprocess.run([ORCHESTRATOR, "--config", str(cfg), "--check"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr


def test_ops_in_world_writable_extension_dirs_are_refused(tmp_path: Path):
    lib = probe_lib(tmp_path)
    bad = tmp_path / "badlib"
    (bad / "evil").mkdir(parents=True)
    (bad / "evil" / "run.py").write_text("print('hi')\n")
    os.chmod(bad / "evil", 0o777)  # anyone could swap the op
    (bad / "loose").mkdir()
    (bad / "loose" / "run.py").write_text("print('hi')\n")
    os.chmod(bad / "loose" / "run.py", 0o666)
    d = start_daemon(tmp_path, env={"PROVISIONING_LIB": f"{lib}{os.pathsep}{bad}"}, **CFG)
    for op, culprit in (("evil.run", bad / "evil"), ("loose.run", bad / "loose" / "run.py")):
        status, body = d.request("POST", "/workflows", {"tasks": [{"id": "a", "op": op}]})
        assert status == 400, body
        assert "world-writable" in body["error"] and str(culprit) in body["error"], body
    status, listing = d.request("GET", "/workflows")
    assert listing["workflows"] == []  # refused before anything was queued
    d.stop()


def test_tasks_get_a_clean_environment_and_a_token_good_only_for_their_own_progress(
        tmp_path: Path):
    lib = probe_lib(tmp_path)
    secret = "s3cr3t-value-that-must-not-leak"
    d = start_daemon(tmp_path, env={"PROVISIONING_LIB": str(lib), "SECRET_TEST_VAR": secret,
                                    "AWS_SECRET_ACCESS_KEY": secret}, **CFG)
    files = {n: tmp_path / n for n in ("a.json", "b.json", "a.started", "b.started")}
    status, body = d.request("POST", "/workflows", {"tasks": [
        {"id": "a", "op": "probe.env", "params": {
            "out": str(files["a.json"]), "sibling": "b", "started": str(files["a.started"]),
            "sibling_started": str(files["b.started"])}},
        {"id": "b", "op": "probe.env", "params": {
            "out": str(files["b.json"]), "sibling": "a", "started": str(files["b.started"]),
            "sibling_started": str(files["a.started"])}}]})
    assert status == 202, body
    wid = body["workflow_id"]
    view = d.wait_workflow(wid, timeout=60)
    assert view["status"] == "succeeded", [t["error"] for t in view["tasks"]]
    results = {n: json.loads(files[f"{n}.json"].read_text()) for n in ("a", "b")}
    for name, result in results.items():
        env = result["env"]
        dumped = json.dumps(env)
        assert "SECRET_TEST_VAR" not in env and "AWS_SECRET_ACCESS_KEY" not in env
        assert secret not in dumped
        assert d.token not in dumped, "the daemon's API token leaked into a task"
        assert env["PROVISIONING_TASK_ID"] == f"{wid}.{name}"
        assert env["PROVISIONING_TASK_TOKEN"] and env["PROVISIONING_TASK_TOKEN"] != d.token
        unexpected = {k for k in env if not (
            k in ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "PYTHONPATH")
            or k.startswith(("LC_", "PROVISIONING_")))}
        # the interpreter may add a few of its own (e.g. LC_CTYPE coercion); nothing else
        assert unexpected <= {"PWD", "SHLVL", "_"}, unexpected
        # its token: its own progress only
        assert result["own_progress"] == 200
        assert result["other_progress"] == 401
        assert result["read_workflow"] == 401 and result["list"] == 401
        assert result["cancel"] == 401
    assert results["a"]["env"]["PROVISIONING_TASK_TOKEN"] != \
        results["b"]["env"]["PROVISIONING_TASK_TOKEN"]
    # and once the task has finished its token is worth nothing
    stale = results["a"]["env"]["PROVISIONING_TASK_TOKEN"]
    status, _ = d.request("POST", f"/tasks/{wid}.a/progress", {"progress": 1}, token=stale)
    assert status == 401
    wait_for(lambda: d.health() is not None, timeout=10)
    d.stop()
