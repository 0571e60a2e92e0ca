"""Figure 6: recovery. The daemon is killed (SIGKILL) with N queued tasks; time
from the restart to /health answering AND the whole queue indexed.

Set-up (not timed): a real `provisioning-orchestrator` in the foreground, its
own data dir under /var/tmp (a real disk, not tmpfs) and a free port,
`executor.max_concurrent_tasks = 1`, parked behind one blocking `sleep` task,
then N `noop` tasks in workflows of 100 submitted over HTTP. The fill runs
with PROVISIONING_FSYNC=0 (what is on disk after a kill -9 is the same; it only
saves set-up time); the timed restarts run with fsync on, like production.

Each repetition has two crashes:
1. as after a power loss: SIGKILL the daemon and the blocker's process, wait
   until that is reaped, start the daemon again, poll /health (no fixed sleep:
   connect until it answers, then until its `queue` stats count every task)
   and record
   - seconds to the first /health answer,
   - seconds until queued + running == N + 1 (the blocker): the queue fully
     indexed in memory (the target's figure);
2. the daemon alone is killed: the blocker's process lives on as an orphan,
   and recovery must kill it before re-queueing it (up to
   executor.kill_grace_seconds, 1 s here).
The reference, measured the same way in the same run: a restart of a daemon
whose data dir is empty (the floor: interpreter, imports, bind, token).
Target (issue 8): under 2 s.

Usage: python bench/recovery.py [--tasks 10000] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ORCHESTRATOR = str(Path(sys.executable).parent / "provisioning-orchestrator")
TASKS_PER_WORKFLOW = 100
TARGET_S = 2.0
FINISHED = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ForegroundDaemon:
    """One data dir and port; the daemon runs in the foreground as our child, so
    we hold its pid and can SIGKILL exactly it (never a pid read from a file)."""

    def __init__(self, base: Path, *, max_concurrent_tasks: int = 1,
                 storage: dict[str, str | bool | float] | None = None):
        self.base = base
        base.mkdir(mode=0o700)
        self.data = base / "data"
        self.port = free_port()
        self.config = base / "orchestrator.toml"
        # more [storage] settings (backend = "postgres"...); json.dumps writes TOML values
        more = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (storage or {}).items())
        self.config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'[storage]\ndata_dir = "{self.data}"\n{more}'
            f'[executor]\nmax_concurrent_tasks = {max_concurrent_tasks}\n'
            'shutdown_grace_seconds = 1\nkill_grace_seconds = 1\n')
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("PROVISIONING_") and k != "NOTIFY_SOCKET"}
        self.env.update({"PROVISIONING_SHARE_DIR": str(base / "share"),
                         "PROVISIONING_ETC_DIR": str(base / "etc"),
                         "PROVISIONING_USER_CONFIG_DIR": str(base / "userconfig")})
        self.proc: subprocess.Popen | None = None
        self.token = ""

    def spawn(self, *, fsync: bool = True) -> float:
        """Start the daemon; returns the perf_counter time of the spawn."""
        env = {**self.env, "PROVISIONING_FSYNC": "1" if fsync else "0"}
        log = open(self.base / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen([ORCHESTRATOR, "--config", str(self.config)], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        return t0

    def health(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """/health's JSON, or None while nothing answers on the port yet."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            conn.request("GET", "/health", headers={"Host": f"127.0.0.1:{self.port}"})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
        except OSError:
            return None
        return json.loads(body) if resp.status == 200 else None

    def wait_until(self, condition, deadline_s: float, what: str) -> dict[str, Any]:
        """Poll /health until `condition(health)`; backoff from 2 ms to 50 ms."""
        deadline = time.monotonic() + deadline_s
        pause = 0.002
        while True:
            h = self.health()
            if h is not None and condition(h):
                return h
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode} while waiting for "
                                   f"{what}; see {self.base / 'daemon.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {deadline_s}s waiting for {what}")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                expect: int = 200) -> dict[str, Any]:
        """One authenticated API call; RuntimeError unless the status is `expect`."""
        if not self.token:
            self.token = (self.data / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {self.token}", "Host": f"127.0.0.1:{self.port}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, payload, headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != expect:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
        return json.loads(data)

    def submit(self, body: dict[str, Any]) -> str:
        return self.request("POST", "/workflows", body, expect=202)["workflow_id"]

    def wait_finished(self, workflow_id: str, deadline_s: float) -> str:
        """Long-poll the workflow's events until it finishes; returns its status."""
        deadline = time.monotonic() + deadline_s
        after = 0
        while True:
            r = self.request("GET", f"/workflows/{workflow_id}/events?after={after}&timeout=10")
            if r["status"] in FINISHED:
                return r["status"]
            after = r.get("last", after)
            if time.monotonic() > deadline:
                raise RuntimeError(f"workflow {workflow_id} not finished after {deadline_s}s")

    def kill(self) -> None:
        """SIGKILL: the crash being measured. Only our own child, by its pid."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM and wait for the drain (the blocker is killed after the grace)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()


def restart_times(d: ForegroundDaemon, expected: int, deadline_s: float) -> tuple[float, float]:
    """(seconds to first /health answer, seconds until every task is indexed)."""
    t0 = d.spawn()
    d.wait_until(lambda h: True, deadline_s, "/health")
    t_health = time.perf_counter() - t0

    def indexed(h: dict[str, Any]) -> bool:
        q = h.get("queue") or {}
        return q.get("tasks_queued", 0) + q.get("tasks_running", 0) >= expected

    d.wait_until(indexed, deadline_s, f"{expected} tasks indexed")
    return t_health, time.perf_counter() - t0


def kill_blockers(marker: str, deadline_s: float = 30.0) -> None:
    """Kill the blocker `sleep` a crash left behind, found by the run's random marker
    argument and signalled by pid, and wait until it is reaped (by pid 1, which
    here reaps only every second or so: a zombie would still look alive)."""
    import psutil

    pids = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if p.info["cmdline"] == ["sleep", marker]]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + deadline_s
    pause = 0.005
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples)}


def measure(tasks: int, runs: int, base_dir: str | None = None,
            deadline_s: float = 120.0) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bench-recovery-", dir=base_dir or "/var/tmp"))
    marker = f"{86000 + secrets.randbelow(400)}.{secrets.randbelow(10**6):06d}"
    full = ForegroundDaemon(base / "full")
    empty = ForegroundDaemon(base / "empty")
    try:
        # Fill: blocker first, then the queued tasks, fsync off (set-up only).
        full.spawn(fsync=False)
        full.wait_until(lambda h: True, deadline_s, "/health")
        full.submit({"workflow": {"name": "blocker"}, "tasks": [
            {"id": "block", "op": "shell.run", "params": {"argv": ["sleep", marker]}}]})
        full.wait_until(lambda h: h["queue"].get("tasks_running") == 1, deadline_s,
                        "the blocker to run")
        left = tasks
        while left > 0:
            k = min(TASKS_PER_WORKFLOW, left)
            full.submit({"workflow": {"name": "queued"},
                         "tasks": [{"id": f"t{i}", "op": "noop"} for i in range(k)]})
            left -= k
        expected = tasks + 1
        h = full.wait_until(lambda h: h["queue"]["tasks_queued"] + h["queue"]["tasks_running"]
                            >= expected, deadline_s, "the fill")
        empty.spawn()
        empty.wait_until(lambda h: True, deadline_s, "/health of the empty daemon")

        health_s, indexed_s, orphan_s, empty_s = [], [], [], []
        for _ in range(runs):
            # As after a power loss: the daemon and its task processes are all gone.
            full.kill()
            kill_blockers(marker)
            th, ti = restart_times(full, expected, deadline_s)
            health_s.append(th)
            indexed_s.append(ti)
            # The daemon alone crashed: recovery must also kill the orphaned task.
            full.wait_until(lambda h: h["queue"].get("tasks_running") == 1, deadline_s,
                            "the blocker to run again")
            full.kill()
            _, to = restart_times(full, expected, deadline_s)
            orphan_s.append(to)
            empty.kill()
            te, _ = restart_times(empty, 0, deadline_s)
            empty_s.append(te)
        h = full.health() or h
    finally:
        for d in (full, empty):
            d.stop()
        kill_blockers(marker)
        shutil.rmtree(base, ignore_errors=True)
    return {"tasks": tasks, "workflows": -(-tasks // TASKS_PER_WORKFLOW) + 1,
            "queue_after_restart": h.get("queue"),
            "health": summary(health_s), "indexed": summary(indexed_s),
            "indexed_orphan": summary(orphan_s),
            "empty_restart": summary(empty_s), "target_s": TARGET_S}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", help="parent of the temp data dirs (default /var/tmp)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = measure(args.tasks, args.runs, args.dir)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for key, label in (("empty_restart", "restart, empty queue (reference)"),
                           ("health", f"restart -> /health, {args.tasks} queued"),
                           ("indexed", f"restart -> {args.tasks} indexed"),
                           ("indexed_orphan", "same, a task's process orphaned")):
            s = res[key]
            print(f"{label:<40} median {s['median']:.3f} s  min {s['min']:.3f}  "
                  f"max {s['max']:.3f}  ({s['median'] / res['empty_restart']['median']:.2f}x)")
        ok = res["indexed"]["median"] < TARGET_S
        print(f"target < {TARGET_S} s: {'meets' if ok else 'MISSES'}")
    return res


if __name__ == "__main__":
    main()
