"""Figure 4: Python business-logic ops through the engine vs bare `python -c pass` spawns.

Every task of `provisioning` is a fresh process; for a Python op the floor of
that design is one interpreter start. This times N built-in `noop` ops (a
Python script that reads its params from stdin and exits) run by the engine
one at a time, against N bare `python -c pass` spawns of the same interpreter,
one at a time, in the same run. Sequential on purpose: on 2 cores a parallel
run measures the CPU count, not the per-op cost.

Three engine rows:
- "engine + JSON store, zygote": the daemon's path (JsonFileStore in a temp dir
  under /var/tmp, a real disk; fsync as PROVISIONING_FSYNC says, on by default),
  each op forked from the Python zygote (engine/zygote.py, the daemon's default);
- "engine + JSON store, plain spawn": the same with `executor.python_zygote = false`;
- "engine, memory store": the engine and executor alone (direct mode: plain spawn).
Targets: the zygote row <= 0.3x the bare spawn (issue 19); plain spawn <= 1.5x
(issue 8).

The bare spawn runs `sys.executable` (the venv's interpreter, a symlink to the
real binary, never the pyenv shim that `python3` on PATH is here), as the
registry's argv for a Python op does.

Usage: python bench/python_ops.py [--ops 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_RATIO = 1.5
ZYGOTE_TARGET_RATIO = 0.3


def bare_spawns(n: int) -> float:
    """Seconds for n sequential `python -c pass` (stdin fed like an op's params)."""
    argv = [sys.executable, "-c", "pass"]
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(argv, input=b"{}", stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def engine_ops(n: int, root: Path, *, memory: bool, zygote: bool = False) -> float:
    """Seconds from submit to finish of one workflow of n `noop` tasks, parallelism 1."""
    from provisioning.config import load_config
    from provisioning.engine.engine import Engine
    from provisioning.engine.loader import parse_workflow
    from provisioning.paths import DataPaths

    config = load_config(environ={"PROVISIONING_STORAGE_DATA_DIR": str(root / "data"),
                                  "PROVISIONING_SHARE_DIR": str(root / "share"),
                                  "PROVISIONING_ETC_DIR": str(root / "etc"),
                                  "PROVISIONING_USER_CONFIG_DIR": str(root / "userconfig"),
                                  "PROVISIONING_EXECUTOR_MAX_CONCURRENT_TASKS": "1"})
    if memory:
        from provisioning.store.memory import MemoryStore
        store = MemoryStore(root / "files")
    else:
        from provisioning.store.jsonfile import JsonFileStore
        store = JsonFileStore(DataPaths(root / "data"))
    engine = Engine(store, config, python_zygote=zygote)
    engine.start()
    try:
        lean = engine.zygotes.lean
        if zygote and not (lean and lean.started.wait(120) and lean.pid):
            raise RuntimeError("the Python zygote did not start")
        spec = parse_workflow({"workflow": {"name": "python-ops", "max_parallel": 1},
                               "tasks": [{"id": f"op{i}", "op": "noop", "params": {"i": i}}
                                         for i in range(n)]},
                              source="bench", registry=engine.registry)
        t0 = time.perf_counter()
        wid = engine.submit(spec)["workflow_id"]
        final = engine.wait(wid, timeout=600)
        elapsed = time.perf_counter() - t0
    finally:
        engine.shutdown(0)
    if final["status"] != "succeeded":
        raise RuntimeError(f"noop workflow ended {final['status']}: {final.get('counts')}")
    return elapsed


def measure(n: int, base_dir: str | None = None) -> dict[str, Any]:
    """One repetition: seconds for each of the three rows, n ops each."""
    root = Path(tempfile.mkdtemp(prefix="bench-pyops-", dir=base_dir or "/var/tmp"))
    try:
        bare = bare_spawns(n)
        forked = engine_ops(n, root / "zygote", memory=False, zygote=True)
        json_store = engine_ops(n, root / "json", memory=False)
        memory = engine_ops(n, root / "memory", memory=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"ops": n, "bare_s": bare, "engine_zygote_s": forked, "engine_json_s": json_store,
            "engine_memory_s": memory, "interpreter": interpreter()}


def interpreter() -> str:
    """Which interpreter the bare spawns (and every Python op) ran."""
    real = os.path.realpath(sys.executable)
    return sys.executable if real == sys.executable else f"{sys.executable} -> {real}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--dir", help="parent of the temp data dir (default /var/tmp)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = measure(args.ops, args.dir)
    n = res["ops"]
    res["ratio"] = res["engine_json_s"] / res["bare_s"]
    res["target_ratio"] = TARGET_RATIO
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for key, label in (("bare_s", "python -c pass"), ("engine_zygote_s", "engine, zygote"),
                           ("engine_json_s", "engine + JSON store"),
                           ("engine_memory_s", "engine, memory store")):
            print(f"{label:<24} {res[key]:7.3f} s  {res[key] / n * 1000:6.2f} ms/op  "
                  f"{res[key] / res['bare_s']:5.2f}x")
        print(f"target <= {TARGET_RATIO}x: {'meets' if res['ratio'] <= TARGET_RATIO else 'MISSES'}")
    return res


if __name__ == "__main__":
    main()
