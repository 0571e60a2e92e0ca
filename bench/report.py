"""The benchmark report: rows and targets, the terminal table, bench/results.json,
and the markdown table for docs/performance.md (the README's Performance section).

A figure is a list of rows. A row is one measured thing with median/min/max
over repeated runs, in its display unit, and optionally:
- `reference`: the name of the row (same figure, same run) it is a ratio to;
- `target`: what the issue asks, on the value or on the ratio;
- `unavailable` ("peer unavailable: <why>") or `error` instead of numbers.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
RESULTS_PATH = Path(__file__).resolve().parent / "results.json"


@dataclass
class Target:
    """`value <op> limit` on the row's median ("value") or on its ratio ("ratio")."""

    op: str  # "<=" or "<" or ">="
    limit: float
    basis: str = "value"
    label: str = ""

    def check(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return {"<=": value <= self.limit, "<": value < self.limit,
                ">=": value >= self.limit}[self.op]


@dataclass
class Row:
    name: str
    unit: str = ""
    median: float | None = None
    min: float | None = None
    max: float | None = None
    n: int = 0
    reference: str | None = None  # name of the row this one is a ratio to
    is_reference: bool = False
    ratio: float | None = None
    target: Target | None = None
    passed: bool | None = None
    note: str = ""
    unavailable: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = target_text(self.target) if self.target else None
        d["target_spec"] = asdict(self.target) if self.target else None
        return d


@dataclass
class Figure:
    number: int
    title: str
    scale: str = ""  # what N / how many runs, and what --quick shrank
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0  # wall time the figure took to measure


def row_from_samples(name: str, samples: list[float], unit: str, **kw: Any) -> Row:
    return Row(name=name, unit=unit, median=statistics.median(samples), min=min(samples),
               max=max(samples), n=len(samples), **kw)


def target_text(t: Target) -> str:
    if t.label:
        return t.label
    unit = "x" if t.basis == "ratio" else ""
    return f"{t.op} {t.limit:g}{unit}"


def finish(fig: Figure) -> Figure:
    """Fill in ratios (median / the reference row's median) and pass/miss."""
    by_name = {r.name: r for r in fig.rows}
    for r in fig.rows:
        ref = by_name.get(r.reference) if r.reference else None
        if r.is_reference:
            r.ratio = 1.0 if r.median is not None else None
        elif ref is not None and ref.median and r.median is not None:
            r.ratio = r.median / ref.median
        if r.target is not None:
            r.passed = r.target.check(r.ratio if r.target.basis == "ratio" else r.median)
    return fig


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {"nproc": affinity or os.cpu_count(), "cpu_count": os.cpu_count(),
            "cpu_model": model or platform.processor() or "unknown",
            "memory_gib": mem_gib, "python": platform.python_version(),
            "python_impl": platform.python_implementation(), "kernel": platform.release(),
            "machine": platform.machine(), "loadavg_start": list(os.getloadavg()),
            "fsync": os.environ.get("PROVISIONING_FSYNC", "1") != "0",
            "git_commit": commit, "executable": sys.executable}


# -- rendering ---------------------------------------------------------------

def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _cells(r: Row) -> list[str]:
    if r.unavailable or r.error:
        why = r.unavailable or f"error: {r.error}"
        return [r.name, why, "", "", "", "", target_text(r.target) if r.target else "", "-"]
    ratio = "ref" if r.is_reference else (f"{r.ratio:.2f}x" if r.ratio is not None else "")
    verdict = {True: "pass", False: "MISS", None: ""}[r.passed]
    unit = f" {r.unit}" if r.unit else ""
    return [r.name, f"{_num(r.median)}{unit}", _num(r.min), _num(r.max), str(r.n) if r.n else "",
            ratio, target_text(r.target) if r.target else "", verdict]


HEADER = ["benchmark", "median", "min", "max", "runs", "ratio", "target", "result"]


def render_text(figures: list[Figure]) -> str:
    lines = []
    widths = [46, 22, 8, 8, 4, 8, 14, 6]
    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    lines.append(fmt(HEADER))
    for fig in figures:
        lines.append(f"-- {fig.number}. {fig.title}" + (f" ({fig.scale})" if fig.scale else ""))
        for r in fig.rows:
            cells = _cells(r)
            if r.unavailable or r.error:
                lines.append(f"{r.name:<46}  {cells[1]}")
            else:
                lines.append(fmt(cells))
            if r.note:
                lines.append(f"{'':<4}{r.note}")
    return "\n".join(lines)


def render_markdown(figures: list[Figure]) -> str:
    out = ["| # | benchmark | median | min | max | runs | ratio | target | result |",
           "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for fig in figures:
        for i, r in enumerate(fig.rows):
            label = f"{fig.number}. {fig.title}" if i == 0 else ""
            cells = _cells(r)
            name = r.name + (f" — {r.note}" if r.note else "")
            if r.unavailable or r.error:
                out.append(f"| {label} | {name} | {cells[1]} | | | | | {cells[6]} | - |")
            else:
                out.append(f"| {label} | {name} | " + " | ".join(cells[1:]) + " |")
    return "\n".join(out)


def to_json(figures: list[Figure], *, mode: str, machine: dict[str, Any],
            started: float, finished: float) -> dict[str, Any]:
    return {"schema": SCHEMA, "mode": mode,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(finished - started, 1),
            "machine": {**machine, "loadavg_end": list(os.getloadavg())},
            "figures": [{"figure": f.number, "title": f.title, "scale": f.scale,
                         "seconds": round(f.seconds, 2),
                         "rows": [r.to_dict() for r in f.rows]} for f in figures]}


def write_results(doc: dict[str, Any], path: Path = RESULTS_PATH) -> Path:
    """Atomic (temp file, fsync, rename) so a reader never sees half a report."""
    from provisioning import fsutil

    fsutil.atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
    return path


def machine_markdown(m: dict[str, Any]) -> str:
    load = "/".join(f"{x:.2f}" for x in m.get("loadavg_start", []))
    return (f"{m['nproc']} cores ({m['cpu_model']}), {m.get('memory_gib')} GiB, "
            f"Python {m['python']} ({m['python_impl']}), Linux {m['kernel']} {m['machine']}, "
            f"fsync {'on' if m['fsync'] else 'OFF'}, load average at start {load}, "
            f"commit {m.get('git_commit') or '?'}")
