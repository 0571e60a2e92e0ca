"""The task executor: real subprocesses, real output volumes, real kills.

Every test runs twice: the task's Python code as a plain spawn, and as a Python op
forked from a real zygote (engine/zygote.py), which must not differ in any way a
task can tell."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import psutil
import pytest

from provisioning.engine import zygote as zygote_mod
from provisioning.engine.executor import TaskProcess, TaskRun, clean_env
from provisioning.engine.proctree import kill_tree
from tests.conftest import wait_for

LAUNCH: dict[str, object] = {"zygote": None}


@pytest.fixture(scope="module")
def module_zygote():
    if not zygote_mod.supported():
        yield None
        return
    z = zygote_mod.Zygote(env=clean_env({}), settings=zygote_mod.ZygoteSettings(True, ()))
    z.start()
    assert z.started.wait(60) and z.pid is not None
    yield z
    z.close()


@pytest.fixture(autouse=True, params=["spawn", "zygote"])
def launch(request, module_zygote):
    if request.param == "zygote":
        if module_zygote is None:
            pytest.skip("the Python zygote needs Linux (pidfd, SCM_RIGHTS)")
        LAUNCH["zygote"] = module_zygote
    yield request.param
    LAUNCH["zygote"] = None


def _run(tmp_path: Path, code: str, *, params=None, timeout_s: float = 30, grace: float = 1,
         env_extra=None, name="t") -> tuple[TaskProcess, dict]:
    key = f"00000000-0000-4000-8000-000000000000.{name}{os.getpid()}"
    script = tmp_path / f"{name}_op.py"  # a Python op, as the registry resolves one
    script.write_text(code)
    run = TaskRun(key=key, argv=[sys.executable, str(script)], params=params or {},
                  env=clean_env({"PROVISIONING_TASK_ID": key, **(env_extra or {})}),
                  log_path=tmp_path / f"{name}.log", attempt=1, timeout_s=timeout_s,
                  kill_grace_s=grace)
    progress: list[tuple[int, str | None]] = []
    proc = TaskProcess(run, on_progress=lambda p, m: progress.append((p, m)),
                       zygote=LAUNCH["zygote"])
    return proc, {"progress": progress, "log": run.log_path}


def test_the_zygote_runs_the_op(tmp_path: Path, launch: str):
    code = "import os, sys; print('RESULT: ' + str(os.getppid()))"
    proc, seen = _run(tmp_path, code)
    out = proc.run()
    forked = "[forked from the Python zygote]" in seen["log"].read_text()
    assert forked == (launch == "zygote")
    if launch == "zygote":
        assert out.result == LAUNCH["zygote"].pid
    else:
        assert out.result == os.getpid()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_params_on_stdin_progress_result_and_log(tmp_path: Path):
    code = r"""
import json, sys
p = json.load(sys.stdin)
print("hello log")
print("PROGRESS: 10 starting up", flush=True)
print("PROGRESS: 250")
print("PROGRESS: nonsense")
print("RESULT: {\"early\": 1}")
print("RESULT: " + json.dumps({"echo": p}))
"""
    nasty = {"cmd": "$(rm -rf /); `id` && echo hi | cat; 'q' \"dq\"", "n": [1, None]}
    proc, seen = _run(tmp_path, code, params=nasty)
    out = proc.run()
    assert out.succeeded and out.exit_code == 0 and out.signal is None
    assert out.result == {"echo": nasty}  # params arrive verbatim, last RESULT wins
    assert seen["progress"] == [(10, "starting up"), (100, None)]
    log = seen["log"].read_text()
    assert log.startswith("=== attempt 1 started") and "hello log" in log
    assert "=== attempt 1 ended: exit code 0" in log
    # a second attempt appends to the same log
    proc2, _ = _run(tmp_path, "print('second')")
    proc2.run()
    assert seen["log"].read_text().count("=== attempt 1 started") == 2


def test_invalid_result_json_is_logged_not_fatal(tmp_path: Path):
    proc, seen = _run(tmp_path, "print('RESULT: {nope')")
    out = proc.run()
    assert out.succeeded and out.result is None
    assert "RESULT line is not valid JSON" in seen["log"].read_text()


def test_exit_code_and_signal_are_recorded(tmp_path: Path):
    out = _run(tmp_path, "import sys; sys.exit(3)")[0].run()
    assert out.exit_code == 3 and out.signal is None and not out.succeeded
    out = _run(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")[0].run()
    assert out.signal == signal.SIGKILL and out.exit_code is None and not out.succeeded


def test_missing_program_fails_cleanly(tmp_path: Path):
    run = TaskRun(key="k", argv=[str(tmp_path / "nope")], params={}, env=clean_env({}),
                  log_path=tmp_path / "x.log", attempt=1, timeout_s=5, kill_grace_s=1)
    out = TaskProcess(run, on_progress=lambda p, m: None).run()
    assert not out.succeeded and "cannot start" in out.error


def test_environment_is_cleaned_and_package_importable(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    code = ("import json, os, provisioning; "
            "print('RESULT: ' + json.dumps(dict(os.environ)))")
    proc, _ = _run(tmp_path, code, env_extra={"PROVISIONING_CHECKPOINT": "/x"})
    monkeypatch.chdir("/")  # the package must import through PYTHONPATH, not the cwd
    env = proc.run().result
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["LC_ALL"] == "C.UTF-8" and env["PROVISIONING_CHECKPOINT"] == "/x"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(__file__).resolve().parents[1])


@pytest.mark.slow
def test_50_mb_of_output_does_not_deadlock(tmp_path: Path):
    code = r"""
import sys
line = b"x" * 1023 + b"\n"
block = line * 1024
out = sys.stdout.buffer
for i in range(50):
    out.write(block)
    out.write(b"PROGRESS: %d chunk\n" % (i * 2))
out.write(b'RESULT: {"mb": 50}\n')
"""
    proc, seen = _run(tmp_path, code, timeout_s=120)
    out = proc.run()
    assert out.succeeded and out.result == {"mb": 50}
    assert seen["log"].stat().st_size > 50 * 1024 * 1024
    assert seen["progress"][-1] == (98, "chunk") and len(seen["progress"]) == 50


def test_timeout_kills_a_setsid_grandchild_that_would_outlive_its_parent(tmp_path: Path):
    pidfile = tmp_path / "grandchild.pid"
    code = f"""
import subprocess, sys, time
# The grandchild leaves the task's session and ignores SIGTERM: only the sweep gets it.
g = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"],
    start_new_session=True, stdout=subprocess.DEVNULL)
open({str(pidfile)!r}, "w").write(str(g.pid))
print("PROGRESS: 5 spawned", flush=True)
time.sleep(120)
"""
    proc, seen = _run(tmp_path, code, timeout_s=3, grace=1)
    out = proc.run()
    assert out.timed_out and not out.succeeded
    assert out.error == "timeout after 3s"
    assert out.signal in (signal.SIGTERM, signal.SIGKILL)
    grandchild = int(pidfile.read_text())
    wait_for(lambda: _gone(grandchild), timeout=15, what="grandchild to be killed")
    assert "timeout after 3s: stopping the process tree" in seen["log"].read_text()


def test_timeout_sweeps_an_orphan_holding_nothing(tmp_path: Path):
    """The parent dies first; the setsid'd orphan is found by its marker only."""
    pidfile = tmp_path / "orphan.pid"
    code = f"""
import os, subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
open({str(pidfile)!r}, "w").write(str(g.pid))
sys.stdout.flush()
os.close(1); os.close(2)   # EOF for the executor while we keep running
time.sleep(120)
"""
    proc, _ = _run(tmp_path, code, timeout_s=3, grace=1, name="orphan")
    out = proc.run()
    assert out.timed_out
    orphan = int(pidfile.read_text())
    wait_for(lambda: _gone(orphan), timeout=15, what="orphan to be killed")


def test_a_runs_kill_spares_another_run_of_the_same_task_which_recovery_kills(
        tmp_path: Path, launch: str):
    """Two runs of one task key at once (a daemon whose lease ran out, and the one that
    took its workflow over, on one host): a run's timeout kills its own orphan, never
    the other run's; recovery's kill_tree takes every run of the key."""
    code = """
import json, subprocess, sys, time
pidfile = json.load(sys.stdin)["pidfile"]
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
open(pidfile, "w").write(str(g.pid))
time.sleep(120)
"""
    first, _ = _run(tmp_path, code, timeout_s=3, grace=1, name="same",
                    params={"pidfile": str(tmp_path / "first.pid")})
    second, _ = _run(tmp_path, code, timeout_s=60, grace=1, name="same",
                     params={"pidfile": str(tmp_path / "second.pid")})
    assert first.spec.key == second.spec.key and first.spec.run_marker != second.spec.run_marker
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("out", second.run()))
    t.start()
    wait_for((tmp_path / "second.pid").exists, timeout=30, what="the second run's orphan")
    assert first.run().timed_out
    wait_for(lambda: _gone(int((tmp_path / "first.pid").read_text())), timeout=15,
             what="the first run's orphan to be killed")
    others = [int((tmp_path / "second.pid").read_text()), second.pid]
    assert not any(_gone(pid) for pid in others)  # the other run: untouched
    kill_tree(None, None, second.spec.key, 1)  # recovery: every run of the key
    t.join(30)
    assert not t.is_alive() and not result["out"].succeeded
    wait_for(lambda: all(_gone(pid) for pid in others), timeout=15,
             what="the second run's processes to be killed by recovery")


def test_stop_from_another_thread_kills_the_tree(tmp_path: Path):
    started = tmp_path / "started"
    code = f"import time; open({str(started)!r}, 'w').close(); time.sleep(120)"
    proc, _ = _run(tmp_path, code, timeout_s=60, grace=1)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("out", proc.run()))
    t.start()
    wait_for(started.exists, timeout=15, what="task start")
    pid = proc.pid
    proc.stop("cancelled")
    t.join(30)
    assert not t.is_alive()
    out = result["out"]
    assert out.stop_reason == "cancelled" and not out.timed_out and not out.succeeded
    assert _gone(pid)
    proc.stop("cancelled")  # after the run: harmless


def test_leftovers_in_the_group_are_stopped_after_a_normal_exit(tmp_path: Path):
    pidfile = tmp_path / "bg.pid"
    code = f"""
import subprocess, sys
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open({str(pidfile)!r}, "w").write(str(g.pid))
print('RESULT: 1')
"""
    out = _run(tmp_path, code, timeout_s=60)[0].run()
    assert out.succeeded and out.result == 1
    wait_for(lambda: _gone(int(pidfile.read_text())), timeout=15, what="leftover killed")


def test_big_params_do_not_block_a_task_that_never_reads_them(tmp_path: Path):
    out = _run(tmp_path, "print('RESULT: 2')", params={"blob": "y" * 500_000})[0].run()
    assert out.succeeded and out.result == 2
    code = "import json, sys; print('RESULT: ' + json.dumps(len(json.load(sys.stdin)['blob'])))"
    out = _run(tmp_path, code, params={"blob": "y" * 500_000})[0].run()
    assert out.result == 500_000
    assert json.dumps  # keep import used


def test_an_uncaught_exception_or_exit_message_is_logged_and_exits_1(tmp_path: Path):
    proc, seen = _run(tmp_path, "def f():\n    raise RuntimeError('boom')\nf()\n")
    out = proc.run()
    assert out.exit_code == 1 and not out.succeeded
    log = seen["log"].read_text()
    assert "Traceback (most recent call last)" in log and "RuntimeError: boom" in log
    proc, seen = _run(tmp_path, "import sys; sys.exit('bad thing')", name="msg")
    out = proc.run()
    assert out.exit_code == 1 and "bad thing" in seen["log"].read_text()


def test_a_program_is_found_in_the_tasks_path_and_inherits_no_stray_fd(tmp_path: Path):
    tools = tmp_path / "tools"
    tools.mkdir()
    tool = tools / "mytool"
    tool.write_text("#!/bin/sh\nls /proc/self/fd\necho RESULT: '\"ok\"'\n")
    tool.chmod(0o755)
    stray_r, stray_w = os.pipe()
    os.set_inheritable(stray_w, True)  # as an fd the daemon inherited from its starter
    try:
        env = clean_env({"PATH": f"/nonexistent:{tools}:/usr/bin:/bin"})
        run = TaskRun(key="k", argv=["mytool"], params={}, env=env, log_path=tmp_path / "t.log",
                      attempt=1, timeout_s=30, kill_grace_s=1, send_params=False)
        out = TaskProcess(run, on_progress=lambda p, m: None).run()
        assert out.succeeded and out.result == "ok"
        fds = {int(x) for x in (tmp_path / "t.log").read_text().split() if x.isdigit()}
        assert stray_w not in fds and fds <= {0, 1, 2, 3}  # 3: ls's own directory fd
    finally:
        os.close(stray_r)
        os.close(stray_w)


def test_a_program_removed_from_the_path_is_looked_up_again(tmp_path: Path):
    dirs = [tmp_path / "first", tmp_path / "second"]
    for d in dirs:
        d.mkdir()
        tool = d / "whichtool"
        tool.write_text(f"#!/bin/sh\necho RESULT: '\"{d.name}\"'\n")
        tool.chmod(0o755)
    env = clean_env({"PATH": os.pathsep.join([*map(str, dirs), "/usr/bin", "/bin"])})

    def run() -> object:
        task = TaskRun(key="k", argv=["whichtool"], params={}, env=env,
                       log_path=tmp_path / "w.log", attempt=1, timeout_s=30, kill_grace_s=1,
                       send_params=False)
        return TaskProcess(task, on_progress=lambda p, m: None).run().result

    assert run() == "first"
    (dirs[0] / "whichtool").unlink()  # within the lookup cache's lifetime
    assert run() == "second"
