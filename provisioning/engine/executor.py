"""One task = one fresh subprocess, by the task protocol (DESIGN.md 6).

- argv from the op registry, params as JSON on stdin (never a shell string);
- a cleaned environment: no inherited secrets, only what DESIGN.md lists;
- its own session (process group), so the whole group can be signalled;
- stdout+stderr drained continuously into the task log (no 64 KB pipe
  deadlock), `PROGRESS: n [msg]` parsed live, the last `RESULT: <json>` kept;
  the log file is made at the first output (or note of ours): a task that
  prints nothing costs no file (creating one was ~15% of the per-task cost
  of a trivial task on ext4), its exit is in its record all the same;
- timeout or cancel: SIGTERM the group, grace, SIGKILL, then sweep every
  process that carries this task's marker in its environment (catches
  descendants that called setsid and were reparented: psutil's children()
  misses those, giampaolo/psutil#2534); the child is always reaped.

The run loop waits on a selector (pipe, pidfd, wake-up pipe): no polling.
"""

from __future__ import annotations

import json
import os
import selectors
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioning.engine.proctree import kill_tree, marked_processes, signal_quietly, tree_processes
from provisioning.engine.protocol import LineParser
from provisioning.selfexec import package_parent_dir

__all__ = ["TaskOutcome", "TaskProcess", "TaskRun", "clean_env", "kill_tree", "marked_processes"]

KEPT_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR")
EOF_GRACE_SECONDS = 2.0  # after the main process exits, how long leftovers may hold the pipe
READ_CHUNK = 1 << 16


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The task environment: a few harmless inherited variables, PYTHONPATH, and `extra`."""
    env = {k: v for k, v in os.environ.items() if k in KEPT_ENV or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    pythonpath = [package_parent_dir()]
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    env.update(extra)
    return env


@dataclass
class TaskRun:
    """Everything needed to run one attempt of one task."""

    key: str
    argv: list[str]
    params: dict[str, Any]
    env: dict[str, str]  # PROVISIONING_* for the task; see clean_env
    log_path: Path
    attempt: int
    timeout_s: float
    kill_grace_s: float
    cwd: str | None = None
    send_params: bool = True  # False: stdin is closed at once (argv run directly)


@dataclass
class TaskOutcome:
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    stop_reason: str | None = None  # "cancelled", "shutdown": stopped on request
    result: Any = None
    error: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def succeeded(self) -> bool:
        return (self.exit_code == 0 and not self.timed_out and self.stop_reason is None
                and self.error is None)



class TaskProcess:
    """One attempt of one task. run() blocks in the calling (task) thread;
    stop() may be called from any thread."""

    def __init__(self, run: TaskRun, *, on_progress: Callable[[int, str | None], None]):
        self.spec = run
        self.on_progress = on_progress
        self.pid: int | None = None  # set once started
        self.finished = False  # set once its process was reaped (the pid is no longer ours)
        self._stop_reason: str | None = None
        self._closed = False
        self._tree_snapshot: list = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

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

    def run(self) -> TaskOutcome:
        outcome = TaskOutcome(started_at=time.time())
        with self._lock:
            reason = self._stop_reason
        if reason is not None:  # stopped (cancel, shutdown) before it was started
            outcome.stop_reason, outcome.finished_at = reason, time.time()
            self._close_wake()
            return outcome
        log = TaskLog(self.spec.log_path, self._header())
        try:
            try:
                proc = subprocess.Popen(  # noqa: S603 - argv list from the registry
                    self.spec.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, start_new_session=True, env=self.spec.env,
                    close_fds=True, cwd=self.spec.cwd)
            except (OSError, ValueError) as e:  # ValueError: a NUL byte in argv/env/cwd
                outcome.error = f"cannot start {self.spec.argv[0]!r}: {e}"
                outcome.finished_at = time.time()
                log.line(f"[provisioning] {outcome.error}")
                return outcome
            try:
                self.pid = proc.pid
                self._feed_stdin(proc)
                self._loop(proc, log, outcome)
            finally:
                self._reap(proc)
                self.finished = True
            rc = proc.returncode
            if rc is not None and rc < 0:
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

    def _close_wake(self) -> None:
        with self._lock:  # stop() must never write to a closed (maybe reused) fd
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- internals ---------------------------------------------------------

    def _feed_stdin(self, proc: subprocess.Popen) -> None:
        data = json.dumps(self.spec.params).encode() if self.spec.send_params else b""
        # Params are small; a task that never reads stdin must not block us,
        # so write from a helper only when they exceed the pipe buffer.
        if len(data) < 16_000:  # fits any pipe buffer (macOS: 16 KB)
            try:
                proc.stdin.write(data)
                proc.stdin.close()
            except OSError:
                pass
            return

        def feed() -> None:
            try:
                proc.stdin.write(data)
            except OSError:
                pass
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

        threading.Thread(target=feed, daemon=True, name=f"stdin-{self.spec.key}").start()

    def _loop(self, proc: subprocess.Popen, log: TaskLog, outcome: TaskOutcome) -> None:
        parser = LineParser(self.on_progress)
        out_fd = proc.stdout.fileno()
        os.set_blocking(out_fd, False)
        sel = selectors.DefaultSelector()
        sel.register(out_fd, selectors.EVENT_READ, "out")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        pidfd = _pidfd(proc.pid)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ, "exit")
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
                        self._begin_stop(proc, outcome, reason, log)
                        phase, deadline = "terminating", now + self.spec.kill_grace_s
                        continue
                elif phase == "terminating" and (now >= deadline or proc.poll() is not None):
                    self._kill_all(proc)
                    phase, deadline = "killed", now + EOF_GRACE_SECONDS
                    continue
                elif phase in ("killed", "exited") and now >= deadline:
                    if phase == "exited":
                        self._kill_all(proc)  # leftovers of a finished task hold the pipe
                    break
                if pidfd is None and phase in ("running", "terminating"):
                    # No pidfd (not Linux): notice the exit at least every half second.
                    timeout = min(deadline - now, 0.5)
                else:
                    timeout = deadline - now
                for skey, _ in sel.select(max(0.0, timeout)):
                    if skey.data == "out":
                        out_open = self._drain(out_fd, log, parser)
                    elif skey.data == "wake":
                        try:
                            os.read(self._wake_r, 1024)
                        except BlockingIOError:
                            pass
                    elif skey.data == "exit":
                        sel.unregister(pidfd)
                        os.close(pidfd)
                        pidfd = None
                        if phase == "running":
                            phase, deadline = "exited", time.monotonic() + EOF_GRACE_SECONDS
                if pidfd is None and phase == "running" and proc.poll() is not None:
                    phase, deadline = "exited", time.monotonic() + EOF_GRACE_SECONDS
        finally:
            sel.close()
            if pidfd is not None:
                os.close(pidfd)
            proc.stdout.close()
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
            self._wait_after_eof(proc, outcome, log)

    def _wait_after_eof(self, proc: subprocess.Popen, outcome: TaskOutcome, log: TaskLog) -> None:
        deadline = time.monotonic() + max(0.0, self.spec.timeout_s - (time.time()
                                                                       - outcome.started_at))
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        pidfd = _pidfd(proc.pid)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ)
        try:
            while proc.poll() is None:
                with self._lock:
                    reason = self._stop_reason
                now = time.monotonic()
                if reason is not None or now >= deadline:
                    self._begin_stop(proc, outcome, reason, log)
                    try:
                        proc.wait(self.spec.kill_grace_s)
                    except subprocess.TimeoutExpired:
                        pass
                    self._kill_all(proc)
                    return
                timeout = deadline - now if pidfd is not None else min(deadline - now, 0.5)
                for skey, _ in sel.select(max(0.0, timeout)):
                    if skey.fileobj == self._wake_r:
                        try:
                            os.read(self._wake_r, 1024)
                        except BlockingIOError:
                            pass
        finally:
            sel.close()
            if pidfd is not None:
                os.close(pidfd)
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
            log.write(chunk)
            parser.feed(chunk)
            if len(chunk) < READ_CHUNK:
                return True

    def _begin_stop(self, proc: subprocess.Popen[bytes], outcome: TaskOutcome,
                    reason: str | None, log: TaskLog) -> None:
        """Record why the task stops (its timeout, or `reason` from stop()), say so
        in its log, and SIGTERM its tree; the caller waits the grace and kills."""
        if reason is None:
            outcome.timed_out = True
            outcome.error = f"timeout after {self.spec.timeout_s:g}s"
        else:
            outcome.stop_reason = reason
        log.line(f"[provisioning] {outcome.error or reason}: stopping the process tree")
        self._terminate(proc)

    def _terminate(self, proc: subprocess.Popen) -> None:
        """SIGTERM the group and every known descendant (snapshot before parents die)."""
        # (no create time needed: our child is not reaped yet, its pid is still ours)
        self._tree_snapshot = tree_processes(proc.pid, None, self.spec.key)
        self._kill_group(signal.SIGTERM)
        for p in self._tree_snapshot:
            signal_quietly(p, signal.SIGTERM)

    def _kill_all(self, proc: subprocess.Popen) -> None:
        """SIGKILL the group, then sweep the recorded tree and everything carrying the marker."""
        self._kill_group(signal.SIGKILL)
        known = list(self._tree_snapshot)
        known += tree_processes(proc.pid, None, self.spec.key)
        for p in known:
            signal_quietly(p, signal.SIGKILL)

    def _kill_group(self, sig: int) -> None:
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self, proc: subprocess.Popen) -> None:
        try:
            proc.wait(timeout=max(self.spec.kill_grace_s, 1.0))
        except subprocess.TimeoutExpired:
            self._kill_all(proc)
            proc.wait()
        if proc.stdin and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def _header(self) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        # shlex.join: shown as an operator would type it, so an argument with a
        # space or `;` reads as one argument (nothing here is ever run by a shell).
        return f"=== attempt {self.spec.attempt} started {stamp}: {shlex.join(self.spec.argv)}"

    def _footer(self, outcome: TaskOutcome) -> str:
        how = (f"exit code {outcome.exit_code}" if outcome.signal is None
               else f"killed by signal {outcome.signal}")
        if outcome.error:
            how += f" ({outcome.error})"
        elif outcome.stop_reason:
            how += f" ({outcome.stop_reason})"
        return (f"=== attempt {self.spec.attempt} ended: {how} after "
                f"{outcome.finished_at - outcome.started_at:.2f}s")



def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except OSError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class TaskLog:
    """A task attempt's log, appended to; the file is opened (and the
    attempt's header written) at the first write."""

    def __init__(self, path: Path, header: str):
        self.path = path
        self.header = header
        self.fd: int | None = None

    @property
    def opened(self) -> bool:
        return self.fd is not None

    def write(self, data: bytes) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            _write_all(self.fd, (self.header + "\n").encode("utf-8", "replace"))
        _write_all(self.fd, data)

    def line(self, text: str) -> None:
        self.write((text + "\n").encode("utf-8", "replace"))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
