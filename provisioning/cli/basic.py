"""`version`, `help`, `env`: always direct, never touch the daemon."""

from __future__ import annotations

import click

from provisioning import paths
from provisioning.cli.context import AppContext
from provisioning.cli.modes import describe_modes
from provisioning.errors import UsageError
from provisioning.versions import format_versions, version_info


@click.command("version")
@click.pass_obj
def version_cmd(app: AppContext) -> None:
    """Show core, platform and API versions."""
    click.echo(format_versions(app.json_output), nl=False)


@click.command("help")
@click.argument("command", nargs=-1)
@click.pass_context
def help_cmd(ctx: click.Context, command: tuple[str, ...]) -> None:
    """Show help for COMMAND (or for everything)."""
    root = ctx.find_root()
    group = root.command
    cmd_ctx = root
    for name in command:
        sub = group.get_command(cmd_ctx, name) if isinstance(group, click.Group) else None
        if sub is None:
            raise UsageError(f"unknown command: {' '.join(command)}",
                             hint="run 'provisioning help' for the list")
        cmd_ctx = click.Context(sub, info_name=name, parent=cmd_ctx)
        group = sub
    click.echo(group.get_help(cmd_ctx))


@click.command("env")
@click.pass_obj
def env_cmd(app: AppContext) -> None:
    """Show the resolved mode, endpoint, data dir, lib dirs and config files."""
    cfg = app.config
    info = {
        "mode": app.mode or cfg.execution.default_mode,
        "mode_source": "command line" if app.mode else cfg.sources["execution.default_mode"],
        "endpoint": app.endpoint_url(),
        "data_dir": cfg.storage.data_dir,
        "queue_dir": str(cfg.data_paths().queue_dir),
        "lib_dirs": [str(d) for d in cfg.lib_dirs()] + [str(paths.package_lib_dir())],
        "config_files": [{"layer": layer, "path": str(p), "exists": exists}
                         for layer, p, exists in cfg.files],
        "orchestrator": {"auto_start": cfg.orchestrator.auto_start,
                         "fallback_to_direct": cfg.orchestrator.fallback_to_direct},
        **version_info(),
    }
    info["commands"] = describe_modes(app)
    if app.json_output:
        app.emit_json(info)
        return
    click.echo(f"mode          {info['mode']}  ({info['mode_source']})")
    click.echo(f"endpoint      {info['endpoint']}")
    click.echo(f"data dir      {info['data_dir']}")
    click.echo("lib dirs      " + (", ".join(info["lib_dirs"]) or "-"))
    click.echo("config files:")
    for f in info["config_files"]:
        mark = "found  " if f["exists"] else "missing"
        click.echo(f"  {mark} {f['layer']:<9} {f['path']}")
    for key, row in info.get("commands", {}).items():
        click.echo(f"  {key:<18} {row['mode']:<13} {row['why']}")
