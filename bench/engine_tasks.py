"""Benchmark: 500 trivial tasks (`shell.run` of `true`) at parallelism 10,
against `xargs -P10` running the same 500 commands, in the same run.

    .venv/bin/python bench/engine_tasks.py [--tasks 500] [--parallel 10]

    .venv/bin/python bench/engine_tasks.py --store json [--dir /var/tmp]

Prints both wall times and the ratio (target <= 1.5x, issue 19), and the start-up cost of a
Python op (built-in `noop`) against a bare `python -c pass` (target <= 1.5x).
The engine runs in-process; each task is a fresh subprocess with its own
session, log file, timeout and cleaned environment.
`--store memory` (default): a MemoryStore, direct mode, the engine alone.
`--store json`: the daemon's durable path, JsonFileStore in a temp dir under
/var/tmp (a real disk) with fsync ON and its writer process, as in the
daemon: every claim, pid and completion is written and fsynced
(group-committed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioning.config import load_config  # noqa: E402
from provisioning.engine.engine import Engine  # noqa: E402
from provisioning.engine.loader import parse_workflow  # noqa: E402
from provisioning.store.jsonfile import JsonFileStore  # noqa: E402
from provisioning.store.memory import MemoryStore  # noqa: E402


def run_xargs(n: int, parallel: int) -> float:
    lines = "".join(f"{i}\n" for i in range(n)).encode()  # `true <i>`, 500 times
    t0 = time.perf_counter()
    subprocess.run(["xargs", f"-P{parallel}", "-n1", "true"], input=lines, check=True)
    return time.perf_counter() - t0


def run_engine(n: int, parallel: int, tmp: Path, store_kind: str = "memory") -> float:
    config = load_config(environ={"PROVISIONING_STORAGE_DATA_DIR": str(tmp / "data"),
                                  "PROVISIONING_EXECUTOR_MAX_CONCURRENT_TASKS": str(parallel)})
    store = (JsonFileStore(config.data_paths(), writer_process=True) if store_kind == "json"
             else MemoryStore(tmp / "files"))
    engine = Engine(store, config)
    engine.start()
    spec = parse_workflow({"workflow": {"name": "bench", "max_parallel": parallel},
                           "tasks": [{"id": f"t{i}", "op": "shell.run",
                                      "params": {"argv": ["true"]}} for i in range(n)]},
                          source="bench", registry=engine.registry)
    t0 = time.perf_counter()
    wid = engine.submit(spec)["workflow_id"]
    final = engine.wait(wid)
    elapsed = time.perf_counter() - t0
    engine.shutdown(0)
    if final["status"] != "succeeded":
        raise SystemExit(f"engine run failed: {final['counts']}")
    return elapsed


def python_op_overhead(runs: int = 40) -> tuple[float, float]:
    """Mean spawn-to-exit of the built-in `noop` op vs a bare `python -c pass`."""
    from provisioning.ops.registry import OpRegistry

    noop = OpRegistry([]).resolve("noop")

    def mean(argv: list[str]) -> float:
        t0 = time.perf_counter()
        for _ in range(runs):
            subprocess.run(argv, input=b"{}", check=True)
        return (time.perf_counter() - t0) / runs

    return mean(noop), mean([sys.executable, "-c", "pass"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--store", choices=("memory", "json"), default="memory")
    ap.add_argument("--dir", default="/var/tmp",
                    help="parent of the temp data dir (json store; default /var/tmp)")
    ap.add_argument("--no-python-op", action="store_true", help="skip the noop start-up part")
    args = ap.parse_args()
    from provisioning import fsutil

    if args.store == "memory":
        fsutil.FSYNC = False  # nothing durable to measure
    with tempfile.TemporaryDirectory(prefix="prov-bench-", dir=args.dir) as d:
        xargs_s = run_xargs(args.tasks, args.parallel)
        engine_s = run_engine(args.tasks, args.parallel, Path(d), args.store)
    fsync = "on" if fsutil.FSYNC else "off"
    print(f"tasks={args.tasks} parallel={args.parallel} cpus={os.cpu_count()} "
          f"store={args.store} fsync={fsync}")
    print(f"xargs -P{args.parallel}: {xargs_s:.3f} s")
    print(f"engine:     {engine_s:.3f} s  ({engine_s / args.tasks * 1000:.2f} ms/task)")
    print(f"ratio engine/xargs: {engine_s / xargs_s:.2f}x (target <= 1.5x)")
    if args.no_python_op:
        return
    op_s, bare_s = python_op_overhead()
    print(f"python op `noop`: {op_s * 1000:.1f} ms vs `python -c pass`: {bare_s * 1000:.1f} ms "
          f"({op_s / bare_s:.2f}x, target <= 1.5x)")


if __name__ == "__main__":
    main()
