"""One task = one fresh subprocess, by the task protocol (DESIGN.md 6).

- argv from the op registry, params as JSON on stdin (never a shell string);
- a cleaned environment: no inherited secrets, only what DESIGN.md lists;
- its own session (process group), so the whole group can be signalled;
- stdout+stderr drained continuously into the task log (no 64 KB pipe
  deadlock), `PROGRESS: n [msg]` parsed live, the last `RESULT: <json>` kept;
- known secret values redacted from that output before the log, the progress
  events or the result see it (provisioning.ops.redact: secret-by-name env
  values, `SECRET: <value>` lines);
  the log file is made at the first output (or note of ours): a task that
  prints nothing costs no file (creating one was ~15% of the per-task cost
  of a trivial task on ext4), its exit is in its record all the same;
- timeout or cancel: SIGTERM the group, grace, SIGKILL, then sweep every
  process that carries this task's marker in its environment (catches
  descendants that called setsid and were reparented: psutil's children()
  misses those, giampaolo/psutil#2534); the child is always reaped.

A Python op (registry.python_script) is forked from the daemon's Python
zygote when there is one (zygote.py), otherwise spawned; either way the
executor sees a Child (children.py) and treats it the same.

The run loop waits on a selector (pipe, exit fd, wake-up pipe): no polling.
"""

from __future__ import annotations

import json
import os
import selectors
import shlex
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from provisioning.engine.children import Child, PopenChild
from provisioning.engine.proctree import (
    MARKER_ENV,
    kill_tree,
    marked_processes,
    run_marker,
    signal_quietly,
    tree_processes,
)
from provisioning.engine.protocol import LineParser
from provisioning.engine.tasklog import TaskLog
from provisioning.engine.taskrun import KEPT_ENV, TaskOutcome, TaskRun, clean_env
from provisioning.ops.redact import StreamRedactor, process_secrets, secret_values
from provisioning.ops.registry import python_script

if TYPE_CHECKING:
    from provisioning.engine.zygote import Zygote

__all__ = ["KEPT_ENV", "TaskLog", "TaskOutcome", "TaskProcess", "TaskRun", "clean_env",
           "kill_tree", "marked_processes"]

EOF_GRACE_SECONDS = 2.0  # after the main process exits, how long leftovers may hold the pipe
READ_CHUNK = 1 << 16
REAP_AFTER_KILL_SECONDS = 30.0  # after SIGKILL: a process that does not end is given up
LOST_STATUS = "its exit status was lost: the Python zygote that started it died first"


class TaskProcess:
    """One attempt of one task. run() blocks in the calling (task) thread;
    stop() may be called from any thread."""

    def __init__(self, run: TaskRun, *, on_progress: Callable[[int, str | None], None],
                 zygote: Zygote | None = None):
        # This run's marker (proctree.py): its own kill never reaches another run's processes.
        run.run_marker = run.run_marker or run_marker(run.key)
        run.env = {**run.env, MARKER_ENV: run.run_marker}
        self.spec = run
        self.on_progress = on_progress
        self.zygote = zygote  # forks Python ops, when there is one
        self.pid: int | None = None  # set once started
        self.finished = False  # set once its process was reaped (the pid is no longer ours)
        self._stop_reason: str | None = None
        self._closed = False
        self._tree_snapshot: list = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # the task's secret-by-name env values (and the daemon's), plus what it declares
        self._redactor = StreamRedactor(secret_values(run.env) | process_secrets())

    def stop(self, reason: str) -> None:
        """Ask the run loop to kill the tree (cancel/shutdown). Never blocks."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
            if self._closed:
                return
            try:
                os.write(self._wake_w, b"x")
            except OSError:  # full: the loop is awake anyway
                pass

    def redact(self, text: str) -> str:
        """`text` without the secrets this task's output is redacted of (any thread)."""
        return self._redactor.redact(text)

    def run(self) -> TaskOutcome:
        outcome = TaskOutcome(started_at=time.time())
        with self._lock:
            reason = self._stop_reason
        if reason is not None:  # stopped (cancel, shutdown) before it was started
            outcome.stop_reason, outcome.finished_at = reason, time.time()
            self._close_wake()
            return outcome
        stamp = time.time()
        log = TaskLog(self.spec.log_path, lambda: self._header(stamp))
        try:
            child = self._start(log, outcome)
            if child is None:
                return outcome
            try:
                self.pid = child.pid
                self._feed_stdin(child)
                self._loop(child, log, outcome)
            finally:
                self._reap(child)
                self.finished = True
                child.close()
            rc = child.returncode
            if child.lost:
                outcome.error = LOST_STATUS
            elif rc is not None and rc < 0:
                outcome.signal = -rc
            else:
                outcome.exit_code = rc
            outcome.finished_at = time.time()
            if log.opened:  # a task that printed nothing has no log to end
                log.line(self._footer(outcome))
            return outcome
        finally:
            log.close()
            self._close_wake()

    def _start(self, log: TaskLog, outcome: TaskOutcome) -> Child | None:
        """Fork it from the zygote (a Python op, when there is one), else spawn it.
        None when it cannot start: the outcome says why, and so does the log."""
        spec = self.spec
        if self.zygote is not None and python_script(spec.argv) is not None:
            child = self.zygote.spawn(spec.argv, env=spec.env, cwd=spec.cwd,
                                      key=spec.key, marker=spec.run_marker)
            if child is not None:
                log.note = " [forked from the Python zygote]"
                return child
        try:
            return PopenChild(spec.argv, env=spec.env, cwd=spec.cwd)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in argv/env/cwd
            outcome.error = f"cannot start {spec.argv[0]!r}: {e}"
            outcome.finished_at = time.time()
            log.line(f"[provisioning] {outcome.error}")
            return None

    def _close_wake(self) -> None:
        with self._lock:  # stop() must never write to a closed (maybe reused) fd
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- internals ---------------------------------------------------------

    def _feed_stdin(self, child: Child) -> None:
        data = json.dumps(self.spec.params).encode() if self.spec.send_params else b""
        # Params are small; a task that never reads stdin must not block us,
        # so write from a helper only when they exceed the pipe buffer.
        if len(data) < 16_000:  # fits any pipe buffer (macOS: 16 KB)
            try:
                if data:
                    os.write(child.stdin_fd, data)
            except OSError:
                pass
            child.close_stdin()
            return
        fd = child.stdin_fd
        child.stdin_fd = None  # the helper owns and closes it

        def feed() -> None:
            try:
                _write_all(fd, data)
            except OSError:
                pass
            finally:
                os.close(fd)

        threading.Thread(target=feed, daemon=True, name=f"stdin-{self.spec.key}").start()

    def _loop(self, child: Child, log: TaskLog, outcome: TaskOutcome) -> None:
        parser = LineParser(self.on_progress)
        out_fd = child.stdout_fd
        os.set_blocking(out_fd, False)
        sel = selectors.DefaultSelector()
        sel.register(out_fd, selectors.EVENT_READ, "out")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        exit_fd = child.exit_fd()
        if exit_fd is not None:
            sel.register(exit_fd, selectors.EVENT_READ, "exit")
        deadline = time.monotonic() + self.spec.timeout_s
        phase = "running"  # running -> terminating -> killed; or running -> exited
        out_open = True
        try:
            while out_open:
                now = time.monotonic()
                if phase == "running":
                    with self._lock:
                        reason = self._stop_reason
                    if reason is not None or now >= deadline:
                        self._begin_stop(child, outcome, reason, log)
                        phase, deadline = "terminating", now + self.spec.kill_grace_s
                        continue
                elif phase == "terminating" and (now >= deadline or child.poll()):
                    self._kill_all(child)
                    phase, deadline = "killed", now + EOF_GRACE_SECONDS
                    continue
                elif phase in ("killed", "exited") and now >= deadline:
                    if phase == "exited":
                        self._kill_all(child)  # leftovers of a finished task hold the pipe
                    break
                if exit_fd is None and phase in ("running", "terminating"):
                    # No exit fd (not Linux): notice the exit at least every half second.
                    timeout = min(deadline - now, 0.5)
                else:
                    timeout = deadline - now
                for skey, _ in sel.select(max(0.0, timeout)):
                    if skey.data == "out":
                        out_open = self._drain(out_fd, log, parser)
                    elif skey.data == "wake":
                        _drain_wake(self._wake_r)
                    elif skey.data == "exit":
                        exit_fd = self._exit_news(child, sel, exit_fd)
                        if exit_fd is None and phase == "running":
                            phase, deadline = "exited", time.monotonic() + EOF_GRACE_SECONDS
                if exit_fd is None and phase == "running" and child.poll():
                    phase, deadline = "exited", time.monotonic() + EOF_GRACE_SECONDS
        finally:
            sel.close()
        self._finish(child, log, outcome, parser, phase)

    def _finish(self, child: Child, log: TaskLog, outcome: TaskOutcome, parser: LineParser,
                phase: str) -> None:
        """The output has ended (or was given up): its last line, the result, leftovers."""
        tail = self._redactor.flush()
        if tail:
            log.write(tail)
            parser.feed(tail)
        parser.close()
        outcome.result = parser.result
        if parser.result_error:
            log.line(f"[provisioning] {parser.result_error}")
        if phase == "exited":
            # Like systemd's control-group kill: what is left in the task's group
            # after its main process ended is stopped (a real daemon calls setsid).
            self._kill_group(signal.SIGKILL)
        elif phase == "running":
            # EOF while running: the main process closed its output; wait for its exit,
            # still honouring the timeout and stop requests.
            self._wait_after_eof(child, outcome, log)

    @staticmethod
    def _exit_news(child: Child, sel: selectors.BaseSelector, exit_fd: int) -> int | None:
        """The exit fd is readable: None once the child has ended, else the fd to wait
        on next (a zygote child's changes to its pidfd if the zygote died)."""
        sel.unregister(exit_fd)
        if child.poll():
            return None
        new_fd = child.exit_fd()
        if new_fd is not None:
            sel.register(new_fd, selectors.EVENT_READ, "exit")
        return new_fd

    def _wait_after_eof(self, child: Child, outcome: TaskOutcome, log: TaskLog) -> None:
        deadline = time.monotonic() + max(0.0, self.spec.timeout_s - (time.time()
                                                                       - outcome.started_at))
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        exit_fd = child.exit_fd()
        if exit_fd is not None:
            sel.register(exit_fd, selectors.EVENT_READ, "exit")
        try:
            while not child.poll():
                with self._lock:
                    reason = self._stop_reason
                now = time.monotonic()
                if reason is not None or now >= deadline:
                    self._begin_stop(child, outcome, reason, log)
                    child.wait(self.spec.kill_grace_s)
                    self._kill_all(child)
                    return
                timeout = deadline - now if exit_fd is not None else min(deadline - now, 0.5)
                for skey, _ in sel.select(max(0.0, timeout)):
                    if skey.data == "wake":
                        _drain_wake(self._wake_r)
                    elif (exit_fd := self._exit_news(child, sel, exit_fd)) is None:
                        break
        finally:
            sel.close()
        self._kill_group(signal.SIGKILL)  # leftovers in the finished task's group

    def _drain(self, out_fd: int, log: TaskLog, parser: LineParser) -> bool:
        """Read what is there; False at EOF."""
        while True:
            try:
                chunk = os.read(out_fd, READ_CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            clean = self._redactor.feed(chunk)  # known secrets out before anything sees it
            if clean:
                log.write(clean)
                parser.feed(clean)
            if len(chunk) < READ_CHUNK:
                return True

    def _begin_stop(self, child: Child, outcome: TaskOutcome,
                    reason: str | None, log: TaskLog) -> None:
        """Record why the task stops (its timeout, or `reason` from stop()), say so
        in its log, and SIGTERM its tree; the caller waits the grace and kills."""
        if reason is None:
            outcome.timed_out = True
            outcome.error = f"timeout after {self.spec.timeout_s:g}s"
        else:
            outcome.stop_reason = reason
        log.line(f"[provisioning] {outcome.error or reason}: stopping the process tree")
        self._terminate(child)

    def _terminate(self, child: Child) -> None:
        """SIGTERM the group and every known descendant (snapshot before parents die)."""
        # (no create time needed: the child is not reaped yet, its pid is still its own)
        self._tree_snapshot = tree_processes(None if child.done else child.pid, None,
                                             self.spec.key, self.spec.run_marker)
        self._kill_group(signal.SIGTERM)
        for p in self._tree_snapshot:
            signal_quietly(p, signal.SIGTERM)

    def _kill_all(self, child: Child) -> None:
        """SIGKILL the group, then sweep the recorded tree and everything carrying the marker."""
        self._kill_group(signal.SIGKILL)
        known = list(self._tree_snapshot)
        known += tree_processes(None if child.done else child.pid, None, self.spec.key,
                                self.spec.run_marker)
        for p in known:
            signal_quietly(p, signal.SIGKILL)

    def _kill_group(self, sig: int) -> None:
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self, child: Child) -> None:
        if not child.wait(max(self.spec.kill_grace_s, 1.0)):
            self._kill_all(child)
            child.wait(REAP_AFTER_KILL_SECONDS)
        child.close_stdin()

    def _header(self, started: float) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
        # shlex.join: shown as an operator would type it, so an argument with a
        # space or `;` reads as one argument (nothing here is ever run by a shell).
        return f"=== attempt {self.spec.attempt} started {stamp}: {shlex.join(self.spec.argv)}"

    def _footer(self, outcome: TaskOutcome) -> str:
        if outcome.exit_code is None and outcome.signal is None:
            how = "exit status unknown"
        elif outcome.signal is None:
            how = f"exit code {outcome.exit_code}"
        else:
            how = f"killed by signal {outcome.signal}"
        if outcome.error:
            how += f" ({outcome.error})"
        elif outcome.stop_reason:
            how += f" ({outcome.stop_reason})"
        return (f"=== attempt {self.spec.attempt} ended: {how} after "
                f"{outcome.finished_at - outcome.started_at:.2f}s")


def _drain_wake(fd: int) -> None:
    try:
        os.read(fd, 1024)
    except BlockingIOError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
