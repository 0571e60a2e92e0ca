"""Live workflow monitor: follows `events?after=N` and renders per-task state.

One loop, two renderers:
- on a terminal, a block redrawn in place with ANSI cursor codes (no curses):
  a header with status and elapsed time, counts of done/failed/running/pending,
  one row per task with a progress bar for running tasks;
- otherwise plain lines, one per event, ending with one outcome line, so logs
  and CI output stay readable.

The source is anything with `get_workflow(id)` and `events(id, after, timeout)`:
the HTTP Client (orchestrated) or an in-process Engine (direct). A lost
connection (daemon restart) is retried with backoff for `reconnect_seconds`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Protocol

from provisioning.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ServiceUnavailable,
    Unreachable,
)
from provisioning.model import FINISHED_WORKFLOW, TASK_STATUSES, TaskStatus, WorkflowStatus

if TYPE_CHECKING:
    from provisioning.cli.context import AppContext

# Task rows that show how long the run took (a skipped task never ran).
RAN = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})
TTY_POLL_S = 1.0  # the elapsed clock ticks at this rate on a terminal
PLAIN_POLL_S = 15.0  # long-poll wait when nothing needs redrawing
BAR_WIDTH = 20

# ANSI: previous line (to column 1), clear line, clear to end of screen, cursor on/off
CPL = "\x1b[{n}F"
CLEAR_LINE = "\x1b[2K"
CLEAR_BELOW = "\x1b[J"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"

MARKS = {TaskStatus.SUCCEEDED: "ok", TaskStatus.FAILED: "!!", TaskStatus.RUNNING: ">>",
         TaskStatus.QUEUED: "  ", TaskStatus.CANCELLED: "xx", TaskStatus.SKIPPED: "--"}


class EventSource(Protocol):
    def get_workflow(self, workflow_id: str) -> dict[str, Any]: ...

    def events(self, workflow_id: str, after: int = 0, timeout: float = 0) -> list[dict]: ...


def reattach_hint(workflow_id: str) -> str:
    return f"provisioning workflow monitor {workflow_id}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def bar(progress: int | float | None, width: int = BAR_WIDTH) -> str:
    p = max(0, min(100, int(progress or 0)))
    filled = p * width // 100
    return "[" + "#" * filled + "." * (width - filled) + f"] {p:3d}%"


def counts_of(view: dict[str, Any]) -> dict[str, int]:
    counts = dict(view.get("counts") or {})
    if not counts and view.get("tasks"):
        for t in view["tasks"]:
            status = t.get("status", TaskStatus.QUEUED)
            counts[status] = counts.get(status, 0) + 1
    return {k.value: int(counts.get(k, 0)) for k in TASK_STATUSES}


def counts_line(view: dict[str, Any]) -> str:
    c = counts_of(view)
    return (f"done {c['succeeded']}  failed {c['failed']}  running {c['running']}  "
            f"pending {c['queued']}  skipped {c['skipped']}  cancelled {c['cancelled']}")


def elapsed_of(view: dict[str, Any], now: float | None = None) -> float | None:
    if view.get("status") in FINISHED_WORKFLOW and view.get("duration_s") is not None:
        return float(view["duration_s"])
    start = view.get("started_at") or view.get("created_at")
    if start is None:
        return None
    return max(0.0, (now or time.time()) - float(start))


def outcome_line(view: dict[str, Any]) -> str:
    c = counts_of(view)
    return (f"Workflow {view.get('workflow_id')} {view.get('status')} in "
            f"{fmt_duration(elapsed_of(view))}: {c['succeeded']} succeeded, {c['failed']} failed, "
            f"{c['skipped']} skipped, {c['cancelled']} cancelled")


def event_line(event: dict[str, Any], origin: float | None) -> str:
    """One plain line for one event: `[  1.2s] web-1: running`."""
    ts = event.get("ts")
    rel = f"[{fmt_duration(float(ts) - origin):>7}]" if ts is not None and origin else "[      -]"
    who = event.get("task") or "workflow"
    kind = event.get("type")
    message = event.get("message")
    if kind == "progress":
        text = f"{int(event.get('progress') or 0)}%"
    else:
        text = str(event.get("status") or "")
    if message:
        text += f" {message}" if kind == "progress" else f" ({message})"
    return f"{rel} {who}: {text}"


def task_row(task: dict[str, Any], id_width: int) -> str:
    status = task.get("status", TaskStatus.QUEUED)
    mark = MARKS.get(status, "  ")
    row = f"  [{mark}] {task.get('id', '?'):<{id_width}} {status:<10}"
    if status == TaskStatus.RUNNING:
        row += " " + bar(task.get("progress"))
        if task.get("message"):
            row += f"  {task['message']}"
    elif status in RAN:
        row += f" {fmt_duration(task.get('duration_s')):>7}"
        detail = task.get("error") or (task.get("message") if status != TaskStatus.SUCCEEDED
                                       else None)
        if detail:
            row += f"  {detail}"
    if int(task.get("attempts") or 0) > 1:
        row += f"  (attempt {task['attempts']})"
    return row


def frame(view: dict[str, Any], *, width: int, height: int, now: float | None = None
          ) -> list[str]:
    """The lines of one TTY frame, each cut to the terminal width."""
    status = str(view.get("status", "")).upper()
    lines = [f"Workflow {view.get('workflow_id')}  {view.get('name', '')}  {status}  "
             f"elapsed {fmt_duration(elapsed_of(view, now))}",
             "  " + counts_line(view)]
    tasks = list(view.get("tasks") or [])
    room = max(1, height - len(lines) - 2)
    if len(tasks) > room:
        order = {TaskStatus.RUNNING: 0, TaskStatus.FAILED: 1, TaskStatus.QUEUED: 2}
        shown = sorted(tasks, key=lambda t: order.get(t.get("status"), 3))[:room - 1]
        hidden = len(tasks) - len(shown)
        tasks = [t for t in tasks if t in shown]
    else:
        hidden = 0
    id_width = max([len(str(t.get("id", ""))) for t in tasks] + [4])
    lines += [task_row(t, id_width) for t in tasks]
    if hidden:
        lines.append(f"  ... and {hidden} more tasks")
    return [line[: max(10, width - 1)] for line in lines]


class Monitor:
    """Follow one workflow until it finishes; `run()` returns the exit code."""

    def __init__(self, source: EventSource, workflow_id: str, *, stream: IO[str],
                 reconnect_seconds: float = 60, detachable: bool = True,
                 tty: bool | None = None):
        self.source = source
        self.workflow_id = workflow_id
        self.stream = stream
        self.reconnect_seconds = reconnect_seconds
        self.detachable = detachable
        if tty is None:
            tty = (hasattr(stream, "isatty") and stream.isatty()
                   and os.environ.get("TERM") != "dumb"
                   and os.environ.get("PROVISIONING_MONITOR") != "plain")
        self.tty = tty
        self.view: dict[str, Any] | None = None
        self.after = 0
        self._drawn = 0  # lines of the last TTY frame
        self._origin: float | None = None

    # -- output --------------------------------------------------------------

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _draw(self) -> None:
        if not self.tty or self.view is None:
            return
        size = shutil.get_terminal_size((100, 40))
        lines = frame(self.view, width=size.columns, height=size.lines)
        out = CPL.format(n=self._drawn) if self._drawn else ""
        out += "".join(CLEAR_LINE + line + "\n" for line in lines) + CLEAR_BELOW
        self._drawn = len(lines)
        self._write(out)

    def _on_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.after = max(self.after, int(event.get("seq", self.after)))
            if not self.tty:
                self._write(event_line(event, self._origin) + "\n")

    def _notice(self, text: str) -> None:
        """A one-off message: below the frame on a TTY (the frame restarts under it)."""
        self._write(text + "\n")
        self._drawn = 0

    # -- source calls with reconnect -------------------------------------------

    def _call(self, fn, *args, **kwargs):
        # only a daemon that is away or restarting is waited for; a refused
        # token or a missing workflow is an answer, not an outage
        lost_at: float | None = None
        delay = 0.1
        while True:
            try:
                result = fn(*args, **kwargs)
            except (Unreachable, ServiceUnavailable) as e:
                now = time.monotonic()
                if lost_at is None:
                    lost_at = now
                    self._notice(f"connection lost ({e.message}); reconnecting for up to "
                                 f"{self.reconnect_seconds:g}s")
                if now - lost_at >= self.reconnect_seconds:
                    raise
                time.sleep(min(delay, self.reconnect_seconds - (now - lost_at)))
                delay = min(delay * 2, 2.0)
                continue
            if lost_at is not None:
                self._notice("reconnected")
            return result

    # -- main loop -------------------------------------------------------------

    def run(self) -> int:
        try:
            if self.tty:
                self._write(HIDE_CURSOR)
            return self._follow()
        except KeyboardInterrupt:
            if self.detachable:
                self._notice(f"Detached; workflow {self.workflow_id} keeps running. "
                             f"Re-attach with: {reattach_hint(self.workflow_id)}")
            return EXIT_INTERRUPTED
        finally:
            if self.tty:
                self._write(SHOW_CURSOR)

    def _refresh(self) -> dict[str, Any]:
        self.view = self._call(self.source.get_workflow, self.workflow_id)
        if self._origin is None:
            self._origin = self.view.get("created_at")
        return self.view

    def _follow(self) -> int:
        view = self._refresh()
        if not self.tty:
            n = len(view.get("tasks") or [])
            self._write(f"Workflow {self.workflow_id} ({view.get('name', '')}): "
                        f"{n} task{'' if n == 1 else 's'}, {view.get('status')}\n")
        self._draw()
        poll = TTY_POLL_S if self.tty else PLAIN_POLL_S
        while view.get("status") not in FINISHED_WORKFLOW:
            self._on_events(self._call(self.source.events, self.workflow_id,
                                       after=self.after, timeout=poll))
            view = self._refresh()
            self._draw()
        # the last events may have landed after our long-poll returned
        self._on_events(self._call(self.source.events, self.workflow_id,
                                   after=self.after, timeout=0))
        self._draw()
        self._write(outcome_line(view) + "\n")
        return EXIT_OK if view.get("status") == WorkflowStatus.SUCCEEDED else EXIT_FAILED


def follow(app: AppContext, source, workflow_id: str, *, mode: str,
           detachable: bool = True) -> int:
    """Attach the monitor to `source` (a Client, an Engine, a direct run's trace);
    with --json print the final summary on stdout."""
    monitor = Monitor(source, workflow_id, stream=sys.stderr if app.json_output else sys.stdout,
                      reconnect_seconds=app.config.orchestrator.timeout_seconds,
                      detachable=detachable)
    code = monitor.run()
    if app.json_output and monitor.view is not None and code != EXIT_INTERRUPTED:
        view = monitor.view
        app.emit_json({"workflow_id": workflow_id, "status": view.get("status"), "mode": mode,
                       "counts": view.get("counts", {}), "duration_s": view.get("duration_s")})
    return code
