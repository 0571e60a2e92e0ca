"""Per-command execution mode (DESIGN.md 3) and `execute()`, the one way to run a spec.

Decision order for a command key such as `server.create`:
  1. `orchestrator.enabled = false`: always direct (an explicit --orchestrated
     is then a usage error rather than silently ignored);
  2. --mode/--orchestrated/--direct on the command line (`--mode auto` skips
     the force lists and decides by task count);
  3. `execution.force_direct` globs, then `execution.force_orchestrated` globs
     (fnmatch). When both match, force_direct wins: a read-only key such as
     `server.list` must never start a daemon;
  4. `execution.default_mode`;
  5. auto: more than one task -> orchestrated, one task -> direct.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from provisioning.cli.direct import DIRECT, run_direct
from provisioning.cli.monitor import follow
from provisioning.errors import OrchestratorUnavailable, Unreachable, UsageError
from provisioning.model import WorkflowStatus

if TYPE_CHECKING:
    from provisioning.cli.context import AppContext
    from provisioning.client import Client
    from provisioning.model import WorkflowSpec

ORCHESTRATED = "orchestrated"
AUTO = "auto"

# What `provisioning env` lists; business commands may use other keys too.
KNOWN_COMMANDS = (
    "server.create", "server.delete", "server.list", "server.show",
    "taskserv.create", "taskserv.delete", "taskserv.list",
    "cluster.create", "cluster.delete",
    "workflow.submit", "batch.submit",
)


def _first_match(key: str, patterns: list[str]) -> str | None:
    return next((p for p in patterns if fnmatchcase(key, p)), None)


def decide_mode(app: AppContext, command_key: str, task_count: int | None) -> tuple[str, str]:
    """(mode, why) for `command_key`; mode is "direct" or "orchestrated", or
    "auto" when task_count is None and the answer depends on it."""
    cfg = app.config
    if not cfg.orchestrator.enabled:
        if app.mode == ORCHESTRATED:
            raise UsageError("--orchestrated was given but orchestrator.enabled = false",
                             hint="drop --orchestrated, or set orchestrator.enabled = true")
        return DIRECT, f"orchestrator.enabled = false ({cfg.sources['orchestrator.enabled']})"
    if app.mode in (DIRECT, ORCHESTRATED):
        return app.mode, f"--{app.mode} on the command line"
    if app.mode != AUTO:
        pattern = _first_match(command_key, cfg.execution.force_direct)
        if pattern is not None:
            return DIRECT, f"matches execution.force_direct '{pattern}'"
        pattern = _first_match(command_key, cfg.execution.force_orchestrated)
        if pattern is not None:
            return ORCHESTRATED, f"matches execution.force_orchestrated '{pattern}'"
        default = cfg.execution.default_mode
        if default in (DIRECT, ORCHESTRATED):
            return default, (f"execution.default_mode = {default} "
                             f"({cfg.sources['execution.default_mode']})")
    source = "--mode auto" if app.mode == AUTO else "execution.default_mode = auto"
    if task_count is None:
        return AUTO, f"{source}: orchestrated if it expands to more than one task, else direct"
    if task_count > 1:
        return ORCHESTRATED, f"{source} and {task_count} tasks"
    return DIRECT, f"{source} and a single task"


def describe_modes(app: AppContext) -> dict[str, dict[str, str]]:
    """For `provisioning env`: which mode each known command would take, and why."""
    out = {}
    for key in KNOWN_COMMANDS:
        mode, why = decide_mode(app, key, None)
        out[key] = {"mode": mode, "why": why}
    return out


# -- running a spec -------------------------------------------------------------


def execute(app: AppContext, command_key: str, spec: WorkflowSpec, *, wait: bool) -> int:
    """Run `spec` for `command_key` in the decided mode; return the exit code.

    Direct: in-process engine, rendered live, always waits. Orchestrated:
    submit, print the id, return at once (0) or attach the monitor (`wait`).
    When the daemon cannot be had: fallback_to_direct runs it in-process with
    a warning; otherwise OrchestratorUnavailable (exit 3) with a hint.
    """
    mode, why = decide_mode(app, command_key, len(spec.tasks))
    if app.verbose:
        app.log(f"mode: {mode} for {command_key} ({why})")
    if mode == DIRECT:
        return run_direct(app, spec)
    try:
        client = _connect(app)
    except OrchestratorUnavailable as e:
        return _fall_back(app, command_key, spec, e)
    try:
        submitted = client.submit_workflow(spec.to_dict())
    except OrchestratorUnavailable as e:
        # The daemon went away under us or refused us. Fall back only when it
        # surely never took the workflow: running it twice is worse than failing.
        if isinstance(e, Unreachable) and e.delivered:
            raise
        return _fall_back(app, command_key, spec, e)
    workflow_id = submitted["workflow_id"]
    if not wait:
        if app.json_output:
            app.emit_json({"workflow_id": workflow_id,
                           "status": submitted.get("status", WorkflowStatus.QUEUED.value),
                           "mode": ORCHESTRATED})
        else:
            print(f"Workflow submitted: {workflow_id}", flush=True)
        return 0
    if not app.json_output:
        print(f"Workflow submitted: {workflow_id}", flush=True)
    else:
        app.log(f"Workflow submitted: {workflow_id}")
    return follow(app, client, workflow_id, mode=ORCHESTRATED)


def _fall_back(app: AppContext, command_key: str, spec: WorkflowSpec, error: Exception) -> int:
    if not app.config.orchestrator.fallback_to_direct:
        raise error
    message = getattr(error, "message", str(error))
    app.log(f"warning: {message}; running {command_key} directly in this process "
            "(orchestrator.fallback_to_direct)")
    return run_direct(app, spec)


def _connect(app: AppContext) -> Client:
    # lazy: the HTTP client and auto-start (urllib, filelock, subprocess) only
    # for commands that contact the daemon; `server list` never does
    from provisioning.autostart import ensure_orchestrator

    return ensure_orchestrator(app.config, app.endpoint_url(), config_file=app.config_file)


def connect(app: AppContext) -> Client:
    """A ready client for commands that only make sense with the daemon
    (workflow status/list/..., batch ...): auto-starts it per auto_start."""
    return _connect(app)
