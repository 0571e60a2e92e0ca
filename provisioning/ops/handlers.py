"""The business ops' entry points (provisioning/lib/<area>/<verb>.py call these).

Each takes the OpContext of the task protocol and returns the RESULT dict.
Params always carry "infra" (an absolute infra dir) and usually "infra_name";
deletes still work from recorded state when the infra file is gone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioning.errors import ProvisioningError, UsageError
from provisioning.ops import clusters, installs, providers, servers
from provisioning.ops.infra import load_infra
from provisioning.ops.protocol import OpContext, require
from provisioning.ops.state import StateStore


def _infra(ctx: OpContext):
    return load_infra(require(ctx.params, "infra"))


def _infra_name_and_provider(ctx: OpContext) -> tuple[str, Any]:
    """For deletes: the infra file if it still loads, else what state remembers."""
    state = StateStore()
    try:
        infra = _infra(ctx)
        return infra.name, providers.for_infra(infra, state)
    except UsageError:
        name = ctx.params.get("infra_name") or Path(require(ctx.params, "infra")).name
        return name, providers.from_state(name, state)


def server_create(ctx: OpContext) -> dict[str, Any]:
    infra = _infra(ctx)
    host = ctx.params.get("server")
    if host:
        return servers.create(infra, host, ctx)
    results = [servers.create(infra, s.hostname, ctx) for s in infra.servers]
    return {"infra": infra.name, "servers": results}


def server_delete(ctx: OpContext) -> dict[str, Any]:
    name, provider = _infra_name_and_provider(ctx)
    return servers.delete(name, require(ctx.params, "server"), ctx, provider=provider)


def _infra_filter(ctx: OpContext) -> str | None:
    if ctx.params.get("infra_name"):
        return ctx.params["infra_name"]
    if ctx.params.get("infra"):
        return _infra(ctx).name
    return None


def server_list(ctx: OpContext) -> dict[str, Any]:
    return {"servers": servers.list_views(_infra_filter(ctx))}


def server_show(ctx: OpContext) -> dict[str, Any]:
    return servers.show(require(ctx.params, "server"), _infra_filter(ctx))


def taskserv_create(ctx: OpContext) -> dict[str, Any]:
    infra = _infra(ctx)
    name = require(ctx.params, "taskserv")
    host = ctx.params.get("server")
    if host:
        return installs.install(infra, host, name, ctx)
    hosts = [s.hostname for s in infra.servers if name in infra.taskserv_plan(s.hostname)]
    if not hosts:
        raise ProvisioningError(f"no server of infra {infra.name} declares taskserv {name}")
    return {"results": [installs.install(infra, h, name, ctx) for h in hosts]}


def taskserv_delete(ctx: OpContext) -> dict[str, Any]:
    name, provider = _infra_name_and_provider(ctx)
    return installs.remove(name, require(ctx.params, "server"), require(ctx.params, "taskserv"),
                           ctx, provider=provider)


def taskserv_list(ctx: OpContext) -> dict[str, Any]:
    rows = [dict(t, server=v["hostname"], infra=v["infra"])
            for v in servers.list_views(_infra_filter(ctx)) for t in v["taskservs"]]
    return {"taskservs": rows}


def cluster_create(ctx: OpContext) -> dict[str, Any]:
    return clusters.create(_infra(ctx), require(ctx.params, "cluster"), ctx)


def cluster_check(ctx: OpContext) -> dict[str, Any]:
    return clusters.check(_infra(ctx), require(ctx.params, "cluster"), ctx)


def cluster_delete(ctx: OpContext) -> dict[str, Any]:
    name, provider = _infra_name_and_provider(ctx)
    hosts = ctx.params.get("servers")
    if not isinstance(hosts, list):
        try:
            hosts = list(_infra(ctx).cluster(require(ctx.params, "cluster")).servers)
        except UsageError:
            hosts = []
    return clusters.delete(name, require(ctx.params, "cluster"), hosts, ctx, provider=provider)
