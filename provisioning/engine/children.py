"""A task's started process, however it was started: the executor's view of it.

The executor (executor.py) reads its output, feeds its stdin, waits for its
exit and kills its tree the same way whatever started it:
- PopenChild: a plain spawn (subprocess.Popen) of the task's argv; the
  daemon is its parent and reaps it; a pidfd says when it exited. Popen
  itself would build the list of every PATH candidate for each spawn (~20%
  of its CPU here): the program is looked up in the task's PATH once per
  EXEC_CACHE_SECONDS and given to Popen as `executable` (argv[0] unchanged);
  a cached one that is gone is looked up again at once. (os.posix_spawn was
  measured too, and is slower in the daemon: CPython 3.11 holds the GIL while
  it waits for the child's exec, where Popen's vfork releases it.);
- ZygoteChild: a fork of the Python zygote (zygote_server.py). The zygote is
  its parent and reaps it, and writes its wait status into the task's
  status pipe; that pipe is what the executor waits on. If the zygote dies
  first, the child's own report of its exit code (written just before it
  exits) and its pidfd (sent by the zygote right after the fork, so it is
  this process and never a reused pid) say when and how it ended; a child
  killed by a signal then has no status left to read (`lost`).
"""

from __future__ import annotations

import os
import select
import shutil
import struct
import subprocess
import time

STATUS = struct.Struct("<ci")  # as zygote_server.STATUS
EXEC_CACHE_SECONDS = 2.0  # a program put earlier in PATH is used at most this much later
_found: dict[tuple[str, str], tuple[float, str]] = {}  # (PATH, name) -> (until, path)


class Child:
    """pid, stdin (write end) and stdout+stderr (read end) of a started task process."""

    pid: int
    stdin_fd: int | None
    stdout_fd: int | None
    returncode: int | None = None  # as Popen's: negative is the signal
    lost: bool = False  # it ended, but how is unknown (see ZygoteChild)
    done: bool = False  # ended and reaped: its pid is no longer ours to signal

    def exit_fd(self) -> int | None:
        """An fd that is readable once there is news of its exit; None: poll."""
        raise NotImplementedError

    def poll(self) -> bool:
        """True once it has ended (returncode or lost set). Never blocks."""
        raise NotImplementedError

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.poll():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            fd = self.exit_fd()
            if fd is None:
                time.sleep(min(remaining, 0.05))  # no pidfd (not Linux): poll
            else:
                select.select([fd], [], [], remaining)
        return True

    def close_stdin(self) -> None:
        if self.stdin_fd is not None:
            fd, self.stdin_fd = self.stdin_fd, None
            _close(fd)

    def close(self) -> None:
        """Release every fd (the process must have ended or been given up)."""
        self.close_stdin()
        if self.stdout_fd is not None:
            fd, self.stdout_fd = self.stdout_fd, None
            _close(fd)


class PopenChild(Child):
    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: str | None):
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            try:
                self._proc = _popen(argv, _executable(argv[0], env), stdin_r, out_w, env, cwd)
            except FileNotFoundError:  # a cached program removed since: look again
                _found.clear()
                self._proc = _popen(argv, None, stdin_r, out_w, env, cwd)
        except BaseException:
            for fd in (stdin_w, out_r):
                os.close(fd)
            raise
        finally:
            os.close(stdin_r)
            os.close(out_w)
        self.pid, self.stdin_fd, self.stdout_fd = self._proc.pid, stdin_w, out_r
        self._pidfd = _pidfd(self.pid)  # safe: our child, not reaped yet

    def exit_fd(self) -> int | None:
        return self._pidfd

    def poll(self) -> bool:
        if not self.done and self._proc.poll() is not None:
            self.returncode, self.done = self._proc.returncode, True
        return self.done

    def wait(self, timeout: float) -> bool:
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return self.poll()

    def close(self) -> None:
        super().close()
        if self._pidfd is not None:
            fd, self._pidfd = self._pidfd, None
            _close(fd)


class ZygoteChild(Child):
    def __init__(self, pid: int, *, pidfd: int | None, status_fd: int, stdin_fd: int,
                 stdout_fd: int):
        self.pid, self.stdin_fd, self.stdout_fd = pid, stdin_fd, stdout_fd
        self._pidfd = pidfd
        self._status_fd: int | None = status_fd
        self._zygote_gone = False  # its end of the status pipe closed without a status
        os.set_blocking(status_fd, False)
        self._pending = b""
        self._own_code: int | None = None  # what the child said just before it exited

    def exit_fd(self) -> int | None:
        return self._pidfd if self._zygote_gone else self._status_fd

    def poll(self) -> bool:
        if self.done:
            return True
        if not self._zygote_gone:
            self._read_status()
        if not self.done and self._zygote_gone:
            # The child closes its end before it exits, so only the zygote held the
            # pipe: it died. Whether the child has ended too, its pidfd says.
            if self._pidfd is None or _readable(self._pidfd):
                if self._own_code is not None:
                    self.returncode = self._own_code
                else:
                    self.lost = True
                self.done = True
        return self.done

    def _read_status(self) -> None:
        while True:
            try:
                data = os.read(self._status_fd, 64)
            except BlockingIOError:
                break
            if not data:
                self._zygote_gone = True
                break
            self._pending += data
        while len(self._pending) >= STATUS.size:
            kind, value = STATUS.unpack(self._pending[:STATUS.size])
            self._pending = self._pending[STATUS.size:]
            if kind == b"Z":  # reaped by the zygote: the real wait status
                self.returncode, self.done = os.waitstatus_to_exitcode(value), True
            elif kind == b"C":
                self._own_code = value

    def close(self) -> None:
        super().close()
        for name in ("_status_fd", "_pidfd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                _close(fd)


def _popen(argv: list[str], executable: str | None, stdin: int, out: int,
           env: dict[str, str], cwd: str | None) -> subprocess.Popen:
    return subprocess.Popen(  # noqa: S603 - an argv list from the registry
        argv, executable=executable, stdin=stdin, stdout=out, stderr=out,
        start_new_session=True, env=env, close_fds=True, cwd=cwd)


def _executable(program: str, env: dict[str, str]) -> str | None:
    """Where Popen would find `program` in the task's PATH (None: let Popen look)."""
    if os.path.dirname(program):
        return None
    key = (env.get("PATH", ""), program)
    now = time.monotonic()
    hit = _found.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    path = shutil.which(program, path=os.pathsep.join(os.get_exec_path(env)))
    if path is not None:
        if len(_found) > 256:
            _found.clear()
        _found[key] = (now + EXEC_CACHE_SECONDS, path)
    return path


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except OSError:
        return None


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
