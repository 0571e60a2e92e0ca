"""`workflow` and `batch` command groups: submit, watch, cancel, retry, read logs.

Both groups drive the same engine through the same API; a batch is a workflow
submitted with kind "batch" (and `batch list` shows only those). Everything
but `submit --direct` needs the orchestrator, which is auto-started per
`orchestrator.auto_start` (its durable queue is where the workflows live);
`status`, `monitor` and `logs` of an id a direct run printed answer from that
run's trace instead (cli/direct.py), with no daemon.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path
from typing import Any

import click

from provisioning.cli.context import AppContext
from provisioning.cli.direct import DIRECT, DirectRun, find_direct_run
from provisioning.cli.modes import ORCHESTRATED, connect, execute
from provisioning.cli.monitor import counts_line, elapsed_of, fmt_duration, follow, task_row
from provisioning.engine.loader import load_workflow_file
from provisioning.errors import Conflict, NotFound, UsageError
from provisioning.model import FINISHED_WORKFLOW, WORKFLOW_STATUSES, TaskStatus
from provisioning.planner.build import resolve_infra_params

STATUSES = tuple(s.value for s in WORKFLOW_STATUSES)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")


def _total(view: dict[str, Any]) -> int:
    return sum(int(v) for v in (view.get("counts") or {}).values())


# -- shared command bodies ---------------------------------------------------------


def _source(app: AppContext, workflow_id: str) -> Any:
    """Where a workflow is read from: the trace of a direct run under this data
    dir (no daemon needed), else the daemon (auto-started per auto_start)."""
    return find_direct_run(app.config, workflow_id) or connect(app)


def _not_direct(app: AppContext, workflow_id: str, verb: str) -> None:
    run = find_direct_run(app.config, workflow_id)
    if run is not None:
        raise Conflict(f"workflow {workflow_id} was a direct run, finished "
                       f"{run.view.get('status')}: there is nothing to {verb}",
                       hint="run the command again to repeat it")


def _submit(app: AppContext, file: str, *, kind: str, wait: bool) -> None:
    spec = load_workflow_file(file)  # validation errors: exit 2, nothing submitted
    spec = resolve_infra_params(spec, Path(file).resolve().parent, source=file)
    if kind == "batch" or spec.kind in ("", "workflow"):
        spec = dataclasses.replace(spec, kind=kind)
    code = execute(app, f"{kind}.submit", spec, wait=wait)
    if code:
        raise click.exceptions.Exit(code)


def _status(app: AppContext, workflow_id: str) -> None:
    view = _source(app, workflow_id).get_workflow(workflow_id)
    if app.json_output:
        app.emit_json(view)
        return
    click.echo(f"Workflow {view['workflow_id']}  {view.get('name', '')}  ({view.get('kind')})")
    click.echo(f"  status    {view.get('status')}")
    if view.get("mode") == DIRECT:
        click.echo("  mode      direct (ran in the CLI process; kept in the data dir)")
    click.echo(f"  created   {_when(view.get('created_at'))}")
    click.echo(f"  elapsed   {fmt_duration(elapsed_of(view))}")
    click.echo(f"  tasks     {counts_line(view)}")
    tasks = view.get("tasks") or []
    width = max([len(str(t.get("id", ""))) for t in tasks] + [4])
    for task in tasks:
        click.echo(task_row(task, width))


def _monitor(app: AppContext, workflow_id: str) -> None:
    source = _source(app, workflow_id)
    mode = DIRECT if isinstance(source, DirectRun) else ORCHESTRATED
    code = follow(app, source, workflow_id, mode=mode)
    if code:
        raise click.exceptions.Exit(code)


def _list(app: AppContext, status: str | None, kind: str | None) -> None:
    rows = connect(app).list_workflows(status)
    if kind is not None:
        rows = [r for r in rows if r.get("kind") == kind]
    if app.json_output:
        app.emit_json(rows)
        return
    if not rows:
        click.echo("no workflows" + (f" with status {status}" if status else ""))
        return
    click.echo(f"{'ID':<36}  {'KIND':<15} {'STATUS':<10} {'DONE':>7}  {'CREATED':<19}  NAME")
    for r in rows:
        done = f"{(r.get('counts') or {}).get('succeeded', 0)}/{_total(r)}"
        click.echo(f"{r.get('workflow_id', ''):<36}  {str(r.get('kind', '')):<15} "
                   f"{str(r.get('status', '')):<10} {done:>7}  {_when(r.get('created_at')):<19}"
                   f"  {r.get('name', '')}")


status_option = click.option("--status", type=click.Choice(STATUSES),
                             help="Only workflows in this state.")
wait_option = click.option("--wait", is_flag=True,
                           help="Attach the live monitor and exit with the outcome.")


# -- workflow ---------------------------------------------------------------------


@click.group("workflow")
def workflow_group() -> None:
    """Submit, watch, cancel and retry workflows."""


def _add_common_commands(group: click.Group, noun: str, plural: str, kind: str) -> None:
    """submit, status, monitor and list: the same for `workflow` and `batch`
    (a batch is a workflow of kind "batch"; `batch list` shows only those)."""
    listed_kind = None if kind == "workflow" else kind

    @group.command("submit", help=f"Validate FILE (TOML, JSON or Nickel) and submit it as a "
                   f"{noun}; print its id.")
    @click.argument("file", type=click.Path(dir_okay=False))
    @wait_option
    @click.pass_obj
    def submit(app: AppContext, file: str, wait: bool) -> None:
        _submit(app, file, kind=kind, wait=wait)

    @group.command("status", help=f"Show a {noun} and every task's state.")
    @click.argument(f"{noun}_id")
    @click.pass_obj
    def status(app: AppContext, **ids: str) -> None:
        _status(app, ids[f"{noun}_id"])

    @group.command("monitor", help=f"Follow a {noun} live; exit 0 if it succeeds, 1 if it "
                   "fails or is cancelled.")
    @click.argument(f"{noun}_id")
    @click.pass_obj
    def monitor(app: AppContext, **ids: str) -> None:
        _monitor(app, ids[f"{noun}_id"])

    @group.command("list", help=f"List {plural}, newest first.")
    @status_option
    @click.pass_obj
    def list_(app: AppContext, status: str | None) -> None:
        _list(app, status, listed_kind)


@workflow_group.command("cancel")
@click.argument("workflow_id")
@click.pass_obj
def workflow_cancel(app: AppContext, workflow_id: str) -> None:
    """Cancel running and pending tasks (completed ones stay completed)."""
    _not_direct(app, workflow_id, "cancel")
    view = connect(app).cancel(workflow_id)
    if app.json_output:
        app.emit_json(view)
        return
    click.echo(f"Workflow {workflow_id}: {view.get('status')} ({counts_line(view)})")


@workflow_group.command("retry")
@click.argument("workflow_id")
@wait_option
@click.pass_obj
def workflow_retry(app: AppContext, workflow_id: str, wait: bool) -> None:
    """Re-run failed, cancelled and skipped tasks from their checkpoints."""
    _not_direct(app, workflow_id, "retry")
    client = connect(app)
    view = client.retry(workflow_id)
    if not wait:
        if app.json_output:
            app.emit_json(view)
        else:
            pending = (view.get("counts") or {}).get(TaskStatus.QUEUED, 0)
            click.echo(f"Workflow {workflow_id} re-queued: {pending} tasks to re-run")
        return
    app.log(f"Workflow {workflow_id} re-queued")
    code = follow(app, client, workflow_id, mode=ORCHESTRATED)
    if code:
        raise click.exceptions.Exit(code)


@workflow_group.command("logs")
@click.argument("workflow_id")
@click.option("--task", "task_id", help="Only this task (its id in the workflow).")
@click.option("--follow", "-f", "follow_", is_flag=True,
              help="Keep printing new output until the workflow finishes.")
@click.pass_obj
def workflow_logs(app: AppContext, workflow_id: str, task_id: str | None,
                  follow_: bool) -> None:
    """Print the captured output of a workflow's tasks."""
    _logs(app, workflow_id, task_id, follow=follow_)


def _logs(app: AppContext, workflow_id: str, task_id: str | None, *, follow: bool) -> None:
    client = _source(app, workflow_id)
    view = client.get_workflow(workflow_id)
    tasks = view.get("tasks") or []
    if task_id is not None:
        tasks = [t for t in tasks if t.get("id") == task_id]
        if not tasks:
            known = ", ".join(str(t.get("id")) for t in view.get("tasks") or [])
            raise NotFound(f"workflow {workflow_id} has no task {task_id!r}",
                           hint=f"its tasks: {known or 'none'}")
    if follow and app.json_output:
        raise UsageError("--follow cannot be combined with --json")
    if app.json_output:
        app.emit_json({"workflow_id": workflow_id, "tasks": [
            {"id": t.get("id"), "key": t.get("key"), "status": t.get("status"),
             "log": client.task_log(t["key"])[0]} for t in tasks]})
        return
    if not follow:
        for t in tasks:
            text, _ = client.task_log(t["key"])
            click.echo(f"==> task {t.get('id')} ({t.get('status')}) <==")
            if not text:  # no log file: the task printed nothing (yet), or never ran
                text = "(no output)\n" if t.get("attempts") else "(not run)\n"
            click.echo(text, nl=not text.endswith("\n"))
        return
    _follow_logs(client, workflow_id, view, tasks)


def _follow_logs(client: Any, workflow_id: str, view: dict[str, Any],
                 tasks: list[dict[str, Any]]) -> None:
    """Print new output as it appears, prefixed by task id, until the workflow ends.

    The event long-poll is the wake-up (a state or progress change); plain log
    lines raise no event, so it times out every second to read them too.
    """
    keys = {t["key"]: t.get("id") for t in tasks}
    offsets = dict.fromkeys(keys, 0)
    partial = dict.fromkeys(keys, "")
    after = 0
    prefix = len(keys) > 1

    def drain() -> None:
        for key, tid in keys.items():
            text, offsets[key] = client.task_log(key, offsets[key])
            if not text:
                continue
            lines = (partial[key] + text).split("\n")
            partial[key] = lines.pop()
            for line in lines:
                click.echo(f"[{tid}] {line}" if prefix else line)

    while True:
        drain()
        if view.get("status") in FINISHED_WORKFLOW:
            drain()
            for key, rest in partial.items():
                if rest:
                    click.echo(f"[{keys[key]}] {rest}" if prefix else rest)
            return
        for event in client.events(workflow_id, after=after, timeout=1.0):
            after = max(after, int(event.get("seq", after)))
        view = client.get_workflow(workflow_id)


# -- batch ------------------------------------------------------------------------


@click.group("batch")
def batch_group() -> None:
    """Batch workflows (same engine and API as `workflow`)."""


_add_common_commands(workflow_group, "workflow", "workflows", "workflow")
_add_common_commands(batch_group, "batch", "batches", "batch")
