"""Clusters: a named set of servers of an infra with their taskservs.

`cluster create` is normally a workflow (planner.build_workflow): servers
in parallel, then each server's taskservs in `requires` order, then
`cluster.check`. The `cluster.create` op does the same steps in one process
for workflow files that ask for it by name.
"""

from __future__ import annotations

import time
from typing import Any

from provisioning.errors import ProvisioningError
from provisioning.ops import installs, providers, servers
from provisioning.ops.infra import Infra
from provisioning.ops.installs import taskserv_status
from provisioning.ops.state import StateStore


def check(infra: Infra, name: str, report: Any, *, state: StateStore | None = None,
          deadline: float = 15.0) -> dict[str, Any]:
    """Every taskserv of every server of the cluster running and healthy."""
    state = state or StateStore()
    cluster = infra.cluster(name)
    checks: list[dict[str, Any]] = []
    provider = None
    for host in cluster.servers:
        server = state.server(infra.name, host)
        if server is None:
            checks.append({"server": host, "taskserv": None, "ok": False,
                           "detail": "server does not exist"})
            continue
        for ts in infra.taskserv_plan(host):
            rec = state.taskserv(infra.name, host, ts)
            if rec is None:
                checks.append({"server": host, "taskserv": ts, "ok": False,
                               "detail": "not installed"})
                continue
            status = taskserv_status(rec)
            ok, detail = status == "running", f"status {status}"
            if ok and rec.get("health"):
                provider = provider or providers.for_infra(infra, state)
                ok, detail = installs.health_of(infra, server, rec, provider,
                                                deadline=deadline)
            checks.append({"server": host, "taskserv": ts, "ok": ok, "detail": detail})
            report.log(f"check {ts}@{host}: {'ok' if ok else 'FAILED'} ({detail})")
    healthy = all(c["ok"] for c in checks)
    state.save_cluster(infra.name, {"name": name, "infra": infra.name,
                                    "servers": list(cluster.servers),
                                    "status": "healthy" if healthy else "unhealthy",
                                    "checked_at": time.time(), "checks": checks})
    if not healthy:
        bad = [f"{c['taskserv'] or '-'}@{c['server']}: {c['detail']}"
               for c in checks if not c["ok"]]
        raise ProvisioningError(f"cluster {name} is not healthy: {'; '.join(bad)}")
    message = f"cluster {name} healthy ({len(checks)} check(s) passed)"
    report.progress(100, message)
    return {"cluster": name, "infra": infra.name, "healthy": True, "checks": checks,
            "message": message}


def create(infra: Infra, name: str, report: Any, *, state: StateStore | None = None
           ) -> dict[str, Any]:
    """All of cluster create in this one process (servers one after another)."""
    state = state or StateStore()
    cluster = infra.cluster(name)

    class Quiet:  # inner steps log but do not move the op's own progress
        def progress(self, _n: int, message: str = "") -> None:
            report.log(message)

        def log(self, message: str) -> None:
            report.log(message)

    steps = [(h, None) for h in cluster.servers]
    steps += [(h, ts) for h in cluster.servers for ts in infra.taskserv_plan(h)]
    for i, (host, ts) in enumerate(steps):
        report.progress(100 * i // (len(steps) + 1),
                        f"installing {ts} on {host}" if ts else f"creating server {host}")
        if ts is None:
            servers.create(infra, host, Quiet(), state=state)
        else:
            installs.install(infra, host, ts, Quiet(), state=state)
    return check(infra, name, report, state=state)


def delete(infra_name: str, name: str, hosts: list[str], report: Any, *,
           provider: Any = None, state: StateStore | None = None) -> dict[str, Any]:
    """Delete whatever is left of the cluster's servers, then its record."""
    state = state or StateStore()
    record = state.cluster(infra_name, name)
    hosts = list(dict.fromkeys(hosts or (record or {}).get("servers", [])))
    left = [h for h in hosts if state.server(infra_name, h) is not None]
    for i, host in enumerate(left):
        report.progress(100 * i // (len(left) + 1), f"deleting server {host}")
        servers.delete(infra_name, host, report, provider=provider, state=state)
    removed = state.remove_cluster(infra_name, name)
    state.prune_infra(infra_name)
    changed = removed or bool(left)
    message = (f"cluster {name} deleted" if changed
               else f"cluster {name} does not exist in infra {infra_name}; nothing to delete")
    report.progress(100, message)
    return {"cluster": name, "infra": infra_name, "changed": changed, "message": message}
