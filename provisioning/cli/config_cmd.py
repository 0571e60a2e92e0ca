"""`config show | validate | path`."""

from __future__ import annotations

import json

import click

from provisioning.cli.context import AppContext
from provisioning.config import validate_file


@click.group("config")
def config_group() -> None:
    """Show, validate and locate configuration."""


@config_group.command("show")
@click.pass_obj
def show(app: AppContext) -> None:
    """Print the merged configuration and where each value came from."""
    cfg = app.config
    merged = cfg.as_dict()
    if app.json_output:
        app.emit_json({
            "config": merged,
            "sources": {k: cfg.sources[k] for k in sorted(cfg.sources)},
        })
        return
    for section, values in merged.items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            click.echo(f"{key} = {json.dumps(value)}  # {cfg.sources[f'{section}.{key}']}")
        click.echo()


@config_group.command("validate")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.pass_obj
def validate(app: AppContext, file: str | None) -> None:
    """Validate FILE alone, or the whole merged configuration."""
    if file:
        validate_file(file)
        target = file
    else:
        app.config  # noqa: B018 - loading validates every layer
        target = "merged configuration"
    if app.json_output:
        app.emit_json({"valid": True, "target": target})
    else:
        click.echo(f"ok: {target} is valid")


@config_group.command("path")
@click.pass_obj
def path(app: AppContext) -> None:
    """List the config files looked at, in layer order, and which exist."""
    files = [{"layer": layer, "path": str(p), "exists": exists}
             for layer, p, exists in app.config.files]
    if app.json_output:
        app.emit_json(files)
        return
    for f in files:
        click.echo(f"{'found  ' if f['exists'] else 'missing'} {f['layer']:<9} {f['path']}")
