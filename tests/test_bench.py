"""The benchmark suite runs and reports every figure. Never a timed test: no
assertion here depends on how fast anything was, only on the report's shape."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from bench import report
from bench.report import Figure, Row, Target
from tests.conftest import REPO

FIGURES = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.mark.slow
def test_quick_bench_runs_and_reports_every_figure(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["mode"] == "quick"
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["python"]
    assert {f["figure"] for f in doc["figures"]} == FIGURES
    for fig in doc["figures"]:
        assert fig["rows"], fig
        assert any(r["is_reference"] for r in fig["rows"]), f"figure {fig['figure']}: no reference"
        for r in fig["rows"]:
            assert not r["error"], r
            if r["unavailable"]:  # only a peer may be missing, and it says why
                assert r["unavailable"].startswith(("peer unavailable: ", "peer failed: ")), r
                continue
            for key in ("median", "min", "max"):
                assert _is_number(r[key]), r
            assert r["min"] <= r["median"] <= r["max"], r
            if r["target"]:
                assert r["passed"] in (True, False), r
            if r["reference"]:
                assert _is_number(r["ratio"]), r
    # The table went to stdout with every figure's heading.
    for fig in doc["figures"]:
        assert f"-- {fig['figure']}. {fig['title']}" in done.stdout


def test_report_computes_ratios_targets_and_renders_unavailable_peers(tmp_path):
    fig = report.finish(Figure(3, "Task execution", rows=[
        Row("xargs", "s", 1.0, 0.9, 1.1, 3, reference="xargs", is_reference=True),
        Row("daemon", "s", 2.5, 2.0, 3.0, 3, reference="xargs",
            target=Target("<=", 2.0, "ratio")),
        Row("submit p50", "ms", 4.0, 3.0, 6.0, 3, target=Target("<=", 5.0, label="<= 5 ms")),
        Row("huey", unavailable="peer unavailable: no network"),
    ]))
    xargs, daemon, p50, huey = fig.rows
    assert xargs.ratio == 1.0 and xargs.passed is None
    assert daemon.ratio == pytest.approx(2.5) and daemon.passed is False
    assert p50.ratio is None and p50.passed is True
    text = report.render_text([fig])
    assert "MISS" in text and "peer unavailable: no network" in text
    md = report.render_markdown([fig])
    assert "| 3. Task execution | xargs |" in md
    assert "peer unavailable: no network" in md
    path = report.write_results(report.to_json([fig], mode="quick", machine=report.machine_info(),
                                               started=0.0, finished=1.0), tmp_path / "r.json")
    saved = json.loads(path.read_text())
    assert saved["figures"][0]["rows"][1]["target"] == "<= 2x"
    assert saved["figures"][0]["rows"][1]["passed"] is False
    assert (path.stat().st_mode & 0o777) == 0o600
