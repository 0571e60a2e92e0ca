"""Concurrency against the real daemon: many submitters, racing controls, racing daemons."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.daemon_fixture import ORCHESTRATOR, start_daemon, write_config

PROCESSES, PER_PROCESS = 50, 100

SUBMITTER = textwrap.dedent("""
    import http.client, json, sys, time
    port, token, who, count = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    ids = []
    conn = None
    for i in range(count):
        body = json.dumps({"workflow": {"name": f"{who}-{i}"},
                           "tasks": [{"id": "t", "op": "noop"}]})
        for attempt in range(50):  # 503 "too many connections": retry as the API says
            conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("POST", "/workflows", body, {
                "Authorization": "Bearer " + token, "Content-Type": "application/json",
                "Host": f"127.0.0.1:{port}"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            if resp.status == 503:
                conn.close()
                conn = None
                time.sleep(0.05 * (attempt + 1))
                continue
            assert resp.status == 202, (resp.status, data)
            ids.append(data["workflow_id"])
            break
        else:
            raise SystemExit(f"gave up on {who}-{i}")
    print(json.dumps(ids))
""")


def blocker(seconds: int = 600) -> dict:
    return {"workflow": {"name": "blocker"},
            "tasks": [{"id": "block", "op": "shell.run",
                       "params": {"argv": ["sleep", str(seconds)]}}]}


@pytest.mark.slow
def test_50_processes_x_100_submissions_each_land_exactly_once(tmp_path: Path):
    cfg = {"executor": {"max_concurrent_tasks": 1, "shutdown_grace_seconds": 1,
                        "kill_grace_seconds": 1}}
    d = start_daemon(tmp_path, **cfg)
    # one running task parks the executor: every submission stays queued, only the
    # submit path is under test
    status, park = d.request("POST", "/workflows", blocker())
    assert status == 202
    procs = [subprocess.Popen([sys.executable, "-c", SUBMITTER, str(d.port), d.token,
                               f"p{n:02d}", str(PER_PROCESS)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in range(PROCESSES)]
    expected: dict[str, str] = {}
    for n, p in enumerate(procs):
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        ids = json.loads(out)
        assert len(ids) == PER_PROCESS
        expected.update({wid: f"p{n:02d}-{i}" for i, wid in enumerate(ids)})
    assert len(expected) == PROCESSES * PER_PROCESS  # every id handed out once

    def check(daemon) -> None:
        status, body = daemon.request("GET", "/workflows", timeout=120)
        listed = Counter(w["workflow_id"] for w in body["workflows"] if w["name"] != "blocker")
        assert len(listed) == len(expected) and set(listed.values()) == {1}
        assert {w["workflow_id"]: w["name"] for w in body["workflows"]
                if w["name"] != "blocker"} == expected
        files = [p for p in (daemon.data_dir / "workflows").glob("*.json")]
        assert len(files) == len(expected) + 1

    check(d)
    d.kill()  # and they are durable: all of them, once, after a kill -9
    d2 = start_daemon(tmp_path, **cfg)
    check(d2)
    d2.request("POST", f"/workflows/{park['workflow_id']}/cancel")
    d2.wait_workflow(park["workflow_id"], ("cancelled",))  # its sleep is killed and reaped
    d2.stop()
    print(f"\nsubmissions: {len(expected)} from {PROCESSES} processes, lost 0, duplicated 0")


def test_concurrent_cancel_retry_submit_on_one_workflow_never_500(tmp_path: Path):
    d = start_daemon(tmp_path, executor={"max_concurrent_tasks": 4, "kill_grace_seconds": 1,
                                         "shutdown_grace_seconds": 2})
    spec = {"workflow": {"name": "contended", "max_parallel": 3},
            "tasks": [{"id": f"t{i}", "op": "shell.run",
                       "params": {"argv": ["sh", "-c", f"sleep 0.0{i % 5}; exit {i % 3 == 0}"]},
                       "retries": 1, "depends_on": [f"t{i - 3}"] if i >= 3 else []}
                      for i in range(9)]}
    status, body = d.request("POST", "/workflows", spec)
    assert status == 202
    wid = body["workflow_id"]
    seen: Counter = Counter()
    errors: list = []
    stop = threading.Event()

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            action = rng.choice(["cancel", "retry", "get", "submit", "events"])
            try:
                if action in ("cancel", "retry"):
                    status, body = d.request("POST", f"/workflows/{wid}/{action}")
                    ok = (200, 409)
                elif action == "get":
                    status, body = d.request("GET", f"/workflows/{wid}")
                    ok = (200,)
                elif action == "events":
                    status, body = d.request("GET", f"/workflows/{wid}/events?timeout=0.2")
                    ok = (200,)
                else:
                    status, body = d.request("POST", "/workflows", spec)
                    ok = (202,)
            except OSError as e:
                errors.append(f"{action}: {e}")
                continue
            seen[(action, status)] += 1
            if status not in ok:
                errors.append((action, status, body))

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and not errors:
        time.sleep(0.1)  # the hammering runs for a fixed while; nothing to wait for
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:5]
    assert seen[("cancel", 200)] and seen[("retry", 200)], seen
    # settle: cancel what still runs, then every workflow ends consistent
    status, listing = d.request("GET", "/workflows")
    for w in listing["workflows"]:
        if w["status"] in ("queued", "running"):
            d.request("POST", f"/workflows/{w['workflow_id']}/cancel")
    views = {w["workflow_id"]: d.wait_workflow(w["workflow_id"], timeout=60)
             for w in listing["workflows"]}
    for view in views.values():
        assert_consistent(view)
    d.stop()
    d2 = start_daemon(tmp_path, executor={"kill_grace_seconds": 1})
    for wid2, view in views.items():  # what was shown is what was durable
        status, again = d2.request("GET", f"/workflows/{wid2}")
        assert again["status"] == view["status"]
        assert [t["status"] for t in again["tasks"]] == [t["status"] for t in view["tasks"]]
    d2.stop()
    log = (d.data_dir / "orchestrator.log").read_text()
    assert "Traceback" not in log and "internal error" not in log


def assert_consistent(view: dict) -> None:
    statuses = [t["status"] for t in view["tasks"]]
    assert sum(view["counts"].values()) == len(statuses)
    assert view["counts"] == {s: statuses.count(s) for s in view["counts"]}
    assert "queued" not in statuses and "running" not in statuses, statuses
    if view["status"] == "succeeded":
        assert set(statuses) == {"succeeded"}
    else:
        assert view["status"] in ("failed", "cancelled") and set(statuses) != {"succeeded"}
    by_id = {t["id"]: t for t in view["tasks"]}
    for t in view["tasks"]:  # no task ran (succeeded) after a dependency that did not
        if t["status"] == "succeeded":
            assert all(by_id[dep]["status"] == "succeeded" for dep in t["depends_on"]), t


def test_two_daemons_started_at_once_exactly_one_wins(tmp_path: Path):
    for round_ in range(3):
        base = tmp_path / f"r{round_}"
        base.mkdir()
        data = base / "data"
        config = write_config(base / "orchestrator.toml", {
            "server": {"port": 0}, "storage": {"data_dir": str(data)},
            "executor": {"shutdown_grace_seconds": 1}})
        outs = [base / f"out{n}" for n in range(2)]
        env = {k: v for k, v in os.environ.items() if k != "PROVISIONING_STORAGE_DATA_DIR"}
        procs = []
        for out in outs:
            with open(out, "wb") as f:
                procs.append(subprocess.Popen([ORCHESTRATOR, "--config", str(config)],
                                              stdout=f, stderr=subprocess.STDOUT, env=env))
        try:
            _one_wins(procs, outs, data)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)


def _one_wins(procs: list[subprocess.Popen], outs: list[Path], data: Path) -> None:
    # the loser exits on its own; the winner keeps serving
    wait_for(lambda: any(p.poll() is not None for p in procs), timeout=30,
             what="one of the two daemons to give up")
    losers = [p for p in procs if p.poll() is not None]
    winners = [p for p in procs if p.poll() is None]
    assert len(losers) == 1 and len(winners) == 1, [p.returncode for p in procs]
    loser_out = outs[procs.index(losers[0])].read_text()
    assert losers[0].returncode == 0, loser_out
    assert "already running (pid" in loser_out, loser_out
    info = wait_for(lambda: _pidfile(data), timeout=30, what="the winner's pidfile")
    assert info["pid"] == winners[0].pid
    assert f"pid {winners[0].pid}" in loser_out or "pid unknown" in loser_out, loser_out
    winners[0].terminate()
    assert winners[0].wait(timeout=60) == 0


def _pidfile(data: Path) -> dict | None:
    try:
        return json.loads((data / "orchestrator.pid").read_text())
    except (OSError, ValueError):
        return None
