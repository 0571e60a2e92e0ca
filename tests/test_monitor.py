"""The live monitor: plain lines off a TTY, in-place redraw on a pty, Ctrl-C
detaches, and it survives a daemon restart."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time

from provisioning.cli.monitor import bar, event_line, frame, outcome_line
from tests.conftest import BIN, run_cli
from tests.daemon_fixture import start_daemon
from tests.test_cli_workflow import shell_task
from tests.test_client import cold, submit_id  # noqa: F401 - fixture

PROGRESS_CODE = ("import time\n"
                 "for p in (30, 70):\n"
                 "    print(f'PROGRESS: {p} step {p}', flush=True); time.sleep(0.3)\n")


# -- rendering (pure functions) ---------------------------------------------------------


def _view(**over):
    view = {"workflow_id": "w1", "name": "demo", "status": "running", "created_at": 100.0,
            "started_at": 100.0, "duration_s": None,
            "counts": {"queued": 1, "running": 1, "succeeded": 1, "failed": 0,
                       "cancelled": 0, "skipped": 0},
            "tasks": [{"id": "a", "status": "succeeded", "duration_s": 0.5, "attempts": 1},
                      {"id": "b", "status": "running", "progress": 40, "message": "copying",
                       "attempts": 1},
                      {"id": "c", "status": "queued", "attempts": 0}]}
    view.update(over)
    return view


def test_frame_shows_bar_counts_and_elapsed():
    lines = frame(_view(), width=120, height=40, now=112.5)
    assert "RUNNING" in lines[0] and "elapsed 12.5s" in lines[0]
    assert "done 1" in lines[1] and "pending 1" in lines[1] and "running 1" in lines[1]
    running = next(line for line in lines if " b " in line)
    assert bar(40) in running and "copying" in running
    assert all(len(line) < 120 for line in lines)


def test_frame_fits_a_small_terminal():
    many = [{"id": f"t{i}", "status": "queued"} for i in range(50)]
    many[30]["status"] = "running"
    lines = frame(_view(tasks=many), width=60, height=10)
    assert len(lines) <= 10
    assert any("t30" in line for line in lines)  # running tasks are shown first
    assert "more tasks" in lines[-1]


def test_plain_lines_and_outcome():
    assert event_line({"seq": 3, "ts": 101.5, "type": "progress", "task": "b",
                       "progress": 40, "message": "copying"}, 100.0) == "[   1.5s] b: 40% copying"
    done = _view(status="succeeded", duration_s=2.0,
                 counts={"succeeded": 3, "queued": 0, "running": 0, "failed": 0,
                         "cancelled": 0, "skipped": 0})
    assert outcome_line(done) == ("Workflow w1 succeeded in 2.0s: 3 succeeded, 0 failed, "
                                  "0 skipped, 0 cancelled")


# -- the real CLI -------------------------------------------------------------------------


def test_non_tty_output_is_line_oriented_and_ends_with_outcome(cold):  # noqa: F811
    wf = cold.workflow_file(shell_task("work", PROGRESS_CODE) + shell_task("tail", "pass",
                                                                           ("work",)))
    wid = submit_id(run_cli("workflow", "submit", str(wf)))
    result = run_cli("workflow", "monitor", wid)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "\x1b[" not in result.stdout  # no terminal codes in a pipe
    assert lines[0].startswith(f"Workflow {wid}")
    assert lines[-1].startswith(f"Workflow {wid} succeeded")
    body = lines[1:-1]
    assert body and all(line.startswith("[") for line in body)
    assert any("work: 30% step 30" in line for line in body)
    assert any("work: 70% step 70" in line for line in body)
    assert any("tail: succeeded" in line for line in body)


def test_monitor_json_prints_final_summary(cold):  # noqa: F811
    wid = submit_id(run_cli("workflow", "submit", str(cold.workflow_file())))
    result = run_cli("--json", "workflow", "monitor", wid)
    assert result.returncode == 0
    doc = json.loads(result.stdout)
    assert doc["workflow_id"] == wid and doc["status"] == "succeeded"
    assert doc["counts"]["succeeded"] == 2
    assert "succeeded" in result.stderr  # the live view went to stderr


def _read_pty(master: int, proc: subprocess.Popen, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_tty_redraws_in_place(cold):  # noqa: F811
    wf = cold.workflow_file(shell_task("work", PROGRESS_CODE + "time.sleep(1.2)\n"))
    wid = submit_id(run_cli("workflow", "submit", str(wf)))
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100", "LINES": "30"}
    proc = subprocess.Popen([str(BIN / "provisioning"), "workflow", "monitor", wid],
                            stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    try:
        out = _read_pty(master, proc, timeout=60).decode(errors="replace")
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert "\x1b[?25l" in out and "\x1b[?25h" in out  # cursor hidden, then restored
    assert "\x1b[2K" in out  # lines cleared before redraw
    redraws = out.count("F\x1b[2K")  # cursor moved up to the block's first line
    assert redraws >= 2, out
    assert "[####" in out  # a progress bar was drawn
    assert f"Workflow {wid} succeeded" in out


def test_ctrl_c_detaches_and_leaves_the_workflow_running(cold):  # noqa: F811
    wf = cold.workflow_file(shell_task("slow", "import time; time.sleep(60)"))
    wid = submit_id(run_cli("workflow", "submit", str(wf)))
    proc = subprocess.Popen([str(BIN / "provisioning"), "workflow", "monitor", wid],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    # plain mode: wait for the task to be reported running, then interrupt
    for line in proc.stdout:
        if "slow: running" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert f"provisioning workflow monitor {wid}" in out + err
    view = json.loads(run_cli("--json", "workflow", "status", wid).stdout)
    assert view["status"] == "running"
    assert run_cli("workflow", "cancel", wid).returncode == 0


def test_monitor_reconnects_across_a_daemon_restart(cold, tmp_path):  # noqa: F811
    daemon = start_daemon(tmp_path, server={"port": cold.port})
    marker = tmp_path / "release"
    code = ("import os, time\n"
            f"while not os.path.exists({str(marker)!r}): time.sleep(0.05)\n")
    wf = cold.workflow_file(shell_task("gate", code) + shell_task("after", "pass", ("gate",)))
    wid = submit_id(run_cli("workflow", "submit", str(wf)))
    proc = subprocess.Popen([str(BIN / "provisioning"), "workflow", "monitor", wid],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "gate: running" in line:
                break
        daemon.kill()  # SIGKILL: the monitor loses its connection
        marker.write_text("go")
        daemon = start_daemon(tmp_path, server={"port": cold.port})
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        daemon.stop()
    assert proc.returncode == 0, err
    assert "connection lost" in out and "reconnected" in out
    assert out.splitlines()[-1].startswith(f"Workflow {wid} succeeded")


def test_logs_follow_prints_output_until_the_end(cold):  # noqa: F811
    code = ("import time\n"
            "for i in range(3):\n"
            "    print(f'line {i}', flush=True); time.sleep(0.3)\n")
    wf = cold.workflow_file(shell_task("talk", code))
    wid = submit_id(run_cli("workflow", "submit", str(wf)))
    result = run_cli("workflow", "logs", wid, "--follow", timeout=60)
    assert result.returncode == 0, result.stderr
    assert [ln for ln in result.stdout.splitlines() if ln.startswith("line ")] == [
        "line 0", "line 1", "line 2"]
    status = json.loads(run_cli("--json", "workflow", "status", wid).stdout)
    assert status["status"] == "succeeded"


def test_direct_mode_uses_the_same_renderer(cold):  # noqa: F811
    wf = cold.workflow_file(shell_task("work", PROGRESS_CODE))
    result = run_cli("--direct", "workflow", "submit", str(wf))
    assert result.returncode == 0, result.stderr
    assert any("work: 70% step 70" in line for line in result.stdout.splitlines())
    assert result.stdout.splitlines()[-1].split()[2] == "succeeded"
