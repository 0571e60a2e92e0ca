"""`workflow`, `batch` and `orchestrator` groups through the real CLI and a real daemon."""

from __future__ import annotations

import json
import sys

from tests.conftest import run_cli
from tests.test_client import cold, daemon_processes, submit_id  # noqa: F401 - fixture

PY = sys.executable


def _toml_list(items: list[str]) -> str:
    return json.dumps(items)


def shell_task(task_id: str, code: str, depends_on: tuple[str, ...] = ()) -> str:
    deps = f"depends_on = {_toml_list(list(depends_on))}\n" if depends_on else ""
    return (f'[[tasks]]\nid = "{task_id}"\nop = "shell.run"\n{deps}'
            f"params = {{ argv = {_toml_list([PY, '-c', code])} }}\n\n")


def test_submit_wait_status_list_logs(cold):  # noqa: F811
    wf = cold.workflow_file('[workflow]\nname = "greet"\n\n'
                            + shell_task("hello", "print('hello out there')")
                            + shell_task("bye", "print('bye now')", ("hello",)))
    result = run_cli("workflow", "submit", str(wf), "--wait")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    wid = lines[0].split(": ", 1)[1]
    assert lines[0] == f"Workflow submitted: {wid}"
    assert lines[-1].startswith(f"Workflow {wid} succeeded")

    status = json.loads(run_cli("--json", "workflow", "status", wid).stdout)
    assert status["workflow_id"] == wid and status["status"] == "succeeded"
    assert [t["id"] for t in status["tasks"]] == ["hello", "bye"]
    assert {"key", "status", "progress", "attempts", "duration_s"} <= set(status["tasks"][0])
    text = run_cli("workflow", "status", wid).stdout
    assert "hello" in text and "succeeded" in text

    listed = json.loads(run_cli("--json", "workflow", "list").stdout)
    assert [w["workflow_id"] for w in listed] == [wid]
    assert json.loads(run_cli("workflow", "list", "--status", "failed", "--json").stdout) == []
    assert wid in run_cli("workflow", "list").stdout

    logs = run_cli("workflow", "logs", wid)
    assert logs.returncode == 0
    assert "==> task hello (succeeded) <==" in logs.stdout
    assert "hello out there" in logs.stdout and "bye now" in logs.stdout
    one = run_cli("workflow", "logs", wid, "--task", "bye")
    assert "bye now" in one.stdout and "hello out there" not in one.stdout
    doc = json.loads(run_cli("--json", "workflow", "logs", wid, "--task", "hello").stdout)
    assert doc["workflow_id"] == wid and "hello out there" in doc["tasks"][0]["log"]
    missing = run_cli("workflow", "logs", wid, "--task", "nope")
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_failure_then_retry_reruns_only_the_failed_task(cold):  # noqa: F811
    marker = cold.tmp / "fixed"
    wf = cold.workflow_file(
        shell_task("first", "print('first ran')")
        + shell_task("flaky", f"import os,sys; sys.exit(0 if os.path.exists({str(marker)!r}) "
                              "else 3)", ("first",))
        + shell_task("after", "pass", ("flaky",)))
    result = run_cli("workflow", "submit", str(wf), "--wait")
    wid = submit_id(result, code=1)
    assert " failed in " in result.stdout.splitlines()[-1]
    view = json.loads(run_cli("--json", "workflow", "status", wid).stdout)
    states = {t["id"]: t["status"] for t in view["tasks"]}
    assert states == {"first": "succeeded", "flaky": "failed", "after": "skipped"}

    marker.write_text("ok")
    retried = run_cli("workflow", "retry", wid, "--wait")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.splitlines()[-1].startswith(f"Workflow {wid} succeeded")
    view = json.loads(run_cli("--json", "workflow", "status", wid).stdout)
    attempts = {t["id"]: t["attempts"] for t in view["tasks"]}
    assert attempts["first"] == 1  # completed tasks never run again
    assert attempts["flaky"] >= 2


def test_cancel_then_monitor_exits_1(cold):  # noqa: F811
    wf = cold.workflow_file(shell_task("slow", "import time; time.sleep(60)")
                            + shell_task("later", "pass", ("slow",)))
    wid = submit_id(run_cli("workflow", "submit", str(wf)))
    cancelled = run_cli("--json", "workflow", "cancel", wid)
    assert cancelled.returncode == 0, cancelled.stderr
    monitor = run_cli("workflow", "monitor", wid)
    assert monitor.returncode == 1
    assert monitor.stdout.splitlines()[-1].startswith(f"Workflow {wid} cancelled")
    again = run_cli("workflow", "cancel", wid)
    assert again.returncode in (0, 2)  # already finished: no-op or a clear conflict


def test_unknown_workflow_is_exit_2(cold):  # noqa: F811
    result = run_cli("workflow", "status", "00000000-0000-4000-8000-000000000000")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("error:")


def test_batch_group_is_the_same_engine_with_kind_batch(cold):  # noqa: F811
    wid_w = submit_id(run_cli("workflow", "submit", str(cold.workflow_file())))
    result = run_cli("batch", "submit", str(cold.workflow_file()), "--wait")
    assert result.returncode == 0, result.stderr
    wid_b = result.stdout.splitlines()[0].split(": ", 1)[1]
    batches = json.loads(run_cli("--json", "batch", "list").stdout)
    assert [b["workflow_id"] for b in batches] == [wid_b]
    assert batches[0]["kind"] == "batch"
    assert json.loads(run_cli("--json", "batch", "status", wid_b).stdout)["kind"] == "batch"
    assert run_cli("batch", "monitor", wid_b).returncode == 0
    everything = {w["workflow_id"] for w in json.loads(run_cli("--json", "workflow",
                                                               "list").stdout)}
    assert {wid_w, wid_b} <= everything


def test_direct_submit_runs_in_process_without_a_daemon(cold):  # noqa: F811
    result = run_cli("--direct", "workflow", "submit", str(cold.workflow_file()))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split()[2] == "succeeded"
    assert "Workflow submitted" not in result.stdout
    assert daemon_processes(cold.data_dir) == []


def test_orchestrator_lifecycle_commands(cold):  # noqa: F811
    down = run_cli("orchestrator", "status")
    assert down.returncode == 3 and "not running" in down.stdout
    assert run_cli("orchestrator", "health").returncode == 3

    started = json.loads(run_cli("--json", "orchestrator", "start").stdout)
    assert started["started"] is True and started["running"] is True
    assert [p.pid for p in daemon_processes(cold.data_dir)] == [started["pid"]]
    again = json.loads(run_cli("--json", "orchestrator", "start").stdout)
    assert again["started"] is False and again["pid"] == started["pid"]

    status = json.loads(run_cli("--json", "orchestrator", "status").stdout)
    assert status["running"] is True and status["health"]["pid"] == started["pid"]
    health = json.loads(run_cli("--json", "orchestrator", "health").stdout)
    assert health["compatible"] is True and health["status"] == "healthy"

    logs = run_cli("orchestrator", "logs", "-n", "20")
    assert logs.returncode == 0 and "listening" in logs.stdout
    doc = json.loads(run_cli("--json", "orchestrator", "logs", "-n", "3").stdout)
    assert doc["path"].endswith("orchestrator.log") and 0 < len(doc["lines"]) <= 3

    restarted = json.loads(run_cli("--json", "orchestrator", "restart").stdout)
    assert restarted["was_running"] is True and restarted["pid"] != started["pid"]
    assert len(daemon_processes(cold.data_dir)) == 1

    stopped = json.loads(run_cli("--json", "orchestrator", "stop").stdout)
    assert stopped["stopped"] is True and stopped["was_running"] is True
    assert daemon_processes(cold.data_dir) == []
    assert run_cli("orchestrator", "status").returncode == 3
