"""`taskserv` commands: install/remove run as workflows; list reads state."""

from __future__ import annotations

import click

from provisioning.cli.context import AppContext
from provisioning.cli.server import (
    infra_name_of,
    infra_option,
    plan_option,
    print_table,
    run_business,
    state_of,
    wait_option,
)
from provisioning.ops import servers
from provisioning.ops.infra import find_workspace, load_infra
from provisioning.ops.taskservs import Catalog


@click.group("taskserv")
def taskserv_group() -> None:
    """Install, remove and list task services on servers."""


@taskserv_group.command("create")
@click.argument("name")
@infra_option
@click.option("--server", "server", metavar="HOSTNAME",
              help="Only this server (default: every server that declares the taskserv).")
@wait_option
@plan_option
@click.pass_obj
def taskserv_create(app: AppContext, name: str, infra: str | None, server: str | None,
                    wait: bool, plan: bool) -> None:
    """Install taskserv NAME (after what it requires) on the infra's servers."""
    run_business(app, "taskserv.create", infra, {"taskserv": name, "server": server}, wait,
                 plan)


@taskserv_group.command("delete")
@click.argument("name")
@infra_option
@click.option("--server", "server", metavar="HOSTNAME",
              help="Only this server (default: every server that has it).")
@wait_option
@plan_option
@click.pass_obj
def taskserv_delete(app: AppContext, name: str, infra: str | None, server: str | None,
                    wait: bool, plan: bool) -> None:
    """Remove taskserv NAME: run its remove script, stop its processes, drop its files."""
    run_business(app, "taskserv.delete", infra, {"taskserv": name, "server": server}, wait,
                 plan)


@taskserv_group.command("list")
@infra_option
@click.option("--server", "server", metavar="HOSTNAME", help="Only this server.")
@click.option("--available", is_flag=True,
              help="List the taskserv definitions that can be installed instead.")
@click.pass_obj
def taskserv_list(app: AppContext, infra: str | None, server: str | None,
                  available: bool) -> None:
    """List installed taskservs (state reconciled with their processes)."""
    if available:
        _list_available(app, infra)
        return
    rows = [dict(t, server=v["hostname"], infra=v["infra"], address=v["address"])
            for v in servers.list_views(infra_name_of(app, infra), state=state_of(app))
            if server is None or v["hostname"] == server for t in v["taskservs"]]
    if app.json_output:
        app.emit_json(rows)
        return
    if not rows:
        click.echo("no taskservs installed")
        return
    print_table(["TASKSERV", "SERVER", "INFRA", "STATUS", "PORTS"],
                [[r["name"], r["server"], r["infra"], r["status"],
                  ", ".join(f"{r['address']}:{p}" for p in r["ports"].values()) or "-"]
                 for r in rows])


def _list_available(app: AppContext, infra: str | None) -> None:
    if infra is not None:
        catalog = load_infra(infra).catalog
    else:
        catalog = Catalog.load(workspace=find_workspace(), lib_dirs=app.config.lib_dirs())
    defs = [d.summary() for _, d in sorted(catalog.defs.items())]
    if app.json_output:
        app.emit_json(defs)
        return
    print_table(["TASKSERV", "REQUIRES", "PORTS", "HEALTH", "FROM"],
                [[d["name"], ",".join(d["requires"]) or "-",
                  ",".join(f"{k}={v}" for k, v in d["ports"].items()) or "-",
                  d["health"] or "-", d["path"]] for d in defs])
