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
from tests import pg_fixture  # at import: it reads PROVISIONING_TEST_PG_* before `isolated`
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


def test_the_postgres_figure_is_opt_in_and_named():
    from bench.__main__ import OPT_IN, parse_only

    assert 13 in OPT_IN and 13 not in parse_only([])
    assert parse_only(["postgres"]) == [13] == parse_only(["13"])


def test_the_postgres_figure_without_a_server_says_why(tmp_path):
    from bench import postgres_tasks

    fig = postgres_tasks.figure(postgres_tasks.TINY, tmp_path)  # isolated: no PROVISIONING_*
    assert [r.unavailable for r in fig.rows] == [
        "peer unavailable: no PostgreSQL: PROVISIONING_TEST_PG_DSN is unset "
        "(bench/with_postgres.sh starts a throwaway server)"]


@pytest.mark.slow
def test_the_postgres_figure_runs_with_tiny_sizes(tmp_path, monkeypatch):
    """Figure 13 end to end on the test server, tiny: 12 tasks on files and on
    1 and 2 daemons, a few submits, one takeover with a 1 s lease. Only the
    report's shape is checked, never a time."""
    from bench import postgres_tasks

    monkeypatch.setenv("PROVISIONING_TEST_PG_DSN", pg_fixture.admin_dsn())
    if pg_fixture._ENV["DATA"]:
        monkeypatch.setenv("PROVISIONING_TEST_PG_DATA", pg_fixture._ENV["DATA"])
    fig = report.finish(postgres_tasks.figure(postgres_tasks.TINY, tmp_path))
    assert fig.number == 13 and len(fig.rows) >= 12
    for r in fig.rows:
        assert not r.error, r
        if r.unavailable:
            assert r.unavailable.startswith("peer unavailable: "), r
            continue
        assert _is_number(r.median) and r.min <= r.median <= r.max, r
        if r.target:
            assert r.passed in (True, False), r
        if r.reference:
            assert _is_number(r.ratio), r
    names = [r.name for r in fig.rows]
    assert "daemon CPU/task, postgres, 2 daemons" in names
    assert "kill -9 of the owner -> a peer holds the lease" in names
    text = report.render_text([fig])
    assert "-- 13. PostgreSQL, several daemons" in text
