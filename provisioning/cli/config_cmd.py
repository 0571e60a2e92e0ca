"""`config show | validate | path`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from provisioning.cli.context import AppContext
from provisioning.config import validate_file
from provisioning.engine.loader import load_workflow_file
from provisioning.ops.infra import load_infra
from provisioning.ops.redact import redact_config
from provisioning.ops.registry import OpRegistry


@click.group("config")
def config_group() -> None:
    """Show, validate and locate configuration."""


@config_group.command("show")
@click.pass_obj
def show(app: AppContext) -> None:
    """Print the merged configuration and where each value came from."""
    cfg = app.config
    merged = redact_config(cfg.as_dict())  # secret-by-name keys, URL passwords: ***
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
    """Validate FILE alone, or the whole merged configuration.

    FILE is a config file, a workflow file (TOML, JSON or Nickel) or an infra
    settings file (settings.toml or settings.ncl), told apart by its name and
    content; it gets the checks `submit` or an infra command would apply.
    """
    kind, what = "config", "valid"
    if file:
        kind, what = _validate_file(app, file)
        target = file
    else:
        app.config  # noqa: B018 - loading validates every layer
        target = "merged configuration"
    if app.json_output:
        app.emit_json({"valid": True, "target": target, "kind": kind})
    else:
        click.echo(f"ok: {target} is {what}")


def _validate_file(app: AppContext, file: str) -> tuple[str, str]:
    """(kind, what it is) of a valid FILE; raises the loader's error otherwise."""
    p = Path(file)
    kind = _file_kind(p)
    if kind == "infra":
        infra = load_infra(p, lib_dirs=app.config.lib_dirs())
        return kind, f"a valid infra '{infra.name}' ({_count(len(infra.servers), 'server')})"
    if kind == "workflow":
        spec = load_workflow_file(p, registry=OpRegistry.from_config(app.config))
        return kind, f"a valid workflow ({_count(len(spec.tasks), 'task')})"
    validate_file(p)
    return kind, "valid"


def _file_kind(p: Path) -> str:
    if p.name in ("settings.toml", "settings.ncl"):
        return "infra"
    if p.suffix.lower() in (".ncl", ".json"):
        return "workflow"  # config files are TOML only
    try:
        head = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "config"  # validate_file says what is wrong with it
    return "workflow" if re.search(r"^\s*(\[\[tasks\]\]|\[workflow\])", head, re.M) else "config"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


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
