"""HTTP submit latency and throughput of the real daemon, fsync on.

Starts `provisioning-orchestrator --daemon` on a free port with a temp data dir
(under /var/tmp: a real disk, not tmpfs), parks the executor behind one
blocking task (executor.max_concurrent_tasks = 1, first workflow `sleep`), so
what is measured is the durable submit path (HTTP parse, validation, engine,
JSON-file store with fsync) and not task execution. Then:
  1. one client, keep-alive, N sequential POST /workflows: latency p50/p90/p99/max;
  2. C client processes at once (keep-alive each): durable submissions per second.
Targets (issue 3, 2-core machine): p50 <= 5 ms, >= 500 submissions/s.

Usage: python bench/submit.py [--n 1000] [--clients 8] [--per-client 250] [--json]
       [--dir DIR] [--no-fsync]   (--no-fsync: PROVISIONING_FSYNC=0, to see what fsync costs)
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ORCHESTRATOR = str(Path(sys.executable).parent / "provisioning-orchestrator")
BODY = json.dumps({"workflow": {"name": "bench"},
                   "tasks": [{"id": "t1", "op": "noop", "params": {"n": 1}}]}).encode()


class BenchDaemon:
    """A throwaway daemon: its own data dir and config dirs, port 0, stopped on exit."""

    def __init__(self, base: Path, *, fsync: bool = True, slots: int = 1):
        self.base = base
        self.data = base / "data"
        config = base / "orchestrator.toml"
        config.write_text(f'[server]\nport = 0\nmax_connections = 64\n'
                          f'[storage]\ndata_dir = "{self.data}"\n'
                          f'[executor]\nmax_concurrent_tasks = {slots}\n'
                          'shutdown_grace_seconds = 1\nkill_grace_seconds = 1\n')
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
        self.env.update({"PROVISIONING_SHARE_DIR": str(base / "share"),
                         "PROVISIONING_ETC_DIR": str(base / "etc"),
                         "PROVISIONING_USER_CONFIG_DIR": str(base / "userconfig"),
                         "PROVISIONING_FSYNC": "1" if fsync else "0"})
        self.argv = [ORCHESTRATOR, "--config", str(config)]

    def start(self) -> BenchDaemon:
        subprocess.run([*self.argv, "--daemon"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        info = json.loads((self.data / "orchestrator.pid").read_text())
        self.pid, self.port = info["pid"], info["port"]
        self.token = (self.data / "token").read_text().strip()
        return self

    def stop(self) -> None:
        subprocess.run([*self.argv, "--stop"], env=self.env, stdout=subprocess.DEVNULL)

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                "Host": f"127.0.0.1:{self.port}"}

    def post(self, conn: http.client.HTTPConnection, body: bytes = BODY) -> dict:
        conn.request("POST", "/workflows", body, self.headers())
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 202:
            raise SystemExit(f"submit failed: {resp.status} {data[:200]!r}")
        return json.loads(data)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def single_client(d: BenchDaemon, n: int) -> dict[str, float]:
    conn = d.connect()
    for _ in range(20):  # warm-up: imports, connection, page cache
        d.post(conn)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        d.post(conn)
        samples.append(time.perf_counter() - t0)
    conn.close()
    return {"n": n, "p50_ms": statistics.median(samples) * 1000,
            "p90_ms": percentile(samples, 90) * 1000, "p99_ms": percentile(samples, 99) * 1000,
            "max_ms": max(samples) * 1000, "rate_per_s": n / sum(samples)}


def blocker_workflow(seconds: int = 3600) -> dict:
    """One `sleep` task: submitted first to a daemon with one task slot, it parks the
    executor, so what follows stays queued and only the submit path is measured."""
    return {"workflow": {"name": "blocker"}, "tasks": [
        {"id": "block", "op": "shell.run", "params": {"argv": ["sleep", str(seconds)]}}]}


def _client(port: int, token: str, count: int, go, done) -> None:
    d = BenchDaemon.__new__(BenchDaemon)
    d.port, d.token = port, token
    conn = d.connect()
    d.post(conn)  # connect before the clock starts
    go.wait()
    for _ in range(count):
        d.post(conn)
    done.put(time.perf_counter())


def many_clients(d: BenchDaemon | list, clients: int, per_client: int) -> dict[str, float]:
    """`clients` processes submitting at once; given several daemons (anything with
    `port` and `token`), client i submits to daemon i modulo their number."""
    ds = d if isinstance(d, list) else [d]
    ctx = multiprocessing.get_context("fork")
    go, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(ds[i % len(ds)].port, ds[i % len(ds)].token,
                                               per_client, go, done))
             for i in range(clients)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every client connect and warm up before the start signal
    t0 = time.perf_counter()
    go.set()
    ends = [done.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    elapsed = max(ends) - t0
    total = clients * per_client
    return {"clients": clients, "total": total, "seconds": elapsed, "rate_per_s": total / elapsed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=250)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--no-fsync", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="prov-bench-", dir=args.dir or "/var/tmp"))
    d = BenchDaemon(base, fsync=not args.no_fsync).start()
    try:
        conn = d.connect()
        d.post(conn, json.dumps(blocker_workflow()).encode())
        conn.close()
        single = single_client(d, args.n)
        multi = many_clients(d, args.clients, args.per_client)
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)
    result = {"fsync": not args.no_fsync, "single_client": single, "multi_client": multi,
              "targets": {"p50_ms": 5.0, "rate_per_s": 500}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"fsync {'on' if result['fsync'] else 'OFF'}; data dir under {base.parent}")
    print(f"single client, {single['n']} submits: p50 {single['p50_ms']:.2f} ms, "
          f"p90 {single['p90_ms']:.2f} ms, p99 {single['p99_ms']:.2f} ms, "
          f"max {single['max_ms']:.2f} ms ({single['rate_per_s']:.0f}/s)  target p50 <= 5 ms")
    print(f"{multi['clients']} clients, {multi['total']} submits in {multi['seconds']:.2f} s: "
          f"{multi['rate_per_s']:.0f}/s  target >= 500/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
