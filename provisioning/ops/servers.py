"""Servers of an infra: create, delete, and views reconciled with reality."""

from __future__ import annotations

from typing import Any

from provisioning.errors import NotFound, ProvisioningError, UsageError
from provisioning.ops import installs, procs, providers
from provisioning.ops.infra import Infra, load_infra
from provisioning.ops.installs import taskserv_status
from provisioning.ops.state import StateStore


def create(infra: Infra, hostname: str, report: Any, *, state: StateStore | None = None
           ) -> dict[str, Any]:
    """Create one server; a second create is a no-op that says so."""
    state = state or StateStore()
    server = infra.server(hostname)
    provider = providers.for_infra(infra, state)
    provider.report = report
    with state.lock(infra.name, hostname):
        state.record_infra(infra.name, str(infra.dir), infra.provider, infra.provider_settings)
        report.progress(10, f"creating server {hostname} on provider {infra.provider}")
        record, created = provider.create_server(server)
        if created:
            record["status"] = "running"
            state.save_server(infra.name, record)
            message = f"server {hostname} created at {record['address']} ({record['root']})"
        else:
            message = f"server {hostname} already exists at {record['address']}; nothing to do"
    report.progress(100, message)
    return {"hostname": hostname, "infra": infra.name, "address": record["address"],
            "root": record["root"], "changed": created, "message": message}


def delete(infra_name: str, hostname: str, report: Any, *, provider: Any = None,
           state: StateStore | None = None) -> dict[str, Any]:
    """Delete one server and every taskserv on it; a missing server is a no-op."""
    state = state or StateStore()
    provider = provider or providers.from_state(infra_name, state)
    if provider is not None:
        provider.report = report
    with state.lock(infra_name, hostname):
        record = state.server(infra_name, hostname)
        exists = provider is not None and provider.status(hostname) != "missing"
        if record is None and not exists:
            message = f"server {hostname} does not exist in infra {infra_name}; nothing to delete"
            report.progress(100, message)
            state.prune_infra(infra_name)
            return {"hostname": hostname, "infra": infra_name, "changed": False,
                    "message": message}
        installed = sorted(state.taskservs(infra_name, hostname),
                           key=lambda t: t.get("seq", 0), reverse=True)
        for i, ts in enumerate(installed):
            report.progress(10 + 60 * i // max(1, len(installed)),
                            f"removing taskserv {ts['name']} from {hostname}")
            installs.remove_locked(infra_name, hostname, ts["name"], report, provider=provider,
                                   state=state, force=True)
        report.progress(80, f"deleting server {hostname}")
        existed = provider.delete_server(hostname) if provider is not None else False
        state.remove_server(infra_name, hostname)
        state.prune_infra(infra_name)
    message = f"server {hostname} deleted"
    if not existed:
        message += " (it was already gone at the provider; its record is removed)"
    report.progress(100, message)
    return {"hostname": hostname, "infra": infra_name, "changed": True, "message": message}


# -- views -----------------------------------------------------------------------

GONE = ("missing", "terminated", "shutting-down", "deleted")
UP = ("running", "started")  # a provider's word for a server that runs (EC2, UpCloud)


def server_view(infra_name: str, record: dict[str, Any], state: StateStore,
                provider: Any = None, *, probe: bool = False,
                found: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One recorded server as shown; `found` (the provider's list_found by hostname)
    saves a provider call per server, None asks the provider for this one."""
    host = record["hostname"]
    if found is not None:
        here = found.get(host)
        provider_state = here["state"] if here else "missing"
        reason = here.get("reason") if here else None
    elif provider is not None:
        detail = getattr(provider, "status_detail", None)  # providers of real hosts: why not
        provider_state, reason = detail(host) if detail else (provider.status(host), None)
    else:
        provider_state, reason = "missing", None
    exists = provider_state not in GONE
    taskservs = []
    for ts in sorted(state.taskservs(infra_name, host), key=lambda t: t.get("seq", 0)):
        view = {"name": ts["name"], "status": taskserv_status(ts), "ports": ts.get("ports", {}),
                "processes": ts.get("processes", []), "error": ts.get("error")}
        if probe and ts.get("health") and view["status"] == "running":
            h = ts["health"]
            ok, detail = procs.check_once(h["type"], record["address"],
                                          ts["ports"][h["port"]], path=h.get("path", "/"),
                                          send=h.get("send", ""), expect=h.get("expect", ""))
            view["health"] = {"ok": ok, "detail": detail}
            if not ok:
                view["status"] = "unhealthy"
        taskservs.append(view)
    if not exists:
        status = "missing"
    elif provider_state not in UP:
        status = provider_state  # as the provider says: pending, stopped, maintenance...
    elif any(t["status"] in ("dead", "unhealthy") for t in taskservs):
        status = "degraded"
    elif any(t["status"] in ("failed", "installing", "starting") for t in taskservs):
        status = "incomplete"
    else:
        status = "running"
    return {"hostname": host, "infra": infra_name, "provider": record.get("provider"),
            "address": record.get("address"), "port_offset": record.get("port_offset", 0),
            "root": record.get("root"), "plan": record.get("plan"), "zone": record.get("zone"),
            "labels": record.get("labels", {}), "status": status, "reason": reason,
            "taskservs": taskservs,
            "created_at": record.get("created_at"), "id": record.get("id"),
            "provider_state": provider_state, "drift": None if exists else "missing"}


def _declared(name: str, state: StateStore, infra: Infra | None) -> set[str] | None:
    """Hostnames the infra file declares; None when it cannot be read any more."""
    if infra is None:
        rec = state.infra_record(name)
        try:
            infra = load_infra(rec["path"]) if rec else None
        except ProvisioningError:
            infra = None
    return {s.hostname for s in infra.servers} if infra is not None else None


def _orphan_view(name: str, provider: Any, f: dict[str, Any]) -> dict[str, Any]:
    return {"hostname": f["hostname"], "infra": name, "provider": provider.name,
            "address": f.get("address"), "port_offset": 0, "root": None,
            "plan": f.get("plan"), "zone": f.get("zone"), "labels": {},
            "status": f["state"], "taskservs": [], "created_at": None, "id": f.get("id"),
            "provider_state": f["state"], "drift": "orphan"}


def _infra_views(name: str, state: StateStore, infra: Infra | None,
                 probe: bool) -> list[dict[str, Any]]:
    records = state.servers(name)
    try:
        provider = (providers.for_infra(infra, state) if infra is not None
                    else providers.from_state(name, state))
    except ProvisioningError:
        provider = None  # an extension provider that is no longer installed
    if provider is None:
        return [server_view(name, r, state, None, probe=probe) for r in records]
    try:
        found_list = provider.list_found()
    except ProvisioningError as e:  # no credentials here, cloud unreachable: say so, go on
        views = [server_view(name, r, state, None, probe=probe, found={}) for r in records]
        for v in views:
            v.update(status="unknown", provider_state="unknown", drift=None,
                     provider_error=e.message)
        return views
    found: dict[str, dict[str, Any]] = {}
    for f in found_list:  # a live machine wins over a terminated one of the same name
        if f["hostname"] not in found or found[f["hostname"]]["state"] in GONE:
            found[f["hostname"]] = f
    views = [server_view(name, r, state, provider, probe=probe, found=found) for r in records]
    declared = _declared(name, state, infra)
    recorded = {r["hostname"] for r in records}
    for v in views:
        if declared is not None and v["hostname"] not in declared and v["drift"] is None:
            v["drift"] = "orphan"
    views += [_orphan_view(name, provider, f) for host, f in sorted(found.items())
              if host not in recorded and f["state"] not in GONE
              and (declared is None or host not in declared)]
    return views


def list_views(infra_name: str | None = None, *, state: StateStore | None = None,
               probe: bool = False, infra: Infra | None = None) -> list[dict[str, Any]]:
    """Every recorded server (of one infra, or all), reconciled with the provider:
    `drift` is "missing" (recorded, gone at the provider) or "orphan" (the provider
    has it for this infra, the infra does not declare it). One list_found per infra."""
    state = state or StateStore()
    names = [infra_name] if infra_name else state.infra_names()
    out = []
    for name in names:
        if not state.servers(name) and infra is None:
            continue
        out.extend(_infra_views(name, state, infra if infra and infra.name == name else None,
                                probe))
    return out


def show(hostname: str, infra_name: str | None = None, *, state: StateStore | None = None
         ) -> dict[str, Any]:
    state = state or StateStore()
    matches = [v for v in list_views(infra_name, state=state) if v["hostname"] == hostname]
    if not matches:
        where = f" in infra {infra_name}" if infra_name else ""
        raise NotFound(f"server {hostname} does not exist{where}",
                       hint="'provisioning server list' shows the servers that do")
    if len(matches) > 1:
        raise UsageError(f"server {hostname} exists in several infras "
                         f"({', '.join(m['infra'] for m in matches)})", hint="pass --infra")
    view = matches[0]
    record = state.server(view["infra"], hostname)
    if record is None or view.get("provider_error"):  # an orphan, or a provider we cannot read
        return view
    provider = providers.from_state(view["infra"], state)
    probed = server_view(view["infra"], record, state, provider, probe=True)
    probed["drift"] = view["drift"]
    return probed

