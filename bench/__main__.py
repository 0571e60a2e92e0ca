"""The benchmark suite: `python -m bench [--quick] [--only NAME[,NAME]] [--out FILE]`.

Runs the figures of issues 8, 16 and 19 one after the other (never two at once: on
2 cores they would measure each other), each against a reference measured in
the same run, prints one table (median, min, max over repeated runs, ratio,
target, pass/MISS) and writes bench/results.json. `--markdown` also prints the
table as markdown for docs/performance.md.

Figures: 1 cli, 2 submit, 3 tasks, 4 pyops, 5 dag, 6 recovery, 7 idle,
8 autostart, 9 zygote, 10 nickel (bench/nickel_load.py),
11 ssh (bench/ssh_install.py; only with `--only ssh`), 13 postgres
(bench/postgres_tasks.py; only with `--only postgres`: it needs a PostgreSQL,
bench/with_postgres.sh starts one). Some call the single-purpose
scripts beside this file
(submit.py, idle.py, autostart.py, engine_dag.py) as subprocesses and parse
their JSON or text output; those scripts stay runnable on their own.

A figure that fails does not stop the others: its row says `error: ...` and
the exit code is 1. A peer that cannot be installed is not an error: its row
says `peer unavailable: <why>`. A missed target is not an error either.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from bench import nickel_load, peers, postgres_tasks, report, ssh_install  # noqa: E402
from bench.report import Figure, Row, Target, row_from_samples  # noqa: E402

BIN = Path(sys.executable).parent
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
TMP_PARENT = "/var/tmp"  # a real disk: tmpfs would flatter every fsync


@dataclass(frozen=True)
class Scale:
    """How much each figure does. --quick shrinks it to fit 2 minutes on 2 cores."""

    quick: bool
    cli_runs: int
    submit_runs: int
    submit_n: int
    submit_per_client: int
    task_runs: int
    tasks: int
    pyops_runs: int
    pyops: int
    dag_runs: int
    dag_tasks: int
    recovery_runs: int
    recovery_tasks: int
    idle_runs: int
    idle_seconds: float
    idle_workflows: int
    autostart_runs: int


FULL = Scale(quick=False, cli_runs=10, submit_runs=3, submit_n=1000, submit_per_client=250,
             task_runs=3, tasks=500, pyops_runs=3, pyops=200, dag_runs=3, dag_tasks=10_000,
             recovery_runs=3, recovery_tasks=10_000, idle_runs=2, idle_seconds=30.0,
             idle_workflows=100, autostart_runs=5)
QUICK = Scale(quick=True, cli_runs=3, submit_runs=2, submit_n=100, submit_per_client=25,
              task_runs=2, tasks=100, pyops_runs=2, pyops=30, dag_runs=2, dag_tasks=10_000,
              recovery_runs=2, recovery_tasks=2_000, idle_runs=1, idle_seconds=5.0,
              idle_workflows=10, autostart_runs=2)


def _scale_text(s: Scale, what: str, full_what: str) -> str:
    return f"{what}; full run: {full_what}" if s.quick else what


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without our own settings (they would leak into the
    measured programs), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROVISIONING_", "SHIV_")) and k != "NOTIFY_SOCKET"}
    env.update(extra)
    return env


def timed_run(argv: list[str], env: dict[str, str], stdin: bytes | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, input=stdin, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, check=True, timeout=120)
    return time.perf_counter() - t0


def run_script(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a bench script, return its stdout; RuntimeError with its stderr on failure."""
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO, stdin=subprocess.DEVNULL)
    if done.returncode != 0 and not done.stdout.strip():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {tail}")
    return done.stdout


def parse_json_output(text: str, script: str) -> Any:
    """The JSON document a script printed (the last `{...}` block of its stdout)."""
    start = text.find("{")
    if start < 0:
        raise RuntimeError(f"{script} printed no JSON: {text.strip()[:200]!r}")
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError as e:
        raise RuntimeError(f"{script} printed unparsable JSON: {e}") from None


def dig(doc: Any, *keys: str) -> float:
    """doc[k1][k2]...; a RuntimeError naming the path if the script's output changed."""
    cur = doc
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            raise RuntimeError(f"output has no {'.'.join(keys)} (interface changed?)")
        cur = cur[k]
    return float(cur)


# -- 1. CLI start ------------------------------------------------------------

def fig_cli(s: Scale, tmp: Path) -> Figure:
    env = clean_env(PROVISIONING_STORAGE_DATA_DIR=str(tmp / "data"),
                    PROVISIONING_USER_CONFIG_DIR=str(tmp / "config"),
                    PROVISIONING_ETC_DIR=str(tmp / "etc"))
    cmds: dict[str, list[str]] = {
        "python -c pass (venv interpreter)": [sys.executable, "-c", "pass"],
        "provisioning version (venv)": [str(BIN / "provisioning"), "version"],
        "provisioning server list (venv, direct)": [str(BIN / "provisioning"), "server", "list"],
    }
    zip_error = ""
    build = subprocess.run([sys.executable, str(REPO / "packaging" / "build"),
                            "--out", str(tmp / "dist")], capture_output=True, text=True,
                           timeout=600, stdin=subprocess.DEVNULL)
    pyz = tmp / "dist" / "provisioning"
    zip_python, zip_note = BASE_PYTHON, ""
    if build.returncode == 0 and pyz.exists():
        # The interpreter its shebang really runs, without the venv's packages: only the
        # packaging differs. (Not through a pyenv shim: that is a shell script.)
        zip_python, zip_note = shebang_interpreter(pyz, env)
        cmds["python -c pass (base interpreter)"] = [zip_python, "-c", "pass"]
        cmds["provisioning version (zipapp)"] = [zip_python, str(pyz), "version"]
        cmds["provisioning server list (zipapp, direct)"] = [zip_python, str(pyz), "server",
                                                             "list"]
    else:
        zip_error = "zipapp build failed: " + ((build.stderr or build.stdout).strip()
                                               .splitlines() or ["?"])[-1][:160]
    zenv = {**env, "SHIV_ROOT": str(tmp / "shiv")}
    samples: dict[str, list[float]] = {k: [] for k in cmds}
    for argv in cmds.values():  # warm-up: pyc files, the zipapp's one-time unpack
        timed_run(argv, zenv)
    for _ in range(s.cli_runs):  # interleaved: load on the host hits every row alike
        for name, argv in cmds.items():
            samples[name].append(timed_run(argv, zenv) * 1000)

    def row(name: str, ref: str, target: Target | None = None, **kw: Any) -> Row:
        return row_from_samples(name, samples[name], "ms", reference=ref, target=target, **kw)

    venv_ref, base_ref = "python -c pass (venv interpreter)", "python -c pass (base interpreter)"
    three_x = Target("<=", 3.0, "ratio")
    rows = [row(venv_ref, venv_ref, is_reference=True),
            row("provisioning version (venv)", venv_ref, three_x),
            row("provisioning server list (venv, direct)", venv_ref)]
    if zip_error:
        rows.append(Row("provisioning version (zipapp)", error=zip_error))
    else:
        rows += [row(base_ref, base_ref, is_reference=True, note=zip_note),
                 row("provisioning version (zipapp)", base_ref, three_x),
                 row("provisioning server list (zipapp, direct)", base_ref)]
    return Figure(1, "CLI start", f"{s.cli_runs} runs each, after one warm-up", rows)


def shebang_interpreter(pyz: Path, env: dict[str, str]) -> tuple[str, str]:
    """The interpreter a zipapp's `#!` line runs here, resolved, and a note saying so."""
    with pyz.open("rb") as f:
        line = f.readline().decode(errors="replace").strip()
    words = line[2:].split()
    if words[:1] == ["/usr/bin/env"]:
        words = words[1:]
    found = shutil.which(words[0], path=env.get("PATH")) if words else None
    if not found:
        return BASE_PYTHON, f"{line}: not found on PATH; ran {BASE_PYTHON}"
    real = subprocess.run([found, "-c", "import sys; print(sys.executable)"], env=env,
                          capture_output=True, text=True, timeout=60).stdout.strip()
    via = "" if os.path.realpath(found) == os.path.realpath(real) else \
        f" ({found} is a launcher, e.g. a pyenv shim)"
    return real or BASE_PYTHON, f"{line}: {words[0]} on PATH runs {real}{via}"


# -- 2. Submit ---------------------------------------------------------------

def durable_write_ms(tmp: Path, n: int = 50) -> list[float]:
    """The disk's floor for one durable record: temp file, fsync, rename, dir fsync."""
    from provisioning import fsutil

    d = tmp / "fsync-probe"
    d.mkdir(mode=0o700)
    data = json.dumps({"workflow": {"name": "bench"}, "pad": "x" * 300}).encode()
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fsutil.atomic_write_bytes(d / f"r{i}.json", data)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def fig_submit(s: Scale, tmp: Path) -> Figure:
    p50, p99, rate, ref_ms = [], [], [], []
    for _ in range(s.submit_runs):
        out = run_script(["bench/submit.py", "--json", "--n", str(s.submit_n), "--clients", "8",
                          "--per-client", str(s.submit_per_client), "--dir", TMP_PARENT],
                         timeout=900, env=clean_env())
        doc = parse_json_output(out, "submit.py")
        p50.append(dig(doc, "single_client", "p50_ms"))
        p99.append(dig(doc, "single_client", "p99_ms"))
        rate.append(dig(doc, "multi_client", "rate_per_s"))
        probe = Path(tempfile.mkdtemp(prefix="bench-fsync-", dir=TMP_PARENT))
        try:
            import statistics
            ref_ms.append(statistics.median(durable_write_ms(probe)))
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    ref, ref_rate = "durable write of one small file", "durable writes/s, 1 thread"
    rows = [row_from_samples(ref, ref_ms, "ms", reference=ref, is_reference=True,
                             note="temp file + fsync + rename + dir fsync (fsutil)"),
            row_from_samples("POST /workflows p50, 1 client", p50, "ms", reference=ref,
                             target=Target("<=", 5.0, label="<= 5 ms")),
            row_from_samples("POST /workflows p99, 1 client", p99, "ms", reference=ref),
            row_from_samples(ref_rate, [1000 / x for x in ref_ms], "/s", reference=ref_rate,
                             is_reference=True),
            row_from_samples("POST /workflows, 8 concurrent clients", rate, "/s",
                             reference=ref_rate, target=Target(">=", 500, label=">= 500/s"))]
    scale = _scale_text(s, f"{s.submit_runs} runs of {s.submit_n} sequential + "
                           f"8x{s.submit_per_client} concurrent submits, fsync on",
                        f"{FULL.submit_runs} runs of {FULL.submit_n} + 8x{FULL.submit_per_client}")
    return Figure(2, "Submit (HTTP, durable)", scale, rows)


# -- 3. Task execution -------------------------------------------------------

def run_xargs(n: int, parallel: int) -> float:
    lines = "".join(f"{i}\n" for i in range(n)).encode()  # `true <i>`, n times
    t0 = time.perf_counter()
    subprocess.run(["xargs", f"-P{parallel}", "-n1", "true"], input=lines, check=True,
                   timeout=300)
    return time.perf_counter() - t0


def fig_tasks(s: Scale, tmp: Path, huey: peers.Peer) -> Figure:
    from bench.recovery import ForegroundDaemon

    n, parallel = s.tasks, 10
    xargs_s, daemon_s, huey_s = [], [], []
    huey_error = huey.unavailable and f"peer unavailable: {huey.unavailable}"
    d = ForegroundDaemon(tmp / "daemon", max_concurrent_tasks=parallel)
    try:
        d.spawn()
        d.wait_until(lambda h: True, 60, "/health")
        body = {"workflow": {"name": "bench-tasks", "max_parallel": parallel},
                "tasks": [{"id": f"t{i}", "op": "shell.run", "params": {"argv": ["true"]}}
                          for i in range(n)]}
        for rep in range(s.task_runs):
            xargs_s.append(run_xargs(n, parallel))
            t0 = time.perf_counter()
            status = d.wait_finished(d.submit(body), 600)
            daemon_s.append(time.perf_counter() - t0)
            if status != "succeeded":
                raise RuntimeError(f"the daemon's workflow ended {status}")
            if not huey_error:
                hdir = tmp / f"huey{rep}"
                try:
                    out = subprocess.run([*huey.argv, str(n), str(parallel), str(hdir)],
                                         capture_output=True, text=True, timeout=600,
                                         check=True, stdin=subprocess.DEVNULL).stdout
                    huey_s.append(dig(parse_json_output(out, "huey_peer.py"), "seconds"))
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    huey_error = f"peer failed: {e}"[:200]
    finally:
        d.stop()
    ref = f"xargs -P{parallel}: {n} x true"
    name = f"daemon: {n} shell.run true, parallel {parallel}"
    rows = [row_from_samples(ref, xargs_s, "s", reference=ref, is_reference=True),
            row_from_samples(name, daemon_s, "s", reference=ref,
                             target=Target("<=", 1.5, "ratio", label="<= 1.5x xargs")),
            row_from_samples("per-task overhead vs xargs",
                             [(a - b) / n * 1000 for a, b in zip(daemon_s, xargs_s, strict=True)],
                             "ms", note="(daemon - xargs) / tasks")]
    if huey_error:
        rows.append(Row(f"huey FileHuey, {parallel} threads", unavailable=huey_error))
        rows.append(Row("daemon / huey", target=Target("<", 1.0, label="< 1x (faster)"),
                        unavailable=huey_error))
    else:
        rows += [row_from_samples(f"huey FileHuey, {parallel} threads", huey_s, "s",
                                  reference=ref, note=f"peer: huey {huey.version}, own venv"),
                 row_from_samples("daemon / huey",
                                  [a / b for a, b in zip(daemon_s, huey_s, strict=True)], "x",
                                  target=Target("<", 1.0, label="< 1x (faster)"))]
    scale = _scale_text(s, f"{s.task_runs} runs of {n} tasks through the daemon, fsync on",
                        f"{FULL.task_runs} runs of {FULL.tasks}")
    return Figure(3, "Task execution", scale, rows)


# -- 4. Python ops -----------------------------------------------------------

def fig_pyops(s: Scale, tmp: Path, nu: peers.Peer) -> Figure:
    from bench import python_ops

    n = s.pyops
    bare, eng_zygote, eng_json, eng_mem, nu_ms = [], [], [], [], []
    nu_error = nu.unavailable and f"peer unavailable: {nu.unavailable}"
    for _ in range(s.pyops_runs):
        r = python_ops.measure(n, TMP_PARENT)
        bare.append(r["bare_s"] / n * 1000)
        eng_zygote.append(r["engine_zygote_s"] / n * 1000)
        eng_json.append(r["engine_json_s"] / n * 1000)
        eng_mem.append(r["engine_memory_s"] / n * 1000)
        if not nu_error:
            try:
                t0 = time.perf_counter()
                for _ in range(n):
                    subprocess.run([*nu.argv, "-c", "null"], check=True, timeout=60,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                nu_ms.append((time.perf_counter() - t0) / n * 1000)
            except (subprocess.SubprocessError, OSError) as e:
                nu_error = f"peer failed: {e}"[:200]
    ref = "python -c pass (bare spawn)"
    rows = [row_from_samples(ref, bare, "ms/op", reference=ref, is_reference=True,
                             note=r["interpreter"]),
            row_from_samples("noop op via engine + JSON store, forked from the zygote",
                             eng_zygote, "ms/op", reference=ref,
                             target=Target("<=", python_ops.ZYGOTE_TARGET_RATIO, "ratio"),
                             note="the daemon's default"),
            row_from_samples("noop op via engine + JSON store, plain spawn", eng_json, "ms/op",
                             reference=ref, target=Target("<=", 1.5, "ratio")),
            row_from_samples("noop op via engine, memory store", eng_mem, "ms/op",
                             reference=ref, note="engine and executor alone (direct mode)")]
    nu_name = "nu -c 'null' spawn (seeds' per-task design)"
    if nu_error:
        rows.append(Row(nu_name, unavailable=nu_error))
    else:
        rows.append(row_from_samples(nu_name, nu_ms, "ms/op", reference=ref,
                                     note=f"Nushell {nu.version} from npm, reference only"))
    scale = _scale_text(s, f"{s.pyops_runs} runs of {n} sequential ops each",
                        f"{FULL.pyops_runs} runs of {FULL.pyops}")
    return Figure(4, "Python business-logic ops", scale, rows)


def fig_zygote(s: Scale, tmp: Path) -> Figure:
    from bench import zygote_ops

    runs = 2 if s.quick else 5
    return zygote_ops.figure(runs, TMP_PARENT, _scale_text(s, f"{runs} interleaved rounds",
                                                           "5 rounds"))


# -- 5. DAG scale ------------------------------------------------------------

def dag_floor_s(n: int, tmp: Path) -> float:
    """json.load of the same DAG file + a stdlib topological order: the floor."""
    import graphlib

    from bench.engine_dag import make_dag

    doc, _ = make_dag(n, 3)
    f = tmp / "dag-floor.json"
    f.write_text(json.dumps(doc))
    t0 = time.perf_counter()
    loaded = json.loads(f.read_text())
    order = list(graphlib.TopologicalSorter(
        {t["id"]: t["depends_on"] for t in loaded["tasks"]}).static_order())
    elapsed = time.perf_counter() - t0
    assert len(order) == n
    return elapsed


PEAK_RSS_WRAPPER = """\
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


def run_with_peak_rss(argv: list[str], timeout: float) -> tuple[str, float]:
    """stdout of a Python script and its peak RSS in MiB (ru_maxrss of its own process,
    reported by a wrapper so the figure is that run's, not the bench's)."""
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL,
                          env=clean_env())
    m = re.search(r"^PEAK_RSS_KIB (\d+)$", done.stdout, re.M)
    if done.returncode != 0 or not m:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {tail[:200]}")
    return done.stdout, int(m.group(1)) / 1024


def fig_dag(s: Scale, tmp: Path) -> Figure:
    n = s.dag_tasks
    floor, load, sched, total, peak, per_task = [], [], [], [], [], []
    for _ in range(s.dag_runs):
        floor.append(dag_floor_s(n, tmp))
        text, rss = run_with_peak_rss(["bench/engine_dag.py", "--tasks", str(n)], timeout=600)
        found = {}
        for key, pattern in (("load", r"load\+validate[^:]*:\s*([\d.]+)\s*s"),
                             ("sched", r"submit\+schedule[^:]*:\s*([\d.]+)\s*s"),
                             ("bytes", r"memory per queued task[^:]*:\s*([\d.]+)\s*bytes")):
            m = re.search(pattern, text)
            if not m:
                raise RuntimeError(f"engine_dag.py output has no '{key}' line "
                                   f"(interface changed?): {text.strip()[:200]!r}")
            found[key] = float(m.group(1))
        load.append(found["load"])
        sched.append(found["sched"])
        total.append(found["load"] + found["sched"])
        peak.append(rss)
        per_task.append(found["bytes"])
    ref = "json.load + graphlib topological order"
    rows = [row_from_samples(ref, floor, "s", reference=ref, is_reference=True,
                             note="stdlib floor, same DAG"),
            row_from_samples("load + validate (JSON file)", load, "s", reference=ref),
            row_from_samples("submit + schedule to completion", sched, "s", reference=ref),
            row_from_samples("overhead: load + validate + schedule", total, "s", reference=ref,
                             target=Target("<", 1.0, label="< 1 s")),
            row_from_samples("peak RSS of the whole run", peak, "MiB"),
            row_from_samples("engine memory per queued task", per_task, "bytes",
                             note="tracemalloc")]
    return Figure(5, "DAG scale", f"{s.dag_runs} runs of {n} tasks / {3 * n} edges, "
                                  "in-process engine, no task processes", rows)


# -- 6. Recovery -------------------------------------------------------------

def fig_recovery(s: Scale, tmp: Path) -> Figure:
    from bench import recovery

    r = recovery.measure(s.recovery_tasks, s.recovery_runs, TMP_PARENT)
    n = s.recovery_tasks
    ref = "restart, empty data dir"

    def row(name: str, key: str, **kw: Any) -> Row:
        sm = r[key]
        return Row(name, "s", sm["median"], sm["min"], sm["max"], sm["n"], reference=ref, **kw)

    rows = [row(ref, "empty_restart", is_reference=True),
            row(f"restart -> /health answers, {n} queued", "health"),
            row(f"restart -> all {n} tasks indexed", "indexed",
                target=Target("<", recovery.TARGET_S, label="< 2 s"),
                note="daemon and task processes all killed, as by a power loss"),
            row(f"same, daemon alone killed: {n} indexed", "indexed_orphan",
                note="recovery first kills the orphaned running task (kill grace 1 s)")]
    scale = _scale_text(s, f"{s.recovery_runs} SIGKILL + restart cycles, {n} queued tasks",
                        f"{FULL.recovery_runs} cycles, {FULL.recovery_tasks} tasks")
    return Figure(6, "Recovery after kill -9", scale, rows)


# -- 7. Idle -----------------------------------------------------------------

def bare_python_rss_mib() -> float:
    """RSS of an interpreter that has started and waits: the floor for a Python daemon."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", "import sys; print(1, flush=True); "
                             "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # it is up
        return psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def fig_idle(s: Scale, tmp: Path) -> Figure:
    cpu, rss, ref, wrss, zrss, uss, zuss = [], [], [], [], [], [], []
    for _ in range(s.idle_runs):
        out = run_script(["bench/idle.py", "--json", "--seconds", str(s.idle_seconds),
                          "--workflows", str(s.idle_workflows)],
                         timeout=s.idle_seconds + 600, env=clean_env())
        doc = parse_json_output(out, "idle.py")
        cpu.append(dig(doc, "cpu_percent"))
        rss.append(dig(doc, "rss_mb"))
        wrss.append(dig(doc, "writer_rss_mb"))
        zrss.append(dig(doc, "zygote_rss_mb"))
        uss.append(dig(doc, "uss_mb") + dig(doc, "writer_uss_mb"))
        zuss.append(dig(doc, "zygote_uss_mb"))
        ref.append(bare_python_rss_mib())
    ref_name = "bare python interpreter RSS"
    rows = [row_from_samples(ref_name, ref, "MiB", reference=ref_name, is_reference=True),
            row_from_samples("daemon RSS, idle", rss, "MiB", reference=ref_name,
                             target=Target("<", 40, label="< 40 MiB")),
            row_from_samples("its record-writer child process, RSS", wrss, "MiB",
                             reference=ref_name,
                             note="storage.writer_process = false: none (in-process writes)"),
            row_from_samples("daemon + writer, private memory (USS)", uss, "MiB"),
            row_from_samples("its Python zygote child, RSS", zrss, "MiB", reference=ref_name,
                             note="boto3 pre-imported when installed (figure 9); "
                                  "executor.python_zygote = false: none"),
            row_from_samples("its Python zygote child, private memory (USS)", zuss, "MiB"),
            row_from_samples(f"daemon CPU over {s.idle_seconds:g} s idle", cpu, "%",
                             target=Target("<", 1.0, label="< 1%"),
                             note="no ratio: the floor is 0")]
    scale = _scale_text(s, f"{s.idle_runs} window(s) of {s.idle_seconds:g} s after "
                           f"{s.idle_workflows} workflows",
                        f"{FULL.idle_runs} x {FULL.idle_seconds:g} s after "
                        f"{FULL.idle_workflows} workflows")
    return Figure(7, "Idle daemon", scale, rows)


# -- 8. Cold auto-start --------------------------------------------------------

def fig_autostart(s: Scale, tmp: Path) -> Figure:
    out = run_script(["bench/autostart.py", "--json", "--runs", str(s.autostart_runs)],
                     timeout=600, env=clean_env())
    doc = parse_json_output(out, "autostart.py")
    cold = next((v for k, v in doc.items() if k.startswith("cold")), None)
    warm = next((v for k, v in doc.items() if k.startswith("warm")), None)
    if not isinstance(cold, dict) or not isinstance(warm, dict):
        raise RuntimeError(f"autostart.py output has no cold/warm rows: {list(doc)}")
    ref = "warm: submit -> id (daemon up)"

    def row(name: str, sm: dict[str, float], **kw: Any) -> Row:
        return Row(name, "s", sm["median"], sm["min"], sm["max"], int(sm.get("n", 0)),
                   reference=ref, **kw)

    rows = [row(ref, warm, is_reference=True),
            row("cold: no daemon -> auto-start -> printed id", cold,
                target=Target("<", 1.0, label="< 1 s"))]
    return Figure(8, "Cold auto-start", f"{s.autostart_runs} runs, each a fresh data dir", rows)


# -- the runner ----------------------------------------------------------------

FIGURES = {"cli": 1, "submit": 2, "tasks": 3, "pyops": 4, "dag": 5, "recovery": 6, "idle": 7,
           "autostart": 8, "zygote": 9, "nickel": 10}
FIGURES["ssh"] = 11  # bench/ssh_install.py
FIGURES["postgres"] = 13  # bench/postgres_tasks.py (12 is bench/cloud_create.py, on its own)
TITLES = {1: "CLI start", 2: "Submit (HTTP, durable)", 3: "Task execution",
          4: "Python business-logic ops", 5: "DAG scale", 6: "Recovery after kill -9",
          7: "Idle daemon", 8: "Cold auto-start", 9: "Python zygote",
          10: "Nickel workflow files"}
TITLES[11] = "Taskserv on 10 ssh hosts"
TITLES[13] = postgres_tasks.TITLE
# only with --only: 11 needs root, openssh-server, and installs Ansible + pyinfra;
# 13 a PostgreSQL server ($PROVISIONING_TEST_PG_DSN: bench/with_postgres.sh)
OPT_IN = {11, 13}


def parse_only(values: list[str]) -> list[int]:
    chosen: list[int] = []
    for v in values:
        for name in filter(None, (x.strip() for x in v.split(","))):
            num = FIGURES.get(name) or (int(name) if name.isdigit() else 0)
            if num not in TITLES:
                numbers = ", ".join(map(str, TITLES))
                raise ValueError(f"unknown figure '{name}' (one of {', '.join(FIGURES)} "
                                 f"or {numbers})")
            chosen.append(num)
    return sorted(set(chosen)) or [n for n in TITLES if n not in OPT_IN]


def run_figure(num: int, s: Scale, lazy_peers: dict[str, peers.Peer]) -> Figure:
    def peer(name: str) -> peers.Peer:
        if name not in lazy_peers:
            lazy_peers[name] = peers.ensure_huey() if name == "huey" else peers.ensure_nushell()
        return lazy_peers[name]

    tmp = Path(tempfile.mkdtemp(prefix=f"bench-fig{num}-", dir=TMP_PARENT))
    t0 = time.perf_counter()
    try:
        fig = {1: lambda: fig_cli(s, tmp), 2: lambda: fig_submit(s, tmp),
               3: lambda: fig_tasks(s, tmp, peer("huey")),
               4: lambda: fig_pyops(s, tmp, peer("nushell")),
               5: lambda: fig_dag(s, tmp), 6: lambda: fig_recovery(s, tmp),
               7: lambda: fig_idle(s, tmp), 8: lambda: fig_autostart(s, tmp),
               9: lambda: fig_zygote(s, tmp),
               10: lambda: nickel_load.figure(s.quick, tmp),
               11: lambda: ssh_install.figure(s.quick, tmp),
               13: lambda: postgres_tasks.figure(
                   postgres_tasks.QUICK if s.quick else postgres_tasks.FULL, tmp)}[num]()
    except Exception as e:  # one broken figure must not hide the others
        traceback.print_exc(file=sys.stderr)
        fig = Figure(num, TITLES[num], rows=[Row(TITLES[num], error=str(e)[:300] or repr(e))])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fig.seconds = time.perf_counter() - t0
    return report.finish(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs, smaller N: < 2 min")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help=f"figures to run: {', '.join(FIGURES)} or 1-9 (repeat or comma-list)")
    ap.add_argument("--out", type=Path, default=report.RESULTS_PATH,
                    help="where to write the JSON results (default bench/results.json)")
    ap.add_argument("--markdown", action="store_true", help="also print the markdown table")
    args = ap.parse_args(argv)
    try:
        chosen = parse_only(args.only)
    except ValueError as e:
        ap.error(str(e))  # exit 2, like any usage error
    s = QUICK if args.quick else FULL
    started = time.time()
    machine = report.machine_info()
    figures: list[Figure] = []
    lazy_peers: dict[str, peers.Peer] = {}
    for num in chosen:
        print(f"bench: {num}. {TITLES[num]} ...", file=sys.stderr, flush=True)
        fig = run_figure(num, s, lazy_peers)
        print(f"bench: {num}. done in {fig.seconds:.1f} s", file=sys.stderr, flush=True)
        figures.append(fig)
    doc = report.to_json(figures, mode="quick" if s.quick else "full", machine=machine,
                         started=started, finished=time.time())
    doc["peers"] = {k: {"version": p.version, "unavailable": p.unavailable}
                    for k, p in lazy_peers.items()}
    path = report.write_results(doc, args.out)
    print(f"machine: {report.machine_markdown(doc['machine'])}")
    print(report.render_text(figures))
    if args.markdown:
        print()
        print(report.render_markdown(figures))
    print(f"\nwrote {path} ({doc['duration_s']} s, {doc['mode']})")
    errors = [r for f in figures for r in f.rows if r.error]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
