"""CPU and memory of an idle daemon (issue 3: CPU under 1% over 30 s idle).

Starts the real daemon (bench/submit.py's BenchDaemon: temp data dir, port 0),
optionally queues some finished workflows first so the in-memory index is not
empty, then samples its process with psutil over the window and reports CPU %
(user + system time of the daemon and any children / wall time), RSS, USS
and thread count, and the RSS and USS of its record-writer child
(provisioning/store/writer.py) and of its Python zygote (engine/zygote.py; with
boto3 pre-imported when it is installed, as by default).

With --dashboard, a browser's visit is replayed over HTTP before the window
(sign-in code, login, the page and its files, the list, a workflow, its
events, a task and its log), so the figure includes what the dashboard
leaves in the daemon (issue 18: at most 5 MiB more).

Usage: python bench/idle.py [--seconds 30] [--workflows 100] [--dashboard] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submit import BenchDaemon  # noqa: E402

from provisioning.orchestrator.ui import ASSET_TYPES  # noqa: E402


def cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def visit_dashboard(d: BenchDaemon, conn, workflow_id: str) -> None:
    """What a browser on the dashboard asks for, with the session it gets."""
    def get(path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        conn.request("GET", path, headers={"Host": f"127.0.0.1:{d.port}", **headers})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()

    conn.request("POST", "/auth/codes", b"{}", d.headers())
    grant = json.loads(conn.getresponse().read())
    status, headers, _ = get(grant["path"], {})
    if status != 303:
        raise SystemExit(f"dashboard sign-in failed: {status}")
    session = {"Cookie": headers["Set-Cookie"].split(";")[0],
               "X-CSRF-Token": headers["Location"].split("#csrf=", 1)[1]}
    paths = ["/ui/", *(f"/ui/assets/{name}" for name in ASSET_TYPES),
             "/workflows?limit=50&offset=0", f"/workflows/{workflow_id}",
             f"/workflows/{workflow_id}/events?after=0&timeout=0",
             f"/tasks/{workflow_id}.t1", f"/tasks/{workflow_id}.t1/log?offset=0"]
    for path in paths:
        status, _, _ = get(path, session)
        if status != 200:
            raise SystemExit(f"dashboard visit: GET {path} answered {status}")
def child_memory(proc: psutil.Process, module: str) -> SimpleNamespace | None:
    """RSS and USS of the daemon's children running `module`, summed (two zygotes when
    boto3 is installed: engine/zygotes.py), or None when there is none."""
    found = None
    for child in proc.children():
        try:
            if module in " ".join(child.cmdline()):
                info = child.memory_full_info()
                found = found or SimpleNamespace(rss=0, uss=0)
                found.rss += info.rss
                found.uss += info.uss
        except psutil.Error:
            continue
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workflows", type=int, default=100,
                    help="noop workflows to run to completion before measuring")
    ap.add_argument("--dashboard", action="store_true",
                    help="replay a dashboard visit before measuring")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="prov-idle-", dir="/var/tmp"))
    d = BenchDaemon(base).start()
    try:
        conn = d.connect()
        ids = [d.post(conn)["workflow_id"] for _ in range(args.workflows)]
        deadline = time.monotonic() + 300
        while ids and time.monotonic() < deadline:  # let the queue drain: idle means idle
            conn.request("GET", f"/workflows/{ids[-1]}", headers=d.headers())
            resp = conn.getresponse()
            if json.loads(resp.read())["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        if args.dashboard and ids:
            visit_dashboard(d, conn, ids[-1])
        conn.close()
        proc = psutil.Process(d.pid)
        before_cpu, t0 = cpu_seconds(proc), time.monotonic()
        time.sleep(args.seconds)  # the measurement window itself
        used, wall = cpu_seconds(proc) - before_cpu, time.monotonic() - t0
        mem = proc.memory_full_info()
        wmem, zmem = child_memory(proc, "provisioning.store.writer"), \
            child_memory(proc, "provisioning.engine.zygote_server")
        result = {"seconds": wall, "cpu_seconds": used, "cpu_percent": 100 * used / wall,
                  "rss_mb": mem.rss / 2**20, "uss_mb": mem.uss / 2**20,
                  "writer_rss_mb": wmem.rss / 2**20 if wmem else 0.0,
                  "writer_uss_mb": wmem.uss / 2**20 if wmem else 0.0,
                  "zygote_rss_mb": zmem.rss / 2**20 if zmem else 0.0,
                  "zygote_uss_mb": zmem.uss / 2**20 if zmem else 0.0,
                  "threads": proc.num_threads(), "workflows_done": args.workflows,
                  "dashboard_visited": args.dashboard,
                  "target_cpu_percent": 1.0}
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"idle {result['seconds']:.1f} s after {args.workflows} workflows: CPU "
              f"{result['cpu_percent']:.3f}% ({result['cpu_seconds']:.3f} s)  target < 1%")
        print(f"memory: RSS {result['rss_mb']:.1f} MiB, USS {result['uss_mb']:.1f} MiB, "
              f"{result['threads']} threads; writer process RSS "
              f"{result['writer_rss_mb']:.1f} MiB, USS {result['writer_uss_mb']:.1f} MiB; "
              f"zygote RSS {result['zygote_rss_mb']:.1f} MiB, "
              f"USS {result['zygote_uss_mb']:.1f} MiB")
    return 0 if result["cpu_percent"] < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
