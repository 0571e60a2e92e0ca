"""Top-level click group: global options, lazy sub-commands, error handling.

Sub-command modules are imported only when their command runs, so
`provisioning version` pays for click and nothing else.
"""

from __future__ import annotations

import importlib
import sys

import click

from provisioning import __version__
from provisioning.cli.context import AppContext
from provisioning.errors import EXIT_INTERRUPTED, EXIT_USAGE, ProvisioningError

# command name -> "module:attribute" (a click.Command)
COMMANDS: dict[str, str] = {
    "version": "provisioning.cli.basic:version_cmd",
    "help": "provisioning.cli.basic:help_cmd",
    "env": "provisioning.cli.basic:env_cmd",
    "config": "provisioning.cli.config_cmd:config_group",
    "server": "provisioning.cli.server:server_group",
    "taskserv": "provisioning.cli.taskserv:taskserv_group",
    "cluster": "provisioning.cli.cluster:cluster_group",
    "workflow": "provisioning.cli.workflow:workflow_group",
    "batch": "provisioning.cli.workflow:batch_group",
    "orchestrator": "provisioning.cli.orchestrator:orchestrator_group",
}

SHORT_HELP = {
    "version": "Show core, platform and API versions.",
    "help": "Show help for a command.",
    "env": "Show the resolved mode, endpoint, data dir, lib dirs and config files.",
    "config": "Show, validate and locate configuration.",
    "server": "Create, delete, list and show servers of an infra.",
    "taskserv": "Install and list task services on servers.",
    "cluster": "Create and delete clusters (servers + taskservs).",
    "workflow": "Submit, watch, cancel and retry workflows.",
    "batch": "Batch workflows (same engine as workflow).",
    "orchestrator": "Start, stop and inspect the orchestrator daemon.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing commands must not import every module: use the static help.
        rows = [(name, SHORT_HELP.get(name, "")) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _set_mode(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        app = ctx.ensure_object(AppContext)
        if app.mode and app.mode != value:
            raise click.BadParameter(f"conflicts with the mode already chosen ({app.mode})")
        app.mode = value
    return value


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              envvar="PROVISIONING_CONFIG", help="Extra config file (layered over the others).")
@click.option("--mode", type=click.Choice(["auto", "direct", "orchestrated"]),
              callback=_set_mode, expose_value=False, help="Execution mode for this command.")
@click.option("--orchestrated", "mode_orchestrated", flag_value="orchestrated",
              callback=_set_mode, expose_value=False, help="Shortcut for --mode orchestrated.")
@click.option("--direct", "mode_direct", flag_value="direct", callback=_set_mode,
              expose_value=False, help="Shortcut for --mode direct.")
@click.option("--endpoint", help="Orchestrator URL (default: orchestrator.endpoint).")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output on stdout.")
@click.option("-v", "--verbose", count=True, help="More detail; tracebacks on errors.")
@click.version_option(__version__, "--version", prog_name="provisioning",
                      message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, endpoint: str | None,
        json_output: bool, verbose: int) -> None:
    """Provision infrastructure directly or through the local orchestrator."""
    app = ctx.ensure_object(AppContext)
    app.config_file = config_file
    app.endpoint = endpoint
    app.json_output = json_output
    app.verbose = verbose


GLOBAL_FLAGS = {"--json", "-v", "--verbose", "-vv", "--direct", "--orchestrated"}
GLOBAL_VALUE_OPTIONS = {"--mode", "--endpoint", "--config"}


def hoist_global_options(args: list[str]) -> list[str]:
    """Let global options stand anywhere: `provisioning version --json` works.

    They are moved in front of the command; anything after `--` stays put.
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if arg in GLOBAL_FLAGS:
            front.append(arg)
        elif name in GLOBAL_VALUE_OPTIONS:
            front.append(arg)
            if "=" not in arg and i + 1 < len(args):
                front.append(args[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main(argv: list[str] | None = None) -> int:
    """Entry point: run click, map errors to exit codes and one-line messages."""
    args = hoist_global_options(sys.argv[1:] if argv is None else list(argv))
    verbose = any(a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"})
                  for a in args)
    try:
        # standalone_mode=False: click returns ctx.exit(code) / Exit(code) as a value
        code = cli.main(args=args, prog_name="provisioning", standalone_mode=False,
                        obj=AppContext())
        return code if isinstance(code, int) else 0
    except ProvisioningError as e:
        if verbose:
            import traceback

            traceback.print_exc()
        click.echo(f"error: {e.render(color=sys.stderr.isatty())}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return EXIT_USAGE
    except click.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
