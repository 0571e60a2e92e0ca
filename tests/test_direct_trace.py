"""A direct run leaves a findable trace: the id it prints answers `workflow
status|logs|monitor`, from <data_dir>/direct/ alone, with the daemon down and
with it up (cli/direct.py). Real CLI runs in direct mode, a real daemon."""

from __future__ import annotations

import json
import os
import re
import stat
import time

from tests.conftest import REPO, run_cli
from tests.test_client import cold, daemon_processes, submit_id  # noqa: F401 - fixture

TWO_TASKS = """\
[workflow]
name = "speak-then-fail"

[[tasks]]
id = "hello"
op = "shell.run"
params = { argv = ["echo", "hello from a direct run"] }

[[tasks]]
id = "boom"
op = "shell.run"
params = { argv = ["false"] }
depends_on = ["hello"]
"""

HEADER = re.compile(r"^Workflow ([0-9a-f-]{36}) \(")


def _direct_run(cold) -> str:  # noqa: F811
    """A failing direct run through the real CLI; its printed id."""
    result = run_cli("--direct", "--json", "workflow", "submit", str(cold.workflow_file(TWO_TASKS)))
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["mode"] == "direct" and doc["status"] == "failed"
    return doc["workflow_id"]


def _assert_found(wid: str) -> None:
    status = run_cli("--json", "workflow", "status", wid)
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["workflow_id"] == wid and view["status"] == "failed"
    assert view["mode"] == "direct"
    assert {t["id"]: t["status"] for t in view["tasks"]} == {"hello": "succeeded",
                                                             "boom": "failed"}
    text = run_cli("workflow", "status", wid)
    assert text.returncode == 0, text.stderr
    assert "mode      direct" in text.stdout and "boom" in text.stdout

    logs = run_cli("workflow", "logs", wid, "--task", "hello")
    assert logs.returncode == 0, logs.stderr
    assert "hello from a direct run" in logs.stdout
    every = run_cli("--json", "workflow", "logs", wid)
    assert {t["id"] for t in json.loads(every.stdout)["tasks"]} == {"hello", "boom"}

    monitor = run_cli("workflow", "monitor", wid)  # a finished run: its outcome, exit 1
    assert monitor.returncode == 1, monitor.stderr
    assert monitor.stdout.splitlines()[-1].startswith(f"Workflow {wid} failed")


def test_direct_run_is_found_with_no_daemon(cold, monkeypatch):  # noqa: F811
    # auto-start off and no fallback: any contact with a daemon would be exit 3
    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_AUTO_START", "false")
    monkeypatch.setenv("PROVISIONING_ORCHESTRATOR_FALLBACK_TO_DIRECT", "false")
    wid = _direct_run(cold)
    trace = cold.data_dir / "direct" / "workflows" / f"{wid}.json"
    assert stat.S_IMODE(trace.stat().st_mode) == 0o600
    assert not list(trace.parent.glob(".*.tmp"))  # written atomically: no temp file left
    _assert_found(wid)
    assert daemon_processes(cold.data_dir) == []
    # an id nobody printed still goes to the daemon, which is down: exit 3, not a guess
    assert run_cli("workflow", "status", "3f2b8c1e-0d4a-4e1b-9c7d-2a6f5e4d3c2b").returncode == 3


def test_direct_run_is_found_with_the_daemon_up(cold):  # noqa: F811
    wid = _direct_run(cold)
    started = run_cli("orchestrator", "start")
    assert started.returncode == 0, started.stderr
    assert len(daemon_processes(cold.data_dir)) == 1
    _assert_found(wid)
    # the daemon's queue never had it: `workflow list` is the daemon's queue
    listed = run_cli("--json", "workflow", "list")
    assert wid not in {w["workflow_id"] for w in json.loads(listed.stdout)}
    # while a daemon's own workflow is still answered by the daemon
    own = submit_id(run_cli("--orchestrated", "workflow", "submit", str(cold.workflow_file())))
    assert run_cli("workflow", "monitor", own).returncode == 0


def test_server_delete_in_auto_mode_prints_an_id_that_status_finds(cold):  # noqa: F811
    # auto mode, one task -> direct (README "Mode decision order"); a missing server
    # is a no-op that succeeds
    infra = str(REPO / "examples" / "infra" / "demo")
    result = run_cli("server", "delete", "no-such-host", "--infra", infra)
    assert result.returncode == 0, result.stderr
    ids = [m.group(1) for m in map(HEADER.match, result.stdout.splitlines()) if m]
    assert len(ids) == 1, result.stdout
    status = run_cli("--json", "workflow", "status", ids[0])
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "succeeded"
    assert daemon_processes(cold.data_dir) == []


def test_cancel_or_retry_of_a_direct_run_says_why_not(cold):  # noqa: F811
    wid = _direct_run(cold)
    for verb in ("cancel", "retry"):
        result = run_cli("workflow", verb, wid)
        assert result.returncode == 2
        assert f"was a direct run, finished failed: there is nothing to {verb}" in result.stderr
        assert "Traceback" not in result.stderr
    assert daemon_processes(cold.data_dir) == []


def test_traces_older_than_a_week_go_with_the_next_direct_run(cold):  # noqa: F811
    old = _direct_run(cold)
    trace = cold.data_dir / "direct" / "workflows" / f"{old}.json"
    logs = cold.data_dir / "direct" / "logs" / old
    week_ago = time.time() - 8 * 86400
    os.utime(trace, (week_ago, week_ago))
    os.utime(logs, (week_ago, week_ago))
    new = _direct_run(cold)
    assert not trace.exists() and not logs.exists()
    assert (cold.data_dir / "direct" / "workflows" / f"{new}.json").is_file()


def test_a_damaged_trace_is_a_clear_error(cold):  # noqa: F811
    wid = _direct_run(cold)
    (cold.data_dir / "direct" / "workflows" / f"{wid}.json").write_text("{not json")
    result = run_cli("workflow", "status", wid)
    assert result.returncode == 1
    assert "unreadable trace of a direct run" in result.stderr
    assert "Traceback" not in result.stderr
