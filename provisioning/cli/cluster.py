"""`cluster` commands: create and delete run as workflows (a DAG)."""

from __future__ import annotations

import click

from provisioning.cli.context import AppContext
from provisioning.cli.server import infra_option, plan_option, run_business, wait_option


@click.group("cluster")
def cluster_group() -> None:
    """Create and delete clusters (servers + taskservs)."""


@cluster_group.command("create")
@click.argument("name")
@infra_option
@wait_option
@plan_option
@click.pass_obj
def cluster_create(app: AppContext, name: str, infra: str | None, wait: bool,
                   plan: bool) -> None:
    """Create cluster NAME: servers in parallel, then taskservs in dependency
    order, then health checks."""
    run_business(app, "cluster.create", infra, {"cluster": name}, wait, plan)


@cluster_group.command("delete")
@click.argument("name")
@infra_option
@wait_option
@plan_option
@click.pass_obj
def cluster_delete(app: AppContext, name: str, infra: str | None, wait: bool,
                   plan: bool) -> None:
    """Delete cluster NAME: every server of it (and their taskservs), then its record."""
    run_business(app, "cluster.delete", infra, {"cluster": name}, wait, plan)
