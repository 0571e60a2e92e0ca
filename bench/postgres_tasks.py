"""Benchmark (issue 17): the PostgreSQL backend against the JSON files, one daemon.

    .venv/bin/python bench/postgres_tasks.py [--tasks 500] [--clients 8] [--per-client 100]
                                             [--dsn DSN] [--json]

1. 500 trivial tasks (`shell.run` of `true`, parallelism 10) through an
   engine on the daemon's file store (JsonFileStore with its writer process,
   fsync on, under /var/tmp) and on PostgresStore: wall time and daemon CPU
   per task (this process plus, for files, the writer child; not the task
   processes, not the database server). Target: PostgreSQL <= 1.5x files.
2. Durable submits/s with 8 clients through the real daemon on each backend
   (bench/submit.py's clients).

The database: --dsn, else $PROVISIONING_TEST_PG_DSN (what .ci/run starts),
else a throwaway server this script starts (initdb under /tmp, as `nobody`
when root) and stops. Without any PostgreSQL the rows say
`peer unavailable: ...`. Several daemons on one database (2 and 3 daemons,
takeover after kill -9) are not measured: this version runs one daemon per
database (README "Running several orchestrators").
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from bench import submit  # noqa: E402
from provisioning.config import load_config  # noqa: E402
from provisioning.engine.engine import Engine  # noqa: E402
from provisioning.engine.loader import parse_workflow  # noqa: E402
from provisioning.store.jsonfile import JsonFileStore  # noqa: E402


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """A PostgreSQL server of our own for the run; yields its admin DSN."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        raise LookupError("no PostgreSQL server installed (Debian package postgresql)")
    bindir = Path(bins[-1]).parent
    base = Path(tempfile.mkdtemp(prefix="prov-bench-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.getuid() == 0:
        shutil.chown(base, "nobody")
        as_user = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "nobody", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(base / "data"), "-U",
                    "postgres", "--auth=trust"], **quiet)
    ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(base / "data"), "-l",
           str(base / "log"), "-w"]
    subprocess.run([*ctl, "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
                    "start"], **quiet)
    try:
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        subprocess.run([*ctl, "-m", "fast", "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def database(admin: str) -> Iterator[str]:
    import psycopg  # lazy: only this benchmark needs the extra

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield psycopg.conninfo.make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def run_tasks(n: int, tmp: Path, dsn: str | None) -> dict[str, float]:
    """Wall time and daemon CPU per task of n `true` tasks on one backend."""
    config = load_config(environ={"PROVISIONING_STORAGE_DATA_DIR": str(tmp / "data"),
                                  "PROVISIONING_EXECUTOR_MAX_CONCURRENT_TASKS": "10"})
    if dsn is None:
        store = JsonFileStore(config.data_paths(), writer_process=True)
    else:
        from provisioning.store.postgres import PostgresStore  # lazy: the postgres extra

        store = PostgresStore(dsn, config.data_paths())
    engine = Engine(store, config)
    engine.start()
    me = psutil.Process()
    writer = psutil.Process(store.writer_pid) if store.writer_pid else None
    spec = parse_workflow({"workflow": {"name": "bench", "max_parallel": 10},
                           "tasks": [{"id": f"t{i}", "op": "shell.run",
                                      "params": {"argv": ["true"]}} for i in range(n)]},
                          source="bench", registry=engine.registry)
    cpu0 = _cpu(me) + (_cpu(writer) if writer else 0.0)
    t0 = time.perf_counter()
    wid = engine.submit(spec)["workflow_id"]
    final = engine.wait(wid)
    elapsed = time.perf_counter() - t0
    cpu = _cpu(me) + (_cpu(writer) if writer else 0.0) - cpu0
    engine.shutdown(0)
    if final["status"] != "succeeded":
        raise SystemExit(f"engine run failed: {final['counts']}")
    return {"seconds": elapsed, "cpu_ms_per_task": cpu / n * 1000}


class PgBenchDaemon(submit.BenchDaemon):
    def __init__(self, base: Path, dsn: str | None):
        super().__init__(base, slots=1)
        if dsn is not None:
            config = base / "orchestrator.toml"
            config.write_text(config.read_text().replace(
                "[storage]\n", f'[storage]\nbackend = "postgres"\npostgres_dsn = "{dsn}"\n'))


def submits_per_s(tmp: Path, dsn: str | None, clients: int, per_client: int) -> float:
    d = PgBenchDaemon(tmp, dsn).start()
    try:
        conn = d.connect()
        d.post(conn, json.dumps({"workflow": {"name": "blocker"}, "tasks": [
            {"id": "block", "op": "shell.run", "params": {"argv": ["sleep", "3600"]}}]}).encode())
        conn.close()
        return submit.many_clients(d, clients, per_client)["rate_per_s"]
    finally:
        d.stop()


def measure(args: argparse.Namespace, admin: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, use_pg in (("files", False), ("postgres", True)):
        with tempfile.TemporaryDirectory(prefix="prov-bench-", dir="/var/tmp") as d, \
                (database(admin) if use_pg else contextlib.nullcontext()) as dsn:
            tasks = run_tasks(args.tasks, Path(d) / "tasks", dsn)
            out[f"{name}_tasks_s"] = tasks["seconds"]
            out[f"{name}_cpu_ms_per_task"] = tasks["cpu_ms_per_task"]
        with tempfile.TemporaryDirectory(prefix="prov-bench-", dir="/var/tmp") as d, \
                (database(admin) if use_pg else contextlib.nullcontext()) as dsn:
            out[f"{name}_submits_per_s"] = submits_per_s(Path(d), dsn, args.clients,
                                                         args.per_client)
    out["cpu_ratio"] = out["postgres_cpu_ms_per_task"] / out["files_cpu_ms_per_task"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=100)
    ap.add_argument("--dsn", default=None, help="admin DSN of a server to make databases on")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    admin = args.dsn or os.environ.get("PROVISIONING_TEST_PG_DSN")
    try:
        import psycopg
    except ImportError as e:
        result = {"unavailable": f"peer unavailable: {e} (pip install '.[postgres]')"}
    else:
        try:
            with (contextlib.nullcontext(admin) if admin else throwaway_server()) as dsn:
                result = measure(args, dsn)
        except (LookupError, subprocess.CalledProcessError, psycopg.OperationalError) as e:
            result = {"unavailable": f"peer unavailable: {' '.join(str(e).split())}"}
    if args.json:
        print(json.dumps(result, indent=2))
    elif "unavailable" in result:
        print(result["unavailable"])
    else:
        print(f"{args.tasks} tasks: files {result['files_tasks_s']:.2f} s, "
              f"{result['files_cpu_ms_per_task']:.2f} ms CPU/task; postgres "
              f"{result['postgres_tasks_s']:.2f} s, {result['postgres_cpu_ms_per_task']:.2f} "
              f"ms CPU/task ({result['cpu_ratio']:.2f}x, target <= 1.5x)")
        print(f"{args.clients} clients: files {result['files_submits_per_s']:.0f} submits/s, "
              f"postgres {result['postgres_submits_per_s']:.0f} submits/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
