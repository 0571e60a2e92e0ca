"""Small helpers shared by the benchmark scripts: timing, ratio tables, process CPU."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def time_command(argv: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    """Wall time of `argv`, `runs` times (after one warm-up run), in seconds."""
    full_env = {**os.environ, **(env or {})}
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=full_env,
                   check=True)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=full_env,
                       check=True)
        out.append(time.perf_counter() - t0)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples)}


def print_row(name: str, s: dict[str, float], ref: dict[str, float] | None = None,
              unit: str = "ms", scale: float = 1000.0) -> None:
    ratio = f"{s['median'] / ref['median']:.2f}x" if ref else ""
    print(f"{name:<44} {s['median'] * scale:9.1f} {s['min'] * scale:9.1f} "
          f"{s['max'] * scale:9.1f} {unit:<3} {ratio}")


def process_and_children(pids: list[int]) -> list[Any]:
    """psutil.Process of each pid and of the children each has now (of a daemon
    with no task running: its record writer and its zygote)."""
    import psutil

    out = []
    for pid in pids:
        p = psutil.Process(pid)
        out += [p, *p.children()]
    return out


def cpu_snapshot(procs: list[Any]) -> dict[int, float]:
    import psutil

    out = {}
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """Seconds of CPU between two snapshots (a process gone meanwhile adds none)."""
    return sum(after[pid] - before[pid] for pid in before if pid in after)


def postgres_server_cpu() -> float | None:
    """CPU seconds so far of the PostgreSQL server: the postmaster (with the
    backends it reaped) and its live processes; the difference of two readings
    is what it did between them. None when its data dir is not known."""
    import psutil

    data = os.environ.get("PROVISIONING_TEST_PG_DATA")
    if not data:
        return None
    pm = psutil.Process(int(Path(data, "postmaster.pid").read_text().split()[0]))
    t = pm.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for c in pm.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            ct = c.cpu_times()
            total += ct.user + ct.system
    return total
