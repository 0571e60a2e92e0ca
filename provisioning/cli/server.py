"""`server` commands: create/delete run as workflows (modes.execute decides
direct or orchestrated); list/show read recorded state, reconciled with
reality, in this process and never contact the daemon.

The helpers at the top (infra_option, wait_option, run_business, state_of,
infra_name_of) are shared by the taskserv and cluster command modules.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import click

from provisioning.cli.context import AppContext
from provisioning.errors import UsageError
from provisioning.ops import servers
from provisioning.ops.infra import load_infra, resolve_infra
from provisioning.ops.state import StateStore

infra_option = click.option("--infra", "infra", metavar="NAME|PATH", envvar="PROVISIONING_INFRA",
                            help="Infra name (in the workspace) or path to its directory.")
wait_option = click.option("--wait", is_flag=True,
                           help="Follow the workflow until it finishes (orchestrated mode).")
plan_option = click.option("--plan", "plan", is_flag=True,
                           help="Show the workflow and each task's intended action from a "
                           "read of the provider; change nothing, no daemon.")


def state_of(app: AppContext) -> StateStore:
    return StateStore(app.config.data_paths().data_dir)


def run_business(app: AppContext, kind: str, infra: str | None, params: dict[str, Any],
                 wait: bool, plan: bool = False) -> None:
    """Build the workflow for `kind` (validating the infra) and run it per the mode."""
    # lazy: the planner, the workflow model and the monitor only for commands
    # that change something; `server list|show` stay light (bench/cli_start.py)
    from provisioning.cli.modes import execute
    from provisioning.planner import build_workflow

    try:
        ref: str = str(resolve_infra(infra))
    except UsageError:
        if infra is None or not kind.endswith(".delete"):
            raise
        ref = infra  # a delete may still work from recorded state
    if plan:
        show_plan(app, kind, ref, params)
        return
    spec = build_workflow(kind, ref, params, state=state_of(app))
    code = execute(app, kind, spec, wait=wait)
    if code:
        raise click.exceptions.Exit(code)


def show_plan(app: AppContext, kind: str, ref: str, params: dict[str, Any]) -> None:
    # lazy: like the planner above, only for --plan
    from provisioning.planner.plan import plan_workflow, render

    plan = plan_workflow(kind, ref, params, state=state_of(app))
    if app.json_output:
        app.emit_json(plan)
        return
    for line in render(plan):
        click.echo(line)


def infra_name_of(app: AppContext, infra: str | None) -> str | None:
    """Name of the infra to filter on: from its definition, or a name state knows."""
    if infra is None:
        return None
    try:
        return load_infra(infra).name
    except UsageError:
        if state_of(app).infra_record(infra) is not None:
            return infra
        raise


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return _dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@click.group("server")
def server_group() -> None:
    """Create, delete, list and show servers of an infra."""


@server_group.command("create")
@click.argument("name", required=False)
@infra_option
@wait_option
@plan_option
@click.pass_obj
def server_create(app: AppContext, name: str | None, infra: str | None, wait: bool,
                  plan: bool) -> None:
    """Create server NAME, or every server of the infra (in parallel)."""
    run_business(app, "server.create", infra, {"server": name}, wait, plan)


@server_group.command("delete")
@click.argument("name")
@infra_option
@wait_option
@plan_option
@click.pass_obj
def server_delete(app: AppContext, name: str, infra: str | None, wait: bool, plan: bool) -> None:
    """Delete server NAME and every taskserv on it (a missing server is a no-op)."""
    run_business(app, "server.delete", infra, {"server": name}, wait, plan)


@server_group.command("list")
@infra_option
@click.pass_obj
def server_list(app: AppContext, infra: str | None) -> None:
    """List servers from recorded state, checked against the provider (never the
    daemon): DRIFT says `missing` (recorded, gone at the provider) or `orphan` (the
    provider has it for this infra, the infra does not declare it)."""
    loaded = None
    if infra is not None:
        try:
            loaded = load_infra(infra)
        except UsageError:
            loaded = None  # known only from state: infra_name_of decides
    views = servers.list_views(loaded.name if loaded else infra_name_of(app, infra),
                               state=state_of(app), infra=loaded)
    for problem in sorted({v["provider_error"] for v in views if v.get("provider_error")}):
        click.echo(f"warning: provider not read, status unknown: {problem}", err=True)
    if app.json_output:
        app.emit_json(views)
        return
    if not views:
        click.echo("no servers" + (f" in infra {infra}" if infra else ""))
        return
    rows = []
    for v in views:
        ts = " ".join(f"{t['name']}({t['status']})" for t in v["taskservs"]) or "-"
        addr = v["address"] or "-"
        if v.get("port_offset"):
            addr += f" (+{v['port_offset']})"
        rows.append([v["hostname"], v["infra"], v["provider"] or "-", addr, v["status"],
                     v.get("drift") or "-", ts])
    print_table(["HOSTNAME", "INFRA", "PROVIDER", "ADDRESS", "STATUS", "DRIFT", "TASKSERVS"],
                rows)
    for v in views:
        if v.get("reason"):  # an unreachable host: why (the ssh provider)
            click.echo(f"{v['hostname']}: {v['reason']}")


@server_group.command("show")
@click.argument("name")
@infra_option
@click.pass_obj
def server_show(app: AppContext, name: str, infra: str | None) -> None:
    """Show one server: address, root, status, taskservs with ports and health."""
    view = servers.show(name, infra_name_of(app, infra), state=state_of(app))
    if app.json_output:
        app.emit_json(view)
        return
    labels = ", ".join(f"{k}={v}" for k, v in view["labels"].items()) or "-"
    for key, value in (("server", view["hostname"]), ("infra", view["infra"]),
                       ("provider", view["provider"]), ("status", view["status"]),
                       ("address", view["address"]), ("root", view["root"]),
                       ("plan", view["plan"]), ("zone", view["zone"]), ("labels", labels),
                       ("created", _when(view["created_at"]))):
        click.echo(f"{key:<10}{value}")
    if not view["taskservs"]:
        click.echo("taskservs none")
        return
    rows = []
    for t in view["taskservs"]:
        ports = ", ".join(f"{k}={view['address']}:{p}" for k, p in t["ports"].items()) or "-"
        pids = ",".join(str(p["pid"]) for p in t["processes"]) or "-"
        health = t.get("health", {}).get("detail") or t.get("error") or "-"
        rows.append([t["name"], t["status"], ports, pids, health])
    click.echo("")
    print_table(["TASKSERV", "STATUS", "PORTS", "PIDS", "HEALTH"], rows)
