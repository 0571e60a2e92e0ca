"""`orchestrator start|stop|status|restart|health|logs|ui`: wrap `provisioning-orchestrator`.

The daemon is always run as a subprocess with an argv list, with the CLI's
data dir, host and port passed explicitly, so `orchestrator start` and the
auto-start of orchestrated commands start the very same daemon.
"""

from __future__ import annotations

import subprocess
import time
import webbrowser
from typing import Any

import click

from provisioning.autostart import daemon_command, ensure_orchestrator, start_orchestrator
from provisioning.cli.context import AppContext
from provisioning.client import client_for, probe
from provisioning.errors import (
    EXIT_UNAVAILABLE,
    START_HINT,
    OrchestratorUnavailable,
    UsageError,
)
from provisioning.versions import CORE_VERSION, check_compatibility


def _run_daemon_cli(app: AppContext, *flags: str) -> tuple[int, str]:
    argv, env = daemon_command(app.config, app.endpoint_url(), *flags,
                               config_file=app.config_file)
    timeout = app.config.executor.shutdown_grace_seconds + app.config.executor.kill_grace_seconds
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=env, timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        return 1, f"`{' '.join(flags)}` did not finish within {timeout + 30}s"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _health_or_none(app: AppContext) -> dict[str, Any] | None:
    return probe(client_for(app.config, app.endpoint_url()))


def _start(app: AppContext) -> dict[str, Any]:
    client, started = start_orchestrator(app.config, app.endpoint_url(),
                                         config_file=app.config_file)
    health = client.last_health or client.health()
    return {"running": True, "started": started, "endpoint": client.endpoint,
            "pid": health.get("pid"), "instance_id": health.get("instance_id"),
            "platform_version": health.get("platform_version")}


def _stop(app: AppContext) -> dict[str, Any]:
    before = _health_or_none(app)
    code, output = _run_daemon_cli(app, "--stop")
    return {"endpoint": app.endpoint_url(), "was_running": before is not None,
            "stopped": code == 0, "exit_code": code, "message": output}


def _report_start(app: AppContext, info: dict[str, Any]) -> None:
    """What `start` and `restart` print: the JSON document, or one line."""
    if app.json_output:
        app.emit_json(info)
        return
    verb = "started" if info["started"] else "already running"
    click.echo(f"Orchestrator {verb} at {info['endpoint']} (pid {info['pid']}, "
               f"instance {info['instance_id']})")


@click.group("orchestrator")
def orchestrator_group() -> None:
    """Start, stop and inspect the orchestrator daemon."""


@orchestrator_group.command("start")
@click.pass_obj
def start_cmd(app: AppContext) -> None:
    """Start the daemon in the background (a no-op when it already runs)."""
    _report_start(app, _start(app))


@orchestrator_group.command("stop")
@click.pass_obj
def stop_cmd(app: AppContext) -> None:
    """Stop the daemon: running tasks get the shutdown grace period to finish."""
    info = _stop(app)
    if app.json_output:
        app.emit_json(info)
    elif info["message"]:
        click.echo(info["message"])
    if not info["stopped"]:
        raise click.exceptions.Exit(info["exit_code"] or 1)


@orchestrator_group.command("restart")
@click.pass_obj
def restart_cmd(app: AppContext) -> None:
    """Stop the daemon (if it runs), then start it again."""
    stopped = _stop(app)
    if stopped["was_running"] and not stopped["stopped"]:
        raise click.ClickException(f"stop failed: {stopped['message']}")
    _report_start(app, {**_start(app), "was_running": stopped["was_running"]})


@orchestrator_group.command("status")
@click.pass_obj
def status_cmd(app: AppContext) -> None:
    """Say whether the daemon runs; exit 3 when it does not."""
    health = _health_or_none(app)
    if app.json_output:
        app.emit_json({"running": health is not None, "endpoint": app.endpoint_url(),
                       "health": health})
    elif health is None:
        click.echo(f"Orchestrator not running at {app.endpoint_url()}")
    else:
        queue = health.get("queue") or {}
        summary = ", ".join(f"{k} {v}" for k, v in sorted(queue.items())
                            if not isinstance(v, (dict, list)))
        click.echo(f"Orchestrator running at {app.endpoint_url()}: pid {health.get('pid')}, "
                   f"instance {health.get('instance_id')}, platform "
                   f"{health.get('platform_version')}, up {health.get('uptime_s')}s"
                   + (f"; queue: {summary}" if summary else ""))
    if health is None:
        raise click.exceptions.Exit(EXIT_UNAVAILABLE)


@orchestrator_group.command("health")
@click.pass_obj
def health_cmd(app: AppContext) -> None:
    """Query /health and check version compatibility (exit 3 down, 4 incompatible)."""
    client = client_for(app.config, app.endpoint_url())
    try:
        health = client.health()
    except OrchestratorUnavailable as e:
        e.hint = e.hint or START_HINT
        raise
    verdict = check_compatibility(core=CORE_VERSION,
                                  platform=str(health.get("platform_version")))
    doc = {**health, "endpoint": client.endpoint, "compatible": verdict.compatible,
           "compatibility": verdict.reason}
    if app.json_output:
        app.emit_json(doc)
    else:
        for key in sorted(doc):
            click.echo(f"{key:<18} {doc[key]}")
    verdict.raise_if_incompatible()


@orchestrator_group.command("ui")
@click.option("--open", "open_browser", is_flag=True, help="Also open the URL in a browser.")
@click.pass_obj
def ui_cmd(app: AppContext, open_browser: bool) -> None:
    """Print a one-time sign-in URL for the web dashboard (starts the daemon if needed)."""
    client = ensure_orchestrator(app.config, app.endpoint_url(), config_file=app.config_file)
    grant = client.sign_in_code()
    url = client.endpoint + grant["path"]
    opened = bool(open_browser and webbrowser.open(url))
    if app.json_output:
        app.emit_json({"url": url, "expires_in": grant["expires_in"], "opened": opened,
                       "endpoint": client.endpoint})
        return
    click.echo(f"Open the dashboard (the link works once, within {grant['expires_in']} s):")
    click.echo(f"  {url}")
    if open_browser and not opened:
        app.log("no browser could be started here: open the link yourself")


@orchestrator_group.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C ends).")
@click.option("-n", "--lines", default=50, show_default=True, help="How many last lines.")
@click.pass_obj
def logs_cmd(app: AppContext, follow: bool, lines: int) -> None:
    """Print the daemon's log file (the last LINES lines)."""
    path = app.config.data_paths().daemon_log
    try:
        f = open(path, "rb")  # noqa: SIM115 - kept open while following
    except FileNotFoundError:
        raise UsageError(f"no orchestrator log at {path} yet",
                         hint="it is written once the daemon has started") from None
    if follow and app.json_output:
        f.close()
        raise UsageError("--follow cannot be combined with --json")
    with f:
        size = f.seek(0, 2)
        f.seek(max(0, size - 1_048_576))  # the last lines are in the last MiB
        tail = f.read().splitlines()[-lines:] if lines > 0 else []
        if app.json_output:
            app.emit_json({"path": str(path),
                           "lines": [raw.decode(errors="replace") for raw in tail]})
            return
        for raw in tail:
            click.echo(raw.decode(errors="replace"))
        while follow:
            chunk = f.read()
            if chunk:
                click.echo(chunk.decode(errors="replace"), nl=False)
            else:
                time.sleep(0.25)  # tail -f: a file gives no readiness event to wait on
