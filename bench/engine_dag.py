"""Benchmark: a 10,000-task DAG with 30,000 edges through the engine.

    .venv/bin/python bench/engine_dag.py [--tasks 10000] [--edges-per-task 3]

Measures, with no task processes (noop-style accounting: each claimed task
completes at once, in-process), so only engine overhead is timed:
- load + validate of the JSON workflow file (target: well under 1 s);
- submit + schedule every task to completion in dependency/priority order
  (target: under 1 s of engine overhead);
- memory per queued task (tracemalloc; engine records + indexes, no store copy).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioning.config import load_config  # noqa: E402
from provisioning.engine.engine import Engine  # noqa: E402
from provisioning.engine.executor import TaskOutcome  # noqa: E402
from provisioning.engine.flows import Running  # noqa: E402
from provisioning.engine.loader import load_workflow_file  # noqa: E402
from provisioning.engine.scheduler import Scheduler  # noqa: E402
from provisioning.model.storage import Store  # noqa: E402


class NullStore(Store):
    """Persists nothing: isolates engine cost from storage cost."""

    def __init__(self, root: Path):
        self.root = root

    def commit_batch(self, **batch): pass
    def add_workflow(self, workflow, tasks): pass
    def save_workflow(self, workflow): pass
    def save_task(self, task): pass
    def append_event(self, workflow_id, event): pass
    def load(self): return [], []
    def load_events(self, workflow_id): return []
    def quarantined_count(self): return 0
    def task_log_path(self, workflow_id, task_id): return self.root / "x.log"
    def checkpoint_path(self, workflow_id, task_id): return self.root / "x.json"
    writer_pid = None
    def close(self): pass


class InstantScheduler(Scheduler):
    """Every claimed task succeeds at once: the scheduler's own cost, no processes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._instant: list[tuple[str, int]] = []  # claimed, to complete at once
        self._starting = False

    def _launch(self, task, argv, lease_token, gate):
        self._instant.append((task["key"], lease_token))
        return Running(process=SimpleNamespace(pid=None, finished=True),
                       lease_token=lease_token, task_token="")

    def start_ready(self):
        if self._starting:  # called again by a completion: the loop below goes on
            return
        self._starting = True
        try:
            while True:
                super().start_ready()
                if not self._instant:
                    return
                done, self._instant = self._instant, []
                for key, token in done:
                    self._ended_run(key, token, TaskOutcome(exit_code=0))
        finally:
            self._starting = False


class InstantEngine(Engine):
    scheduler_class = InstantScheduler


def make_dag(n: int, per_task: int, seed: int = 7) -> dict:
    rng = random.Random(seed)
    target = n * per_task
    tasks, edges = [], 0
    for i in range(n):
        k = min(i, per_task)
        if i >= n - 2:  # top up the last tasks so the edge count is exact
            k = min(i, target - edges - (n - 1 - i) * per_task)
        deps = rng.sample(range(i), k) if k else []
        edges += len(deps)
        tasks.append({"id": f"t{i}", "op": "noop", "depends_on": [f"t{d}" for d in deps],
                      "priority": rng.choice(["low", "normal", "high", "critical"])})
    return {"workflow": {"name": "dag-bench"}, "tasks": tasks}, edges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--edges-per-task", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        doc, edges = make_dag(args.tasks, args.edges_per_task)
        f = root / "dag.json"
        f.write_text(json.dumps(doc))
        config = load_config(environ={"PROVISIONING_STORAGE_DATA_DIR": str(root / "data"),
                                      "PROVISIONING_EXECUTOR_MAX_CONCURRENT_TASKS": "10"})

        engine = InstantEngine(NullStore(root), config)
        t0 = time.perf_counter()
        spec = load_workflow_file(f, registry=engine.registry)
        load_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        wid = engine.submit(spec)["workflow_id"]
        engine.start()
        final = engine.wait(wid, timeout=120)
        run_s = time.perf_counter() - t0
        engine.shutdown(0)
        assert final["status"] == "succeeded", final["counts"]

        # Memory per queued task: submit to an engine that is never started.
        idle = InstantEngine(NullStore(root), config)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        idle.submit(spec)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))

    print(f"tasks={args.tasks} edges={edges}")
    print(f"load+validate (JSON file): {load_s:.3f} s")
    print(f"submit+schedule to completion (engine overhead): {run_s:.3f} s "
          f"({run_s / args.tasks * 1e6:.0f} us/task)")
    print(f"memory per queued task (engine records, indexes, events): "
          f"{grown / args.tasks:.0f} bytes")


if __name__ == "__main__":
    main()
