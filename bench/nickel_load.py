"""Benchmark: loading a 1,000-task workflow written in Nickel, TOML and JSON.

    .venv/bin/python bench/nickel_load.py [--tasks 1000] [--runs 10] [--json]

The same workflow three ways (each task: an op, params, a priority, a retry
count and a dependency on an earlier task). The Nickel file generates its
tasks with std.array.map and applies the shipped contract, as a user would
write it. Each row is load_workflow_file() (read, evaluate, validate) in this
process; the Nickel rows include the bounded child process the loader
evaluates in (provisioning/nickel.py). Two more rows split that cost: the
same evaluation by py-nickel in this process (no bound: what the child
costs), and a 1-task .ncl file (the fixed cost of one evaluation).

Also the figure `nickel` of `python -m bench` (see figure()).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioning import nickel  # noqa: E402
from provisioning.engine.loader import load_workflow_file  # noqa: E402

NCL = """let P = import "provisioning/workflow.ncl" in
let n = {tasks} in
let level = fun i => std.array.at (i % 4) ['low, 'normal, 'high, 'critical] in
{{
  workflow = {{ name = "bench-{tasks}", max_parallel = 10 }},
  tasks = std.array.map (fun i => {{
      id = "task-%{{std.to_string i}}",
      op = "noop",
      params = {{ index = i, infra = "bench" }},
      priority = level i,
      retries = i % 3,
      depends_on = if i < 10 then [] else ["task-%{{std.to_string (i - 10)}}"],
    }}) (std.array.range 0 n),
}} | P.Workflow
"""
SMALL_NCL = ('let P = import "provisioning/workflow.ncl" in\n'
             '{ tasks = [ { id = "a", op = "noop" } ] } | P.Workflow\n')
PRIORITIES = ("low", "normal", "high", "critical")


def workflow_doc(tasks: int) -> dict:
    return {"workflow": {"name": f"bench-{tasks}", "max_parallel": 10},
            "tasks": [{"id": f"task-{i}", "op": "noop", "params": {"index": i, "infra": "bench"},
                       "priority": PRIORITIES[i % 4], "retries": i % 3,
                       "depends_on": [] if i < 10 else [f"task-{i - 10}"]}
                      for i in range(tasks)]}


def to_toml(doc: dict) -> str:
    lines = ["[workflow]", f'name = "{doc["workflow"]["name"]}"', "max_parallel = 10", ""]
    for t in doc["tasks"]:
        deps = ", ".join(f'"{d}"' for d in t["depends_on"])
        lines += ["[[tasks]]", f'id = "{t["id"]}"', f'op = "{t["op"]}"',
                  f'params = {{ index = {t["params"]["index"]}, infra = "bench" }}',
                  f'priority = "{t["priority"]}"', f"retries = {t['retries']}",
                  f"depends_on = [{deps}]", ""]
    return "\n".join(lines)


def write_files(tmp: Path, tasks: int) -> dict[str, Path]:
    doc = workflow_doc(tasks)
    files = {"json": tmp / "wf.json", "toml": tmp / "wf.toml", "ncl": tmp / "wf.ncl",
             "small": tmp / "small.ncl"}
    files["json"].write_text(json.dumps(doc, indent=1))
    files["toml"].write_text(to_toml(doc))
    files["ncl"].write_text(NCL.format(tasks=tasks))
    files["small"].write_text(SMALL_NCL)
    # the three say the same: a benchmark of different workflows would mean nothing
    specs = [load_workflow_file(files[k]) for k in ("json", "toml", "ncl")]
    if not specs[0] == specs[1] == specs[2]:
        raise RuntimeError("the JSON, TOML and Nickel workflows differ")
    return files


def in_process_eval(path: Path) -> None:
    """py-nickel in this process, unbounded: the evaluation alone."""
    import nickel as pynickel  # lazy: only this row needs the library in-process

    expr = f'import "{path.resolve()}"'
    json.loads(pynickel.run(expr, import_paths=[str(nickel.CONTRACTS_DIR)]))


def sample(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up: page cache, pyc files, the .so
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def measure(tasks: int, runs: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="bench-nickel-") as d:
        files = write_files(Path(d), tasks)
        rows = {
            f"JSON, {tasks} tasks: load + validate": lambda: load_workflow_file(files["json"]),
            f"TOML, {tasks} tasks: load + validate": lambda: load_workflow_file(files["toml"]),
            f"Nickel, {tasks} tasks: load + validate (bounded child)":
                lambda: load_workflow_file(files["ncl"]),
            f"Nickel, {tasks} tasks: py-nickel in-process, evaluation only":
                lambda: in_process_eval(files["ncl"]),
            "Nickel, 1 task: load + validate (bounded child)":
                lambda: load_workflow_file(files["small"]),
        }
        return {name: sample(fn, runs) for name, fn in rows.items()}


def figure(quick: bool, tmp: Path):
    """Figure 10 of `python -m bench`: ratios to the JSON load in the same run."""
    from bench.report import Figure, Row, Target, row_from_samples

    tasks, runs = 1000, (3 if quick else 10)
    if not nickel.library_available():
        return Figure(10, "Nickel workflow files", rows=[Row(
            "Nickel load", unavailable="peer unavailable: py-nickel is not installed "
            "(extra provisioning[nickel], Python >= 3.11)")])
    samples = measure(tasks, runs)
    ref = next(iter(samples))
    rows = [row_from_samples(name, values, "ms", reference=ref, is_reference=name == ref)
            for name, values in samples.items()]
    for r in rows:
        if "load + validate (bounded child)" in r.name and r.name.startswith("Nickel, 1000"):
            r.target = Target("<", 1000, label="< 1 s")
    return Figure(10, "Nickel workflow files", f"{runs} runs each after one warm-up", rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print the samples as JSON")
    args = ap.parse_args()
    samples = measure(args.tasks, args.runs)
    if args.json:
        print(json.dumps({k: {"median": statistics.median(v), "min": min(v), "max": max(v),
                              "n": len(v)} for k, v in samples.items()}, indent=1))
        return 0
    ref = statistics.median(next(iter(samples.values())))
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"{name:<62} {med:8.1f} ms  ({min(values):.1f}-{max(values):.1f})  "
              f"{med / ref:5.1f}x JSON")
    return 0


if __name__ == "__main__":
    sys.exit(main())
