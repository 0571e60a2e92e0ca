"""The Python zygote (engine/zygote.py, engine/zygote_server.py): Python ops forked
from a pre-imported child of the daemon, which must look to a task, to recovery and
to an operator exactly like a plainly spawned op.

- a forked op is a task process of its own: own session, the task's environment
  (not the zygote's), the recovery marker in /proc/<pid>/environ, params on stdin;
- a zygote killed while its ops run: they finish with their own exit codes, a new
  zygote takes over (and through the daemon: the workflow completes);
- it dies with its parent (kill -9), holds none of the daemon's fds or secrets,
  and is replaced when a module it imported or a config file changes on disk.
The protocol, timeout and tree-kill tests run with it in test_executor.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from provisioning.engine import zygote as zygote_mod
from provisioning.engine.executor import LOST_STATUS, TaskProcess, TaskRun, clean_env
from provisioning.engine.proctree import marked_processes
from tests.conftest import wait_for
from tests.daemon_fixture import start_daemon

pytestmark = pytest.mark.skipif(not zygote_mod.supported(),
                                reason="the Python zygote needs Linux (pidfd, SCM_RIGHTS)")

KEY = "00000000-0000-4000-8000-00000000000{n}.task"


def make_zygote(env_extra=None, **kwargs) -> zygote_mod.Zygote:
    z = zygote_mod.Zygote(env=clean_env(env_extra or {}),
                          settings=kwargs.pop("settings", zygote_mod.ZygoteSettings(True, ())),
                          **kwargs)
    z.start()
    assert z.started.wait(60) and z.pid is not None, "the zygote did not start"
    return z


def task(tmp_path: Path, code: str, *, n: int = 0, zygote=None, params=None, timeout_s=30):
    script = tmp_path / f"op{n}.py"
    script.write_text(textwrap.dedent(code))
    key = KEY.format(n=n)
    run = TaskRun(key=key, argv=[sys.executable, str(script)], params=params or {},
                  env=clean_env({"PROVISIONING_TASK_ID": key, "TASK_ONLY": "yes"}),
                  log_path=tmp_path / f"op{n}.log", attempt=1, timeout_s=timeout_s,
                  kill_grace_s=1)
    return TaskProcess(run, on_progress=lambda p, m: None, zygote=zygote)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_forked_op_is_a_task_process_of_its_own(tmp_path: Path):
    z = make_zygote()
    try:
        started = tmp_path / "started"
        code = f"""
            import json, os, sys, time
            params = json.load(sys.stdin)
            info = {{"pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
                     "ppid": os.getppid(), "env": dict(os.environ), "argv": sys.argv,
                     "path0": sys.path[0], "params": params, "main": __name__}}
            print("RESULT: " + json.dumps(info), flush=True)
            open({str(started)!r}, "w").close()
            time.sleep(float(params["sleep"]))
        """
        proc = task(tmp_path, code, zygote=z, params={"sleep": 1.5})
        seen = {}
        import threading

        t = threading.Thread(target=lambda: seen.setdefault("out", proc.run()))
        t.start()
        wait_for(started.exists, timeout=30, what="the op to start")
        # recovery finds it by its marker, as any task process
        found = marked_processes({KEY.format(n=0)})
        assert [p.pid for p in found.get(KEY.format(n=0), [])] == [proc.pid]
        t.join(30)
        out = seen["out"]
        assert out.succeeded, out
        info = out.result
        assert info["ppid"] == z.pid  # forked by the zygote ...
        assert info["sid"] == info["pid"] == info["pgid"]  # ... in a session of its own
        assert info["env"]["TASK_ONLY"] == "yes"  # the task's environment, no other
        assert info["env"]["PROVISIONING_TASK_ID"] == KEY.format(n=0)
        assert "PROVISIONING_TOKEN" not in info["env"]
        assert info["argv"] == [str(tmp_path / "op0.py")] and info["main"] == "__main__"
        assert info["path0"] == str(tmp_path.resolve())  # as `python op0.py` sets it
        assert info["params"] == {"sleep": 1.5}
    finally:
        z.close()


def test_ops_running_when_the_zygote_is_killed_end_with_their_own_status(tmp_path: Path):
    z = make_zygote()
    first = z.pid
    try:
        import threading

        gate = tmp_path / "gate"
        code = f"""
            import os, sys, time
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.02)
            sys.exit(int(sys.argv[0][-4]))   # op3.py exits 3
        """
        signalled = f"""
            import os, signal, time
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGKILL)
        """
        procs = [task(tmp_path, code, n=3, zygote=z), task(tmp_path, signalled, n=4, zygote=z)]
        outs: dict[int, object] = {}
        threads = [threading.Thread(target=lambda i=i, p=p: outs.setdefault(i, p.run()))
                   for i, p in enumerate(procs)]
        for t in threads:
            t.start()
        wait_for(lambda: all(p.pid for p in procs), timeout=30, what="both ops to start")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: gone(first), timeout=30, what="the zygote to die")
        gate.touch()
        for t in threads:
            t.join(30)
        assert outs[0].exit_code == 3 and outs[0].error is None  # its own report
        assert outs[1].error == LOST_STATUS and not outs[1].succeeded  # nobody saw the signal
        # a new zygote takes over; meanwhile (and always) ops run
        second = wait_for(lambda: z.pid if z.pid not in (None, first) else None, timeout=60,
                          what="a new zygote")
        out = task(tmp_path, "import os; print('RESULT:', os.getppid())", n=5, zygote=z).run()
        assert out.succeeded and out.result == second
    finally:
        z.close()


def test_the_zygote_dies_with_its_parent_and_holds_nothing_of_it(tmp_path: Path):
    secret_file = tmp_path / "lock"
    parent_code = textwrap.dedent(f"""
        import os, sys
        from provisioning.engine import zygote as zm
        from provisioning.engine.executor import clean_env
        held = open({str(secret_file)!r}, "w")  # an fd of the parent, inheritable or not
        os.set_inheritable(held.fileno(), True)
        z = zm.Zygote(env=clean_env({{}}), settings=zm.ZygoteSettings(True, ()))
        z.start()
        z.started.wait(60)
        print(z.pid, flush=True)
        sys.stdin.read()
    """)
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "hunter2", "PROVISIONING_TOKEN": "t0ken"}
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env, text=True)
    try:
        zpid = int(parent.stdout.readline())
        z = psutil.Process(zpid)
        assert z.ppid() == parent.pid
        zenv = z.environ()
        assert "AWS_SECRET_ACCESS_KEY" not in zenv and "PROVISIONING_TOKEN" not in zenv
        assert str(secret_file) not in [f.path for f in z.open_files()]
        parent.kill()
        parent.wait(30)
        wait_for(lambda: gone(zpid), timeout=30, what="the zygote to die with its parent")
    finally:
        parent.kill()
        parent.wait(30)


def test_a_changed_module_file_or_config_file_replaces_the_zygote(tmp_path: Path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "zyg_probe.py").write_text("VALUE = 1\n")
    config = tmp_path / "conf.toml"
    config.write_text("")
    env = clean_env({})
    env["PYTHONPATH"] = os.pathsep.join([str(mods), env["PYTHONPATH"]])
    z = zygote_mod.Zygote(env=env, settings=zygote_mod.ZygoteSettings(True, ("zyg_probe",)),
                          config_files=[config],
                          reload=lambda: zygote_mod.ZygoteSettings(False))
    z.start()
    try:
        assert z.started.wait(60)
        first = z.pid
        code = "import sys; print('RESULT:', sys.modules.get('zyg_probe').VALUE)"
        out = task(tmp_path, code, zygote=z).run()
        assert out.result == 1  # the preloaded module, in the child
        (mods / "zyg_probe.py").write_text("VALUE = 22\n")  # an upgrade on disk

        def replaced():
            task(tmp_path, "pass", n=1, zygote=z).run()  # spawns look at the files
            return z.pid not in (None, first) and z.pid

        wait_for(replaced, timeout=60, what="a new zygote after the module changed")
        out = task(tmp_path, code, n=2, zygote=z).run()
        assert out.result == 22
        second = z.pid
        config.write_text("[executor]\npython_zygote = false\n")  # read again: off

        def off():
            task(tmp_path, "pass", n=1, zygote=z).run()
            return z.pid is None

        wait_for(off, timeout=60, what="the zygote to stop after the config changed")
        wait_for(lambda: gone(second) and gone(first), timeout=30, what="old zygotes to exit")
        out = task(tmp_path, "import os; print('RESULT:', os.getppid())", n=3, zygote=z).run()
        assert out.result == os.getpid()  # spawned plainly now
    finally:
        z.close()


def test_an_op_that_execs_and_a_request_too_big_for_the_socket(tmp_path: Path):
    from provisioning.ops.registry import OpRegistry

    z = make_zygote()
    try:
        first = z.pid
        shell_run = OpRegistry([]).resolve("shell.run")  # the built-in op: Python, then exec
        key = KEY.format(n=7)
        env = clean_env({"PROVISIONING_TASK_ID": key})
        run = TaskRun(key=key, argv=shell_run, params={"argv": [
            "sh", "-c", 'echo "RESULT: [$PPID, \\"$X\\"]"; exit 3'], "env": {"X": "x"}}, env=env,
            log_path=tmp_path / "exec.log", attempt=1, timeout_s=30, kill_grace_s=1)
        out = TaskProcess(run, on_progress=lambda p, m: None, zygote=z).run()
        assert out.exit_code == 3 and out.result == [z.pid, "x"]  # its own exit code, via exec
        # more than a datagram can carry (each value within the kernel's 128 KiB per string)
        run.env = {**env, **{f"BIG{i}": "y" * 100_000 for i in range(4)}}
        run.params = {"argv": ["sh", "-c", 'echo "RESULT: ${#BIG3}"']}
        out = TaskProcess(run, on_progress=lambda p, m: None, zygote=z).run()
        assert out.succeeded and out.result == 100_000  # spawned plainly instead
        assert z.pid == first  # and the zygote is still the same one
    finally:
        z.close()


# -- through the daemon ------------------------------------------------------------------

OP = """
import json, os, sys, time
params = json.loads(sys.stdin.read() or "{}")
time.sleep(params.get("sleep", 0))
with open(params["effects"], "a") as f:
    f.write(os.environ["PROVISIONING_TASK_ID"] + "\\n")
print("RESULT: " + json.dumps({"ppid": os.getppid()}))
"""


def zygote_of(daemon_pid: int, *, sdk: bool = False) -> psutil.Process | None:
    """The daemon's lean zygote (no preloads: its last argument is "[]"), or the SDK one."""
    for child in psutil.Process(daemon_pid).children():
        argv = child.cmdline()
        if "provisioning.engine.zygote_server" in " ".join(argv) and (argv[-1] != "[]") == sdk:
            return child
    return None


def test_two_zygotes_a_lean_one_for_ops_and_one_with_the_sdks_for_business_ops(tmp_path: Path):
    """boto3 in the zygote makes every fork dearer (engine/zygote.py): plain ops fork
    from a zygote without it, server/taskserv/cluster ops from the one with it."""
    pytest.importorskip("boto3", reason="no SDK of the default preload list is installed")
    from provisioning.config import load_config
    from provisioning.engine.launch import TaskLauncher
    from provisioning.engine.zygotes import Zygotes
    from provisioning.ops.registry import OpRegistry
    from provisioning.store.memory import MemoryStore

    lib = tmp_path / "lib"
    (lib / "steps").mkdir(parents=True)
    (lib / "steps" / "work.py").write_text(OP)  # reports its parent's pid
    d = start_daemon(tmp_path, executor={"lib_dirs": [str(lib)]})
    try:
        lean = wait_for(lambda: d.health()["python_zygote_pid"], timeout=60, what="the zygote")
        sdk = wait_for(lambda: d.health()["python_sdk_zygote_pid"], timeout=60,
                       what="the SDK zygote")
        assert lean != sdk and zygote_of(d.pid).pid == lean
        assert zygote_of(d.pid, sdk=True).pid == sdk
        assert zygote_of(d.pid, sdk=True).cmdline()[-1] == '["boto3"]'
        status, body = d.request("POST", "/workflows", {"tasks": [
            {"id": "a", "op": "step.work", "params": {"effects": str(tmp_path / "fx")}}]})
        assert status == 202, body
        assert d.wait_workflow(body["workflow_id"])["status"] == "succeeded"
        status, view = d.request("GET", f"/tasks/{body['workflow_id']}.a")
        assert status == 200 and view["result"]["ppid"] == lean, view
    finally:
        d.stop()
    config = load_config(environ={"PROVISIONING_STORAGE_DATA_DIR": str(tmp_path / "l")})
    launcher = TaskLauncher(OpRegistry.from_config(config), MemoryStore(tmp_path / "m"),
                            data_dir=tmp_path / "l", endpoint=None, task_timeout_s=10,
                            kill_grace_s=1)
    zygotes = Zygotes()
    zygotes.lean, zygotes.sdk = "lean", "sdk"  # which one each op would use
    launcher.zygotes = zygotes
    task = {"workflow_id": KEY.format(n=1).split(".")[0], "id": "t", "key": KEY.format(n=1),
            "attempts": 1, "params": {}}
    for op, want in (("noop", "lean"), ("server.create", "sdk"), ("taskserv.create", "sdk"),
                     ("cluster.delete", "sdk"), ("shell.run", "lean")):
        proc, _ = launcher.prepare({**task, "op": op}, ["x"], lambda p, m: None)
        assert proc.zygote == want, op


def test_daemon_killing_the_zygote_mid_workflow_the_workflow_still_completes(tmp_path: Path):
    lib = tmp_path / "lib"
    (lib / "steps").mkdir(parents=True)
    (lib / "steps" / "work.py").write_text(OP)  # an extension .py op in a lib dir
    effects = tmp_path / "effects"
    d = start_daemon(tmp_path, executor={"lib_dirs": [str(lib)], "max_concurrent_tasks": 4})
    try:
        first = wait_for(lambda: d.health()["python_zygote_pid"], timeout=60,
                         what="the daemon's zygote")
        assert zygote_of(d.pid).pid == first
        tasks = [{"id": f"t{i}", "op": "step.work",
                  "params": {"sleep": 0.3, "effects": str(effects)},
                  "depends_on": [f"t{i - 4}"] if i >= 4 else []} for i in range(16)]
        status, body = d.request("POST", "/workflows", {"workflow": {"name": "z"},
                                                        "tasks": tasks})
        assert status == 202, body
        wid = body["workflow_id"]
        wait_for(lambda: effects.exists() and len(effects.read_text().splitlines()) >= 4,
                 timeout=60, what="the first ops to finish")
        os.kill(first, signal.SIGKILL)
        final = d.wait_workflow(wid, timeout=120)
        assert final["status"] == "succeeded", final
        ran = effects.read_text().splitlines()
        assert sorted(ran) == sorted({f"{wid}.t{i}" for i in range(16)})  # each exactly once
        second = wait_for(lambda: d.health()["python_zygote_pid"] not in (None, first)
                          and d.health()["python_zygote_pid"], timeout=60, what="a new zygote")
        status, body = d.request("POST", "/workflows", {"tasks": [
            {"id": "after", "op": "step.work", "params": {"effects": str(effects)}}]})
        assert d.wait_workflow(body["workflow_id"])["status"] == "succeeded"
        status, view = d.request("GET", f"/tasks/{body['workflow_id']}.after")
        assert status == 200 and view["result"]["ppid"] == second, view
        log = (d.data_dir / "orchestrator.log").read_text()
        assert f"the Python zygote (pid {first}) was killed by signal 9" in log
    finally:
        d.stop()
    wait_for(lambda: gone(second), timeout=30, what="the zygote to stop with the daemon")


def test_daemon_kill_9_takes_the_zygote_with_it_and_plain_spawn_by_config(tmp_path: Path):
    d = start_daemon(tmp_path)
    zpid = wait_for(lambda: d.health()["python_zygote_pid"], timeout=60, what="the zygote")
    d.kill()
    wait_for(lambda: gone(zpid), timeout=30, what="the zygote to die with the daemon")
    d = start_daemon(tmp_path, executor={"python_zygote": False})
    try:
        status, body = d.request("POST", "/workflows", {"tasks": [{"id": "a", "op": "noop"}]})
        assert status == 202
        assert d.wait_workflow(body["workflow_id"])["status"] == "succeeded"
        assert d.health()["python_zygote_pid"] is None and zygote_of(d.pid) is None
    finally:
        d.stop()
