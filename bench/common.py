"""Small helpers shared by the benchmark scripts: timing and ratio tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

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
