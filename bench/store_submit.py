"""Durable submissions per second of JsonFileStore, fsync on (unless PROVISIONING_FSYNC=0).

Measures what the daemon's submit path costs in the store alone:
  1. add_workflow of single-task workflows, one thread: latency p50/p99, rate;
  2. the same from N threads at once (an HTTP server with N clients, if the
     engine lets submissions write in parallel);
  3. commit_batch(adds=...): a group commit of B workflows per call (an engine that batches
     submissions arriving together): rate;
  4. load() of the resulting queue (recovery at start), and of 10,000 tasks.
Target (issue 3): >= 500 durable submissions/s on a 2-core machine, load of
10,000 tasks well under 2 s.

Usage: python bench/store_submit.py [--n 2000] [--threads 8] [--batch 16] [--json]
       [--dir DIR]   (default: a temp dir under /var/tmp, a real disk, not tmpfs)
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from provisioning import fsutil  # noqa: E402
from provisioning.model import TaskSpec, WorkflowSpec, new_submission  # noqa: E402
from provisioning.paths import DataPaths  # noqa: E402
from provisioning.store.jsonfile import JsonFileStore  # noqa: E402

_seq = itertools.count(1)
SPEC = WorkflowSpec(name="bench", tasks=(TaskSpec(id="t1", op="noop", params={"n": 1}),))


def one_submission(tasks_per_workflow: int = 1):
    spec = SPEC if tasks_per_workflow == 1 else WorkflowSpec(
        name="bench", tasks=tuple(TaskSpec(id=f"t{i}", op="noop")
                                  for i in range(tasks_per_workflow)))
    wid = str(uuid.uuid4())
    seq = next(_seq)
    return new_submission(wid, spec, last_seq=seq, now=time.time())


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def bench_single(store: JsonFileStore, n: int) -> dict:
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        wf, tasks = one_submission()
        t = time.perf_counter()
        store.add_workflow(wf, tasks)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    return {"n": n, "per_s": n / total, "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": pct(lat, 99) * 1000}


def bench_threads(store: JsonFileStore, n: int, threads: int) -> dict:
    per = n // threads
    work = [[one_submission() for _ in range(per)] for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def run(items):
        start.wait()
        for wf, tasks in items:
            store.add_workflow(wf, tasks)

    ts = [threading.Thread(target=run, args=(w,)) for w in work]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    total = time.perf_counter() - t0
    return {"n": per * threads, "threads": threads, "per_s": per * threads / total}


def bench_batch(store: JsonFileStore, n: int, batch: int) -> dict:
    groups = [[one_submission() for _ in range(batch)] for _ in range(n // batch)]
    t0 = time.perf_counter()
    for g in groups:
        store.commit_batch(adds=g)
    total = time.perf_counter() - t0
    return {"n": batch * len(groups), "batch": batch, "per_s": batch * len(groups) / total}


def bench_load(paths: DataPaths) -> dict:
    t0 = time.perf_counter()
    workflows, tasks = JsonFileStore(paths).load()
    return {"workflows": len(workflows), "tasks": len(tasks), "s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dir", help="parent of the temp data dir (default /var/tmp)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir or "/var/tmp"))
    try:
        paths = DataPaths(base / "data")
        store = JsonFileStore(paths)
        res = {"fsync": fsutil.FSYNC,
               "single": bench_single(store, args.n),
               "threads": bench_threads(store, args.n, args.threads),
               "batch": bench_batch(store, args.n, args.batch),
               "load_all": bench_load(paths)}
        big = DataPaths(base / "big")
        big_store = JsonFileStore(big)
        for _ in range(100):  # 100 groups of 10 workflows x 10 tasks = 10,000 tasks
            big_store.commit_batch(adds=[one_submission(10) for _ in range(10)])
        res["load_10k_tasks"] = bench_load(big)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        s, th, b = res["single"], res["threads"], res["batch"]
        print(f"fsync: {'on' if res['fsync'] else 'OFF'}")
        print(f"add_workflow, 1 thread       : {s['per_s']:8.0f}/s  p50 {s['p50_ms']:.2f} ms  "
              f"p99 {s['p99_ms']:.2f} ms  (n={s['n']})")
        print(f"add_workflow, {th['threads']} threads      : {th['per_s']:8.0f}/s  (n={th['n']})")
        print(f"commit_batch(adds), batch of {b['batch']:<3}  : {b['per_s']:8.0f}/s  (n={b['n']})")
        for k in ("load_all", "load_10k_tasks"):
            r = res[k]
            print(f"load() {r['workflows']:6d} workflows {r['tasks']:6d} tasks: {r['s']:.3f} s")
    return res


if __name__ == "__main__":
    main()
