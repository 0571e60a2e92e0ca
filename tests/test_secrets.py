"""Secrets never reach a log, event, record, `config show`, API answer or argv (DESIGN.md 11).

The end-to-end test plants three secrets in a real daemon run: one in the
daemon's environment (AWS_SECRET_ACCESS_KEY) that a task prints after reading
it from a credentials file, the task's own PROVISIONING_TASK_TOKEN, and one
the task declares with `SECRET: <value>` and then prints in its log, in a
PROGRESS message and in its RESULT. Then every file under the data dir and
every API answer about the workflow is searched for each of them.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import sys
from pathlib import Path

import psutil
import pytest

from provisioning.errors import ProvisioningError
from provisioning.ops import installs, servers, tscontext
from provisioning.ops.infra import load_infra
from provisioning.ops.redact import StreamRedactor, redact_config, secret_values
from provisioning.ops.state import StateStore
from tests.conftest import run_cli, wait_for
from tests.daemon_fixture import start_daemon
from tests.test_taskservs import Recorder


def test_stream_redactor_finds_a_secret_split_between_reads_and_learns_declarations():
    r = StreamRedactor(["hunter2-pass"])
    out = r.feed(b"one hunt") + r.feed(b"er2-pass two\nSECRET: tok-")
    out += r.feed(b"9876\nnow tok-9876 and hunter2-pass\npartial tok-98") + r.flush()
    assert out == (b"one *** two\nSECRET: ***\nnow *** and ***\npartial tok-98")


def test_short_values_and_harmless_names_are_left_alone():
    env = {"GITHUB_TOKEN": "ghp_abcdef", "DB_PASSWORD": "pw1", "HOME": "/root",
           "UPCLOUD_PASSWORD": "up-cloud-pw", "MY_API_KEY": "k-12345"}
    assert secret_values(env) == {"ghp_abcdef", "up-cloud-pw", "k-12345"}


def test_config_trees_mask_secret_keys_and_url_passwords():
    cfg = {"storage": {"dsn": "postgresql://app:s3cr3t@db:5432/p", "password": "x1",
                       "backend": "postgres"}, "cloud": {"api_token": "", "port": 5}}
    assert redact_config(cfg) == {
        "storage": {"dsn": "postgresql://app:***@db:5432/p", "password": "***",
                    "backend": "postgres"}, "cloud": {"api_token": "", "port": 5}}


TASK = r"""
echo "$$" > "$PIDFILE"
i=0
while [ ! -e "$GO" ] && [ "$i" -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
echo "aws key: $(cat "$CREDS")"
echo "my token: $PROVISIONING_TASK_TOKEN"
declared=$(cat "$DECLARED")
echo "SECRET: $declared"
echo "PROGRESS: 50 connecting with $declared"
echo "stderr says $declared" >&2
"$PY" -c "$POST" "$declared"
printf 'RESULT: {"key": "%s"}\n' "$declared"
"""

POST = """
import json, os, sys, urllib.request
body = json.dumps({"progress": 70, "message": "posted " + sys.argv[1]}).encode()
req = urllib.request.Request(
    os.environ["PROVISIONING_ENDPOINT"] + "/tasks/" + os.environ["PROVISIONING_TASK_ID"]
    + "/progress", data=body, method="POST", headers={
        "Authorization": "Bearer " + os.environ["PROVISIONING_TASK_TOKEN"],
        "Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=10).read()
"""


@pytest.fixture
def planted(tmp_path, isolated):
    s = {"aws": "AKIAsecret" + secrets.token_hex(8), "declared": "decl-" + secrets.token_hex(8),
         "url": "urlpw" + secrets.token_hex(6)}
    (tmp_path / "creds").write_text(s["aws"])
    (tmp_path / "declared").write_text(s["declared"])
    return s


def _all_files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_socket()}


def _task_processes(pidfile: Path) -> list[int]:
    top = psutil.Process(int(pidfile.read_text()))
    return [top.pid, *(c.pid for c in top.children(recursive=True))]


def test_planted_secrets_are_nowhere(tmp_path, planted, isolated):
    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    d = start_daemon(tmp_path, env={"AWS_SECRET_ACCESS_KEY": planted["aws"]})
    try:
        pidfile, go = tmp_path / "task.pid", tmp_path / "go"
        spec = {"tasks": [{"id": "leaky", "op": "shell.run", "params": {
            "argv": ["sh", "-c", TASK],
            "env": {"PIDFILE": str(pidfile), "GO": str(go), "CREDS": str(tmp_path / "creds"),
                    "PY": sys.executable, "POST": POST,
                    "DECLARED": str(tmp_path / "declared")}}}]}
        status, body = d.request("POST", "/workflows", spec)
        assert status == 202, body
        wid = body["workflow_id"]
        wait_for(lambda: pidfile.is_file() and pidfile.read_text().strip(), timeout=30,
                 what="the task to start")
        token = None
        for pid in _task_processes(pidfile):  # argv holds no secret; environ is the owner's
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert planted["aws"].encode() not in cmdline
            assert planted["declared"].encode() not in cmdline
            mode = os.stat(f"/proc/{pid}/environ").st_mode
            assert not mode & (stat.S_IRGRP | stat.S_IROTH)
            environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text()
                           .split("\0") if "=" in kv)
            token = token or environ.get("PROVISIONING_TASK_TOKEN")
            assert "AWS_SECRET_ACCESS_KEY" not in environ  # not handed down to tasks
        assert token and len(token) > 20
        go.write_text("go")
        wf = d.wait_workflow(wid)
        assert wf["status"] == "succeeded", wf

        [task] = wf["tasks"]
        answers = [wf, d.request("GET", f"/workflows/{wid}")[1],
                   d.request("GET", f"/workflows/{wid}/events?after=0&timeout=0")[1],
                   d.request("GET", f"/tasks/{task['key']}")[1],
                   d.request("GET", f"/tasks/{task['key']}/log")[1],
                   d.request("GET", "/workflows")[1]]
        text = "\n".join(a if isinstance(a, str) else json.dumps(a) for a in answers)
        assert "aws key: ***" in text and "my token: ***" in text  # the lines are there
        assert "connecting with ***" in text and '"key": "***"' in text
        assert "posted ***" in text  # a progress message the task POSTed
        env = {**d.env, "PROVISIONING_ORCHESTRATOR_ENDPOINT":
               f"http://admin:{planted['url']}@localhost:{d.port}"}
        shown = run_cli("--config", str(d.config_file), "config", "show", env=env)
        assert shown.returncode == 0, shown.stderr
        assert "admin:***@localhost" in shown.stdout
        shown_json = run_cli("--config", str(d.config_file), "--json", "config", "show", env=env)
        text += shown.stdout + shown.stderr + shown_json.stdout
    finally:
        d.stop()
    files = _all_files(data)
    assert any(p.name.endswith(".log") for p in files)
    for name, value in [*planted.items(), ("task token", token)]:
        assert value not in text, f"{name} in an API answer or config show"
        leaks = [str(p) for p, content in files.items() if value.encode() in content]
        assert not leaks, f"{name} found in {leaks}"


def test_a_failing_install_keeps_env_secrets_out_of_its_state_record(tmp_path, monkeypatch):
    secret = "pw-" + secrets.token_hex(8)
    monkeypatch.setenv("DEPLOY_PASSWORD", secret)  # what the op process was given
    (tmp_path / "creds").write_text(secret)
    ws = tmp_path / "ws"
    ts = ws / "taskservs" / "leaky"
    ts.mkdir(parents=True)
    (ts / "taskserv.toml").write_text(f'[defaults]\ncreds = "{tmp_path / "creds"}"\n')
    (ts / "install").write_text('#!/bin/sh\necho "login with $(cat "$PROVISIONING_VALUE_CREDS")"\n'
                                'echo "refused: $(cat "$PROVISIONING_VALUE_CREDS")" >&2\nexit 3\n')
    (ts / "install").chmod(0o755)
    (ws / "infra" / "x").mkdir(parents=True)
    (ws / "infra" / "x" / "settings.toml").write_text(
        '[infra]\nname = "x"\nprovider = "local"\n[[servers]]\nhostname = "h1"\n'
        'taskservs = ["leaky"]\n')
    infra = load_infra(ws / "infra" / "x")
    r = Recorder()
    servers.create(infra, "h1", r)
    with pytest.raises(ProvisioningError, match=r"failed \(exit 3\): refused: \*\*\*") as e:
        installs.install(infra, "h1", "leaky", r)
    record = StateStore().taskserv("x", "h1", "leaky")
    assert record["status"] == "failed"
    assert secret not in json.dumps(record) and secret not in e.value.message
    assert "[leaky install] login with ***" in r.lines and secret not in "\n".join(r.lines)


def test_secret_named_values_reach_scripts_on_stdin_only():
    ctx = {"hostname": "h", "address": "127.0.0.2", "root": "/", "infra": "i", "taskserv": "t",
           "dir": "/opt/provisioning/taskservs/t", "ports": {"http": 80},
           "values": {"title": "x", "admin_password": "pw-123456", "workers": 2}}
    env = tscontext.script_env(ctx, python="python3")
    assert env["PROVISIONING_VALUE_TITLE"] == "x" and env["PROVISIONING_VALUE_WORKERS"] == "2"
    assert "pw-123456" not in env.values()
    assert tscontext.script_context(ctx)["values"]["admin_password"] == "pw-123456"
