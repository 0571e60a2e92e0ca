"""Figure 12: 50 servers created on moto (AWS mocked) at parallelism 10, through the daemon.

The real daemon runs `server create` for an aws infra of N servers, its tasks
calling moto's server on 127.0.0.1 with real boto3 (tests/aws_fixture.py
starts it). Measured, with the Python zygote (executor.python_zygote, boto3
pre-imported: the default) and without (a plain interpreter per task):

- wall time of the whole workflow (`server create --wait`, CLI to last task);
- CPU per create task (user+system of the task process, its last sample);
- peak RSS per task process (the largest sample).

Task processes are every process under the daemon that was not there before
the submission (the zygote and the record writer were); they are sampled
every 10 ms with psutil, so a figure is a lower bound for a process that
lives less than a sample. moto answers at once (`running` at the first
describe), so the wall time is our cost plus moto's, not AWS's.

Usage: python bench/cloud_create.py [--servers 50] [--parallel 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from tests.aws_fixture import Moto, aws_env, instances, write_infra  # noqa: E402

BIN = Path(sys.executable).parent


class Sampler(threading.Thread):
    def __init__(self, root: int, known: set[int]):
        super().__init__(daemon=True)
        self.root, self.known = psutil.Process(root), known
        self.peak: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                kids = self.root.children(recursive=True)
            except psutil.Error:
                return
            for p in kids:
                if p.pid in self.known:
                    continue
                try:
                    with p.oneshot():
                        rss, t = p.memory_info().rss, p.cpu_times()
                except psutil.Error:
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
                self.cpu[p.pid] = t.user + t.system
            self.stop.wait(0.01)


def run_once(tmp: Path, moto: Moto, n: int, parallel: int, zygote: bool) -> dict[str, Any]:
    from tests.daemon_fixture import start_daemon

    moto.reset()
    infra = write_infra(tmp / "ws", "bench", moto.url, hosts=[f"web-{i}" for i in range(n)])
    d = start_daemon(tmp, executor={"max_concurrent_tasks": parallel,
                                    "python_zygote": zygote})
    try:
        root = psutil.Process(d.pid)
        known = {p.pid for p in root.children(recursive=True)}
        sampler = Sampler(d.pid, known)
        sampler.start()
        t0 = time.perf_counter()
        r = subprocess.run([str(BIN / "provisioning"), "--config", str(d.config_file),
                            "--endpoint", d.url, "--orchestrated", "server", "create",
                            "--infra", str(infra), "--wait"], capture_output=True, text=True,
                           timeout=900)
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        if r.returncode != 0:
            raise SystemExit(f"server create failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
    finally:
        d.stop()
    made = instances(moto.ec2(), "bench")
    assert len(made) == n and all(len(v) == 1 for v in made.values()), "not one each"
    cpu = sorted(sampler.cpu.values())
    rss = sorted(v / 2**20 for v in sampler.peak.values())
    return {"zygote": zygote, "servers": n, "parallel": parallel, "wall_s": wall,
            "task_processes": len(cpu),
            "cpu_per_task_ms": {"median": statistics.median(cpu) * 1000,
                                "max": cpu[-1] * 1000} if cpu else None,
            "peak_rss_mib": {"median": statistics.median(rss), "max": rss[-1]} if rss else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    moto = Moto()
    try:
        for zygote in (True, False):
            with tempfile.TemporaryDirectory(prefix="bench-cloud-") as t:
                tmp = Path(t)
                saved = dict(os.environ)
                os.environ.update(aws_env(tmp))
                os.environ.update({"PROVISIONING_STORAGE_DATA_DIR": str(tmp / "data"),
                                   "PROVISIONING_SHARE_DIR": str(tmp / "share"),
                                   "PROVISIONING_ETC_DIR": str(tmp / "etc"),
                                   "PROVISIONING_USER_CONFIG_DIR": str(tmp / "uc")})
                try:
                    results.append(run_once(tmp, moto, args.servers, args.parallel, zygote))
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
    finally:
        moto.stop()
    if args.json:
        print(json.dumps({"figure": 12, "results": results}, indent=2))
        return
    print(f"Figure 12: {args.servers} aws servers on moto, parallelism {args.parallel}")
    for r in results:
        c, m = r["cpu_per_task_ms"] or {}, r["peak_rss_mib"] or {}
        print(f"  {'zygote' if r['zygote'] else 'spawn ':<7} wall {r['wall_s']:6.1f} s  "
              f"CPU/task {c.get('median', 0):6.0f} ms (max {c.get('max', 0):.0f})  "
              f"peak RSS/task {m.get('median', 0):5.1f} MiB (max {m.get('max', 0):.1f})  "
              f"[{r['task_processes']} processes]")


if __name__ == "__main__":
    main()
