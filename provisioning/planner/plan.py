"""`--plan`: the workflow a command would submit, and what each task would do.

Built from the same WorkflowSpec as the real run (build.py), then each task
is given its intended action from ONE read of the provider (`list_found`,
read only by the Provider contract) and the state records of taskservs:

  server.create    create | exists          server.delete    delete | absent
  taskserv.create  install | installed      taskserv.delete  delete | absent
  cluster.check    check                    cluster.delete   forget

(server.delete on a provider that keeps its hosts, ssh: forget | absent.)

A provider that `reads_hosts` (ssh) is asked the host itself for each
taskserv task: its folder under <root>/opt/provisioning/taskservs/ and its
`check` (installs.read_on_host, read only); an adopted host that does not
answer makes its tasks `unreachable`, with the reason. Master connections
the read opened are closed before the plan returns.

Nothing is changed, no daemon is asked, no lock is taken. For a cloud the
read needs that cloud's credentials in this process (the user's own
environment: the same chain as the tasks'), and its SDK is imported here,
only for --plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioning.errors import ProvisioningError, UsageError
from provisioning.model import WorkflowSpec
from provisioning.ops import installs, providers
from provisioning.ops.infra import load_infra
from provisioning.ops.state import StateStore
from provisioning.planner.build import build_workflow

GONE = ("missing", "terminated", "shutting-down", "deleted")
CHANGES = ("create", "delete", "install", "forget")


def _provider(infra_ref: str | Path, spec: WorkflowSpec, state: StateStore) -> Any:
    try:
        infra = load_infra(infra_ref)
        return infra.name, providers.for_infra(infra, state), infra
    except UsageError:  # a delete of an infra whose file is gone: what state remembers
        name = spec.tasks[0].params.get("infra_name") or Path(str(infra_ref)).name
        return name, providers.from_state(name, state), None


def _read_hosts(spec: WorkflowSpec, infra: Any, provider: Any, found: dict[str, Any],
                state: StateStore) -> dict[tuple[str, str], tuple[bool, str]]:
    """(server, taskserv) -> (installed, detail), read from each reachable host."""
    if infra is None or not getattr(provider, "reads_hosts", False):
        return {}
    read: dict[tuple[str, str], tuple[bool, str]] = {}
    for s in infra.servers:  # not adopted yet: does it answer? (a throwaway known_hosts)
        if s.hostname not in found and any(t.op == "server.create" and t.params.get(
                "server") == s.hostname for t in spec.tasks):
            state_, reason = provider.probe(s)
            if reason:
                found[s.hostname] = {"hostname": s.hostname, "state": state_,
                                     "reason": reason, "adopted": False}
    for t in spec.tasks:
        host, ts = t.params.get("server"), t.params.get("taskserv")
        if (t.op not in ("taskserv.create", "taskserv.delete") or (host, ts) in read
                or found.get(host, {}).get("state") != "running"):
            continue
        server = state.server(infra.name, host) or provider.find_server(host)
        try:
            read[(host, ts)] = installs.read_on_host(infra, server, ts, provider, state)
        except ProvisioningError as e:
            found[host] = {**found[host], "state": "unreachable", "reason": e.message}
    return read


def _action(task: Any, infra: str, found: dict[str, dict[str, Any]],
            state: StateStore, read: dict[tuple[str, str], tuple[bool, str]],
            keeps_hosts: bool = False) -> tuple[str, str]:
    """``keeps_hosts``: the provider adopts hosts and never destroys them (ssh): a
    server delete forgets the host, and must reach it to remove our files."""
    host, ts = task.params.get("server"), task.params.get("taskserv")
    if found.get(host, {}).get("state") == "unreachable" and (
            task.op != "server.delete" or keeps_hosts):
        what = f"{ts} on {host}" if ts else host
        return "unreachable", f"cannot read {what}: {found[host].get('reason')}"
    here = host in found and found[host].get("state") not in GONE
    if (host, ts) in read:
        installed, detail = read[(host, ts)]
        if task.op == "taskserv.create":
            return ("installed" if installed else "install"), detail
        return ("delete" if installed else "absent"), detail
    where = f" ({found[host].get('id') or found[host].get('state')})" if here else ""
    if task.op == "server.create":
        return ("exists", f"{host} exists{where}") if here else ("create", f"create {host}")
    if task.op == "server.delete":
        recorded = state.server(infra, host) is not None
        if keeps_hosts and (here or recorded):
            return "forget", (f"remove provisioning's files from {host} and forget it "
                              "(the host itself is kept)")
        if here or recorded:
            return "delete", f"delete {host}{where}" + ("" if here else " (record only)")
        return "absent", f"{host} does not exist"
    if task.op in ("taskserv.create", "taskserv.delete"):
        rec = state.taskserv(infra, host, ts) if here else None
        installed = rec is not None and rec.get("status") == "installed"
        if task.op == "taskserv.create":
            return (("installed", f"{ts} is installed on {host}") if installed
                    else ("install", f"install {ts} on {host}"))
        return (("delete", f"remove {ts} from {host}") if rec is not None
                else ("absent", f"{ts} is not on {host}"))
    if task.op == "cluster.check":
        return "check", f"health checks of cluster {task.params.get('cluster')}"
    if task.op == "cluster.delete":
        return "forget", f"forget cluster {task.params.get('cluster')}"
    return "run", task.op


def plan_workflow(kind: str, infra_ref: str | Path, params: dict[str, Any] | None = None, *,
                  state: StateStore | None = None) -> dict[str, Any]:
    """The plan of one business command, as data (the CLI prints it or emits JSON)."""
    state = state or StateStore()
    spec = build_workflow(kind, infra_ref, params, state=state)
    name, provider, infra = _provider(infra_ref, spec, state)
    found: dict[str, dict[str, Any]] = {}
    kept = provider.masters_open() if hasattr(provider, "masters_open") else None
    try:
        if provider is not None:
            try:
                for f in provider.list_found():
                    if f["hostname"] not in found or f.get("state") not in GONE:
                        found[f["hostname"]] = f
            except ProvisioningError as e:
                raise ProvisioningError(f"plan: cannot read provider {provider.name} of "
                                        f"infra {name}: {e.message}", hint=e.hint) from None
        read = _read_hosts(spec, infra, provider, found, state)
    finally:
        if kept is not None:  # the master connections this read opened
            provider.close_masters_except(kept)
    tasks = []
    for t in spec.tasks:
        action, detail = _action(t, name, found, state, read,
                                 keeps_hosts=getattr(provider, "reads_hosts", False))
        tasks.append({"id": t.id, "op": t.op, "action": action, "detail": detail,
                      "server": t.params.get("server"), "taskserv": t.params.get("taskserv"),
                      "depends_on": list(t.depends_on)})
    return {"workflow": spec.name, "kind": kind, "infra": name,
            "provider": getattr(provider, "name", None), "tasks": tasks,
            "changes": sum(1 for t in tasks if t["action"] in CHANGES)}


def render(plan: dict[str, Any]) -> list[str]:
    """The plan as lines of text."""
    lines = [f"Plan for workflow {plan['workflow']} (infra {plan['infra']}, provider "
             f"{plan['provider'] or 'unknown'}): {len(plan['tasks'])} task(s), "
             f"{plan['changes']} change(s); nothing was submitted"]
    width = max(len(t["id"]) for t in plan["tasks"])
    for t in plan["tasks"]:
        deps = t["depends_on"]
        after = (f"  (after {', '.join(deps)})" if 0 < len(deps) <= 3
                 else f"  (after {len(deps)} tasks)" if deps else "")
        lines.append(f"  {t['id']:<{width}}  {t['action']:<9}  {t['detail']}{after}")
    return lines
