"""Figure 13 (issue 17): the PostgreSQL backend with 1, 2 and 3 daemons on one
database (``storage.postgres_shared``), against one daemon on files, in one run.

Real daemons (bench/recovery.py's ForegroundDaemon: our own children, each with
its data dir under /var/tmp, a free port, fsync on), every PostgreSQL daemon with
``backend = "postgres"``, ``postgres_shared = true`` and a lease, as in
tests/test_postgres_multi.py; each set of daemons gets a database of its own.

- Tasks: N `shell.run ["true"]` tasks, split evenly across the daemons of a set,
  each share in workflows of at most 50 tasks submitted to that daemon (it runs
  what it accepted), executor.max_concurrent_tasks = 10 per daemon; submit of the
  first to the last one finished. The sets' runs are interleaved (load on the
  host hits each alike), after one small warm-up run each.
- Daemon CPU per task: user + system CPU (psutil cpu_times) over that window of
  each daemon process and of the children it had just before it (its record
  writer, its Python zygote: the daemon's own machinery), divided by N. Not the
  task processes (their CPU is the same on both backends) and not the
  PostgreSQL server; the daemons' answers to the bench's long-polls are in it,
  on both backends alike. A second row adds the server's CPU (the postmaster
  and all its processes, found by ``postmaster.pid`` in
  $PROVISIONING_TEST_PG_DATA: the server must be ours alone, as .ci/run's is).
  Target: daemon CPU per task on PostgreSQL <= 1.5x the file backend's.
- Submits/s, 8 clients: bench/submit.py's clients against daemons parked behind
  one `sleep` (one task slot): files, PostgreSQL with 1 daemon, with 3 daemons
  (client i submits to daemon i mod 3).
- Takeover: two daemons with the scale's lease; a chain of `sleep 0.1` tasks
  submitted to one; it is killed (SIGKILL) after 3 succeeded, at points spread
  evenly over a lease round (every lease/3 s each daemon renews its leases
  and claims expired ones: where the kill falls decides); time until the
  other holds the workflow's lease (its ``workflow_leases`` row has another
  owner) and until the workflow has finished; the killed daemon is restarted
  for the next round. Target: takeover <= lease + 2 s. The full run uses the
  default lease (15 s; the task runs use it too), --quick 2 s.

The database server: $PROVISIONING_TEST_PG_DSN, an admin DSN (what .ci/run and
bench/with_postgres.sh start); without it, or without the postgres extra, the
rows say `peer unavailable: ...`. Opt-in: `python -m bench --only postgres`.

Usage: python bench/postgres_tasks.py [--quick] [--dsn ADMIN_DSN]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, submit  # noqa: E402
from bench.recovery import FINISHED, ForegroundDaemon  # noqa: E402
from bench.report import Figure, Row, Target, row_from_samples  # noqa: E402

NUMBER, TITLE = 13, "PostgreSQL, several daemons"
PARALLEL = 10
WORKFLOW_TASKS = 50
DEFAULT_LEASE_S = 15.0  # config.defaults.toml: the heartbeat rate of a real setup
KILL_AFTER, STEP_S = 3, 0.1  # the takeover workflow: a chain of `sleep 0.1` tasks


def chain_length(lease_s: float) -> int:
    """Long enough to still run when the kill comes, up to a lease round late."""
    return KILL_AFTER + 10 + int(lease_s / 3 / STEP_S)


@dataclass(frozen=True)
class Scale:
    quick: bool
    tasks: int
    runs: int
    clients: int
    per_client: int
    takeovers: int
    lease_s: float  # of the takeover daemons
    daemons: tuple[int, ...] = (1, 2, 3)


FULL = Scale(False, tasks=500, runs=3, clients=8, per_client=100, takeovers=3,
             lease_s=DEFAULT_LEASE_S)
QUICK = Scale(True, tasks=100, runs=2, clients=8, per_client=25, takeovers=2, lease_s=2.0)
TINY = Scale(True, tasks=12, runs=1, clients=2, per_client=3, takeovers=1, lease_s=1.0,
             daemons=(1, 2))  # tests/test_bench.py's smoke run


def storage(dsn: str | None, lease_s: float) -> dict[str, Any]:
    if dsn is None:
        return {}
    return {"backend": "postgres", "postgres_dsn": dsn, "postgres_shared": True,
            "postgres_lease_seconds": lease_s}


@contextlib.contextmanager
def database(admin: str | None) -> Iterator[str | None]:
    """A fresh database on the server (None: the file backend), dropped after."""
    if admin is None:
        yield None
        return
    from tests.pg_fixture import create_database

    dsn, drop = create_database(admin, "bench")
    try:
        yield dsn
    finally:
        drop()


@contextlib.contextmanager
def daemons(tmp: Path, name: str, count: int, dsn: str | None, *, slots: int,
            lease_s: float = DEFAULT_LEASE_S) -> Iterator[list[ForegroundDaemon]]:
    """`count` daemons on one store, stopped together at the end: SIGTERM to all
    first, so none adopts what a stopping peer hands back."""
    ds: list[ForegroundDaemon] = []
    try:
        for i in range(count):  # one after the other: the first creates the schema
            d = ForegroundDaemon(tmp / f"{name}-{i}", max_concurrent_tasks=slots,
                                 storage=storage(dsn, lease_s))
            ds.append(d)
            d.spawn()
            d.wait_until(lambda h: True, 60, f"/health of {name}-{i}")
        yield ds
    finally:
        for d in ds:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.terminate()
        for d in ds:
            d.stop()


def workflow_bodies(n: int, count: int, tag: str) -> list[list[dict[str, Any]]]:
    """n `true` tasks split evenly over `count` daemons, in workflows of <= 50."""
    out = []
    for i in range(count):
        share = n // count + (i < n % count)
        bodies = []
        for start in range(0, share, WORKFLOW_TASKS):
            k = min(WORKFLOW_TASKS, share - start)
            bodies.append({"workflow": {"name": f"{tag}-{i}-{start}", "max_parallel": PARALLEL},
                           "tasks": [{"id": f"t{j}", "op": "shell.run",
                                      "params": {"argv": ["true"]}} for j in range(k)]})
        out.append(bodies)
    return out


def run_tasks(ds: list[ForegroundDaemon], n: int, tag: str) -> tuple[float, float, float | None]:
    """(wall s, daemon CPU ms per task, daemon + server CPU ms per task or None)."""
    per_daemon = workflow_bodies(n, len(ds), tag)
    procs = common.process_and_children([d.proc.pid for d in ds if d.proc is not None])
    cpu0, srv0 = common.cpu_snapshot(procs), common.postgres_server_cpu()
    t0 = time.perf_counter()
    submitted = []
    for round_ in range(max(len(b) for b in per_daemon)):  # round robin: all start at once
        for d, bodies in zip(ds, per_daemon, strict=True):
            if round_ < len(bodies):
                submitted.append((d, d.submit(bodies[round_])))
    for d, wid in submitted:
        status = d.wait_finished(wid, 600)
        if status != "succeeded":
            raise RuntimeError(f"workflow {wid} ended {status}")
    wall = time.perf_counter() - t0
    cpu = common.cpu_delta(cpu0, common.cpu_snapshot(procs))
    srv1 = common.postgres_server_cpu()
    total = None if srv0 is None or srv1 is None else (cpu + srv1 - srv0) / n * 1000
    return wall, cpu / n * 1000, total


def label(count: int | None) -> str:
    return "files, 1 daemon" if count is None else \
        f"postgres, {count} daemon{'s' if count > 1 else ''}"


def measure_tasks(s: Scale, tmp: Path, admin: str) -> dict[str, dict[str, list[float]]]:
    """Per set of daemons: wall, cpu, total samples; the sets' runs interleaved."""
    sets: list[int | None] = [None, *s.daemons]
    out = {label(c): {"wall": [], "cpu": [], "total": []} for c in sets}
    with contextlib.ExitStack() as stack:
        clusters = {}
        for c in sets:
            dsn = stack.enter_context(database(None if c is None else admin))
            clusters[label(c)] = stack.enter_context(
                daemons(tmp, f"tasks{c or 0}", c or 1, dsn, slots=PARALLEL))
        for ds in clusters.values():
            run_tasks(ds, min(20, s.tasks), "warm-up")
        for r in range(s.runs):
            for name, ds in clusters.items():
                wall, cpu, total = run_tasks(ds, s.tasks, f"run{r}")
                out[name]["wall"].append(wall)
                out[name]["cpu"].append(cpu)
                if total is not None:
                    out[name]["total"].append(total)
    return out


def measure_submits(s: Scale, tmp: Path, admin: str) -> dict[str, list[float]]:
    """Submits/s of s.clients clients against parked daemons: files, PostgreSQL
    with 1 and with the most daemons."""
    sets: list[int | None] = [None, 1, max(s.daemons)]
    out: dict[str, list[float]] = {label(c): [] for c in sets}
    with contextlib.ExitStack() as stack:
        clusters = {}
        for c in sets:
            dsn = stack.enter_context(database(None if c is None else admin))
            ds = stack.enter_context(daemons(tmp, f"submit{c or 0}", c or 1, dsn, slots=1))
            for d in ds:
                d.submit(submit.blocker_workflow())
            clusters[label(c)] = ds
        for _ in range(s.runs):
            for name, ds in clusters.items():
                out[name].append(submit.many_clients(ds, s.clients, s.per_client)["rate_per_s"])
    return out


def poll(check: Callable[[], Any], deadline_s: float, what: str, pause: float) -> Any:
    deadline = time.monotonic() + deadline_s
    while not (got := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {deadline_s:g} s waiting for {what}")
        time.sleep(pause)
    return got


def one_takeover(victim: ForegroundDaemon, peer: ForegroundDaemon, dsn: str,
                 lease_s: float, phase: float) -> tuple[float, float]:
    """(kill -> a peer holds the lease, kill -> the workflow finished), seconds.
    The kill comes `phase` (0 to 1) of a lease round after the KILL_AFTER-th
    task succeeded: the submit's NOTIFY woke every daemon at once, so their
    rounds (every lease/3) keep that rhythm and where the kill falls in it
    decides how much of the lease is left."""
    import psycopg

    me = victim.request("GET", "/health")["daemon_id"]
    wid = victim.submit({"workflow": {"name": "takeover"}, "tasks": [
        {"id": f"s{i}", "op": "shell.run", "params": {"argv": ["sleep", str(STEP_S)]},
         "depends_on": [f"s{i - 1}"] if i else []} for i in range(chain_length(lease_s))]})
    poll(lambda: victim.request("GET", f"/workflows/{wid}")["counts"].get("succeeded", 0)
         >= KILL_AFTER, 60, f"{KILL_AFTER} tasks to succeed", 0.02)
    time.sleep(phase * lease_s / 3)  # not a wait for a condition: where the kill falls
    with psycopg.connect(dsn, autocommit=True) as conn:
        victim.kill()
        t0 = time.perf_counter()

        def moved() -> bool:
            row = conn.execute("SELECT owner FROM workflow_leases WHERE workflow_id = %s",
                               (wid,)).fetchone()
            return row is None or row[0] not in (None, me)  # no row: finished already

        poll(moved, lease_s * 2 + 60, "a peer to hold the lease", 0.02)
        leased = time.perf_counter() - t0
    view = poll(lambda: (v := peer.request("GET", f"/workflows/{wid}"))["status"] in FINISHED
                and v, 120, "the workflow to finish on the peer", 0.05)
    done = time.perf_counter() - t0
    if view["status"] != "succeeded":
        raise RuntimeError(f"the taken-over workflow ended {view['status']}")
    return leased, done


def measure_takeover(s: Scale, tmp: Path, admin: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"leased": [], "done": []}
    with database(admin) as dsn, daemons(tmp, "takeover", 2, dsn, slots=PARALLEL,
                                         lease_s=s.lease_s) as ds:
        assert dsn is not None
        for r in range(s.takeovers):
            victim, peer = ds[r % 2], ds[(r + 1) % 2]
            phase = (r + 0.5) / s.takeovers  # spread evenly over a lease round
            leased, done = one_takeover(victim, peer, dsn, s.lease_s, phase)
            out["leased"].append(leased)
            out["done"].append(done)
            victim.spawn()  # the same data dir: the same daemon id, back for the next round
            victim.wait_until(lambda h: True, 60, "/health of the restarted daemon")
    return out


def unavailable() -> str:
    """'' when a PostgreSQL server answers at $PROVISIONING_TEST_PG_DSN, else why not."""
    admin = os.environ.get("PROVISIONING_TEST_PG_DSN")
    if not admin:
        return ("peer unavailable: no PostgreSQL: PROVISIONING_TEST_PG_DSN is unset "
                "(bench/with_postgres.sh starts a throwaway server)")
    try:
        import psycopg

        import tests.pg_fixture  # noqa: F401 - makes the databases; needs pytest
    except ImportError as e:
        return f"peer unavailable: {e} (pip install -e '.[test,postgres]')"
    try:
        psycopg.connect(admin, connect_timeout=10).close()
    except psycopg.Error as e:
        why = " ".join(str(e).split())
        return f"peer unavailable: PostgreSQL at $PROVISIONING_TEST_PG_DSN: {why}"
    return ""


def task_rows(s: Scale, t: dict[str, dict[str, list[float]]]) -> list[Row]:
    files = label(None)
    ref_wall, ref_cpu = f"{files}: {s.tasks} x true", f"daemon CPU/task, {files}"
    rows = [row_from_samples(ref_wall, t[files]["wall"], "s", reference=ref_wall,
                             is_reference=True,
                             note=f"shell.run tasks, parallel {PARALLEL} per daemon")]
    rows += [row_from_samples(f"{label(c)}: {s.tasks} x true", t[label(c)]["wall"],
                              "s", reference=ref_wall) for c in s.daemons]
    rows.append(row_from_samples(ref_cpu, t[files]["cpu"], "ms", reference=ref_cpu,
                                 is_reference=True,
                                 note="the daemon, its record writer and zygote; not the tasks"))
    for c in s.daemons:
        rows.append(row_from_samples(f"daemon CPU/task, {label(c)}", t[label(c)]["cpu"],
                                     "ms", reference=ref_cpu,
                                     target=Target("<=", 1.5, "ratio", label="<= 1.5x files"),
                                     note="all the daemons together" if c > 1 else ""))
    for c in s.daemons:
        name = f"+ server CPU/task, {label(c)}"
        if t[label(c)]["total"]:
            rows.append(row_from_samples(name, t[label(c)]["total"], "ms", reference=ref_cpu,
                                         note="the daemons' and the PostgreSQL server's"))
        else:
            rows.append(Row(name, unavailable="peer unavailable: PROVISIONING_TEST_PG_DATA is "
                                              "unset: the server's processes are unknown"))
    return rows


def other_rows(s: Scale, sub: dict[str, list[float]], tk: dict[str, list[float]]) -> list[Row]:
    ref = f"submits/s, {s.clients} clients, {label(None)}"
    rows = [row_from_samples(ref, sub[label(None)], "/s", reference=ref, is_reference=True,
                             note="daemons parked behind one sleep (bench/submit.py)")]
    rows += [row_from_samples(f"submits/s, {s.clients} clients, {label(c)}", sub[label(c)],
                              "/s", reference=ref,
                              note="client i to daemon i mod n" if c > 1 else "")
             for c in (1, max(s.daemons))]
    lease = "lease (storage.postgres_lease_seconds)"
    rows += [row_from_samples(lease, [s.lease_s], "s", reference=lease, is_reference=True,
                              note="a setting, not measured"),
             row_from_samples("kill -9 of the owner -> a peer holds the lease", tk["leased"], "s",
                              reference=lease, target=Target("<=", s.lease_s + 2,
                                                             label="<= lease + 2 s"),
                              note="2 daemons; workflow_leases row with another owner"),
             row_from_samples("kill -9 of the owner -> its workflow finished", tk["done"], "s",
                              reference=lease,
                              note=f"a chain of {chain_length(s.lease_s)} x sleep {STEP_S:g}; "
                                   f"the kill spread over a lease round after {KILL_AFTER} "
                                   "succeeded")]
    return rows


def figure(s: Scale, tmp: Path) -> Figure:
    """The bench suite's figure 13 (bench/__main__.py, `--only postgres`)."""
    scale = (f"{s.runs} interleaved runs of {s.tasks} tasks per set of daemons, "
             f"{s.clients}x{s.per_client} submits, {s.takeovers} takeovers")
    if s.quick and s != TINY:
        scale += (f"; full run: {FULL.runs} runs of {FULL.tasks}, {FULL.clients}x"
                  f"{FULL.per_client}, {FULL.takeovers} takeovers with a {FULL.lease_s:g} s lease")
    why = unavailable()
    if why:
        return Figure(NUMBER, TITLE, scale, [Row(TITLE, unavailable=why)])
    admin = os.environ["PROVISIONING_TEST_PG_DSN"]
    t = measure_tasks(s, tmp, admin)
    sub = measure_submits(s, tmp, admin)
    tk = measure_takeover(s, tmp, admin)
    return Figure(NUMBER, TITLE, scale, task_rows(s, t) + other_rows(s, sub, tk))


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from bench import report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dsn", help="admin DSN of the server (default $PROVISIONING_TEST_PG_DSN)")
    args = ap.parse_args(argv)
    if args.dsn:
        os.environ["PROVISIONING_TEST_PG_DSN"] = args.dsn
    with tempfile.TemporaryDirectory(prefix="bench-fig13-", dir="/var/tmp") as tmp:
        fig = report.finish(figure(QUICK if args.quick else FULL, Path(tmp)))
    print(report.render_text([fig]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
