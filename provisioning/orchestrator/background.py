"""--daemon: double fork + setsid, and the readiness pipe between the two sides.

The caller (`provisioning-orchestrator --daemon`, run by `orchestrator start`
and the CLI's auto-start) returns only once the grandchild says "ready PORT"
on the pipe AND /health answers with the instance id it was given; "already
PID" (another daemon holds the data dir) is a success too; "error CODE
MESSAGE", or EOF without a line, is a failure with the log's last lines.
The daemon proper is daemon.Orchestrator; this module never imports it.
"""

from __future__ import annotations

import os
import select
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from provisioning import fsutil
from provisioning.client import probe
from provisioning.errors import ProvisioningError
from provisioning.orchestrator.control import (
    PidInfo,
    new_instance_id,
    read_pidfile,
    running_daemon,
)
from provisioning.polling import wait_until

if TYPE_CHECKING:
    from provisioning.config import Config
    from provisioning.paths import DataPaths

LOG_ROTATE_BYTES = 10 * 1024 * 1024  # daemon log kept to one old generation (.1)
READY_MARKER = "ready"
ALREADY_MARKER = "already"
ERROR_MARKER = "error"


def pipe_send(fd: int, message: str) -> None:
    try:
        os.write(fd, (message + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def _rotate_log(path: Path) -> None:
    try:
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_background(config: Config, *, run_child, timeout: float, out=print) -> int:
    """--daemon: double fork + setsid; return once /health answers with our instance id.

    `run_child(instance_id, ready_fd) -> exit code` runs in the grandchild with
    stdio already redirected. It writes one line to `ready_fd`: "ready PORT",
    "already PID" or "error CODE MESSAGE"; EOF without one means it died.
    """
    data_paths = config.data_paths()
    info = running_daemon(data_paths)
    if info is not None:
        out(f"already running (pid {info.pid})")
        return 0
    fsutil.ensure_private_dir(data_paths.data_dir)
    _rotate_log(data_paths.daemon_log)
    log_offset = data_paths.daemon_log.stat().st_size if data_paths.daemon_log.exists() else 0
    instance_id = new_instance_id()
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # first child: new session, fork again so we are no session leader
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            _become_daemon(data_paths.daemon_log)
            code = run_child(instance_id, write_fd)
        except BaseException:  # never return into the parent's code
            code = 1
        os._exit(code)
    os.close(write_fd)
    os.waitpid(pid, 0)  # reap the first child at once (no zombie)
    try:
        return _await_ready(data_paths, instance_id, read_fd, timeout, log_offset, out)
    finally:
        os.close(read_fd)


def _become_daemon(log_path: Path) -> None:
    os.umask(0o077)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)


def _first_line(read_fd: int, deadline: float) -> tuple[str, bool]:
    """The first line the grandchild writes on the pipe ("" if none came by the
    deadline), and whether it closed the pipe (EOF)."""
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([read_fd], [], [], remaining)[0]:
            return "", False
        chunk = os.read(read_fd, 4096)
        if not chunk:
            return "", True
        buffer += chunk
    return buffer.decode(errors="replace").split("\n", 1)[0], False


def _answering(data_paths: DataPaths, instance_id: str) -> PidInfo | None:
    """The pidfile's daemon, once it is ours and its /health names our instance id."""
    info = read_pidfile(data_paths.pid_file)
    if info is None or info.instance_id != instance_id:
        return None
    health = probe(info.url)
    return info if health is not None and health.get("instance_id") == instance_id else None


def _await_ready(data_paths: DataPaths, instance_id: str, read_fd: int, timeout: float,
                 log_offset: int, out) -> int:
    deadline = time.monotonic() + timeout
    line, child_done = _first_line(read_fd, deadline)
    word, _, rest = line.partition(" ")
    if word == ALREADY_MARKER:
        out(f"already running (pid {rest})")
        return 0
    if word == ERROR_MARKER:
        code, _, message = rest.partition(" ")
        raise ProvisioningError(f"orchestrator failed to start: {message}",
                                exit_code=int(code) if code.isdigit() else 1,
                                hint=f"log: {data_paths.daemon_log}")
    ready = word == READY_MARKER and rest.isdigit()
    if ready:
        info = wait_until(lambda: _answering(data_paths, instance_id),
                          deadline - time.monotonic())
        if info is not None:
            out(f"started (pid {info.pid}, {info.url})")
            return 0
    tail = _log_tail(data_paths.daemon_log) if data_paths.daemon_log.exists() else ""
    # EOF without "ready": it died, and the log says why
    reason = "exited during start-up" if child_done and not ready else \
        f"did not answer /health within {timeout:g}s"
    raise ProvisioningError(
        f"orchestrator {reason}" + (f"; last log lines:\n{tail}" if tail else ""),
        hint=f"log: {data_paths.daemon_log} (from byte {log_offset})")
