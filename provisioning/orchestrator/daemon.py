"""Daemon lifecycle: singleton lock, pidfile, signals, sd_notify, fork, stop, status.

What runs where:
- `Orchestrator.run()` is the foreground daemon (what systemd/launchd run).
- `start_background()` double-forks a foreground daemon into a new session and
  returns only once its /health answers with the instance id it was given.
- stopping and asking a running daemon (pidfile, --stop, --status): control.py.

Signal handlers only set an event; the main thread then drains the engine,
stops the HTTP server and removes the pidfile.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from provisioning import fsutil
from provisioning.errors import ConfigError, ProvisioningError
from provisioning.orchestrator.control import (
    PidInfo,
    endpoint_host,
    fetch_health,
    read_pidfile,
    remove_pidfile,
    running_daemon,
    write_pidfile,
)

if TYPE_CHECKING:
    from provisioning.config import Config
    from provisioning.paths import DataPaths

log = logging.getLogger("provisioning.orchestrator")

LOG_ROTATE_BYTES = 10 * 1024 * 1024  # daemon log kept to one old generation (.1)
READY_MARKER = "ready"
ALREADY_MARKER = "already"
ERROR_MARKER = "error"


class AlreadyRunning(ProvisioningError):
    """Another daemon holds the data dir. Not a failure: exit 0 with a message."""

    exit_code = 0

    def __init__(self, pid: int | None):
        super().__init__(f"already running (pid {pid if pid else 'unknown'})")
        self.pid = pid


# ---------------------------------------------------------------- the daemon itself


def check_bind_allowed(config: Config) -> None:
    """Refuse a non-loopback bind unless server.allow_remote is set explicitly."""
    host = config.server.host
    if config.server.allow_remote or is_loopback(host):
        return
    raise ConfigError(
        f"{config.sources.get('server.host', 'config')}: server.host = {host!r} is not a "
        "loopback address; refusing to expose the API",
        hint="bind 127.0.0.1, or set server.allow_remote = true (and protect the token)")


def is_loopback(host: str) -> bool:
    import ipaddress
    import socket

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_data_dir_fs(config: Config) -> None:
    """Refuse a network filesystem (flock is unreliable there), via store.fscheck."""
    from provisioning.store import fscheck

    fscheck.check_data_dir(config.data_paths().data_dir,
                           allow_network_fs=config.storage.allow_network_fs)


def acquire_singleton(data_paths: DataPaths):
    """Take the data dir's daemon lock for life, or raise AlreadyRunning.

    A daemon that is still starting holds the lock before it writes its
    pidfile, so a busy lock without a confirmed pidfile is re-checked for a
    short while to name the pid.
    """
    import filelock

    from provisioning.store.locks import file_lock

    lock = file_lock(data_paths.daemon_lock)
    deadline = time.monotonic() + 3.0
    delay = 0.02
    while True:
        try:
            lock.acquire(timeout=0)
            return lock
        except filelock.Timeout:
            pass
        info = running_daemon(data_paths)
        if info is not None or time.monotonic() >= deadline:
            raise AlreadyRunning(info.pid if info else None)
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class Orchestrator:
    """One daemon instance: start() brings it up, run() serves until a signal."""

    def __init__(self, config: Config, *, instance_id: str | None = None):
        self.config = config
        self.data_paths = config.data_paths()
        self.instance_id = instance_id or new_instance_id()
        self.stop_requested = threading.Event()
        self.lock = None
        self.engine = None
        self.server = None
        self.serve_thread: threading.Thread | None = None
        self.port = 0

    # signal handlers: set the flag only; the main thread acts
    def install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def start(self) -> None:
        from provisioning.engine.engine import Engine
        from provisioning.ops.registry import OpRegistry
        from provisioning.orchestrator import auth, notify, server
        from provisioning.store.jsonfile import JsonFileStore

        notify.take_notify_socket()
        config = self.config
        check_bind_allowed(config)
        try:
            fsutil.ensure_private_dir(self.data_paths.data_dir)
        except OSError as e:
            raise ConfigError(f"{self.data_paths.data_dir}: cannot use data dir: {e}",
                              hint="set storage.data_dir to a directory you own") from e
        self.lock = acquire_singleton(self.data_paths)
        check_data_dir_fs(config)
        token = auth.ensure_token(self.data_paths.token_file)

        # Bind before the engine starts (the endpoint goes into task env); serve after.
        self.server = server.make_server(config, token=token, instance_id=self.instance_id)
        self.port = self.server.server_address[1]
        endpoint = f"http://{endpoint_host(config.server.host)}:{self.port}"
        import psutil

        write_pidfile(self.data_paths.pid_file, PidInfo(
            pid=os.getpid(), create_time=psutil.Process().create_time(),
            instance_id=self.instance_id, port=self.port, host=config.server.host,
            started_at=time.time()))
        registry = OpRegistry.from_config(config)
        store = JsonFileStore(self.data_paths, writer_process=config.storage.writer_process)
        self.engine = Engine(store, config, registry=registry, instance_id=self.instance_id,
                             endpoint=endpoint)
        self.engine.start()
        self.server.attach(self.engine, registry)
        self.serve_thread = threading.Thread(target=self.server.serve_forever,
                                             name="http-accept", daemon=True)
        self.serve_thread.start()
        log.info("orchestrator %s listening on %s (pid %d, data dir %s)", self.instance_id,
                 endpoint, os.getpid(), self.data_paths.data_dir)
        notify.sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=listening on {endpoint}")

    def wait(self) -> None:
        """Block the main thread until SIGTERM/SIGINT.

        Not `Event.wait()`: the kernel may deliver the signal to any of our
        threads, and then a main thread asleep in a lock never wakes to run the
        Python handler (it runs only on the main thread, between bytecodes).
        signal.set_wakeup_fd makes the C-level handler write a byte to a pipe
        that this thread reads, whichever thread took the signal.
        """
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        previous = signal.set_wakeup_fd(write_fd)
        try:
            while not self.stop_requested.is_set():
                os.read(read_fd, 64)  # returns once a signal arrived; the handler has run
        finally:
            signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)

    def shutdown(self) -> None:
        """Stop taking work, drain running tasks up to the grace period, persist, exit."""
        from provisioning.orchestrator import notify

        grace = self.config.executor.shutdown_grace_seconds
        notify.sd_notify("STOPPING=1")
        log.info("stopping: no new work; draining running tasks (grace %ss)", grace)
        if self.server is not None:
            self.server.draining = True
        if self.engine is not None:
            self.engine.stop_accepting()
            try:
                self.engine.shutdown(grace=grace)
            except Exception:
                log.exception("engine shutdown failed")
        if self.server is not None:
            if self.serve_thread is not None:
                self.server.shutdown()
            self.server.server_close()
        remove_pidfile(self.data_paths.pid_file, self.instance_id)
        if self.lock is not None:
            self.lock.release()
        log.info("orchestrator %s stopped", self.instance_id)

    def run(self, ready_fd: int | None = None) -> int:
        """Start, report readiness, serve until SIGTERM/SIGINT, shut down. Exit code."""
        self.install_signal_handlers()
        try:
            self.start()
        except BaseException:
            self._abort_start()
            raise
        if ready_fd is not None:
            _pipe_send(ready_fd, f"{READY_MARKER} {self.port}")
        self.wait()
        self.shutdown()
        return 0

    def _abort_start(self) -> None:
        if self.server is not None:
            self.server.server_close()
        if self.engine is not None:
            try:
                self.engine.shutdown(grace=0)
            except Exception:
                log.exception("engine shutdown after a failed start")
        if self.lock is not None and self.lock.is_locked:
            remove_pidfile(self.data_paths.pid_file, self.instance_id)
            self.lock.release()


def new_instance_id() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------- --daemon


def _pipe_send(fd: int, message: str) -> None:
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


def _await_ready(data_paths: DataPaths, instance_id: str, read_fd: int, timeout: float,
                 log_offset: int, out) -> int:
    deadline = time.monotonic() + timeout
    buffer = b""
    delay = 0.01
    port: int | None = None
    child_done = False
    while time.monotonic() < deadline:
        if not child_done:
            wait_s = min(delay, max(0.0, deadline - time.monotonic()))
            readable, _, _ = select.select([read_fd], [], [], wait_s)
            if readable:
                chunk = os.read(read_fd, 4096)
                buffer += chunk
                if not chunk:
                    child_done = True
        line = buffer.decode(errors="replace").split("\n", 1)[0] if b"\n" in buffer else ""
        word, _, rest = line.partition(" ")
        if word == ALREADY_MARKER:
            out(f"already running (pid {rest})")
            return 0
        if word == ERROR_MARKER:
            code, _, message = rest.partition(" ")
            raise ProvisioningError(f"orchestrator failed to start: {message}",
                                    exit_code=int(code) if code.isdigit() else 1,
                                    hint=f"log: {data_paths.daemon_log}")
        if word == READY_MARKER:
            port = int(rest) if rest.isdigit() else None
        if port is not None:
            info = read_pidfile(data_paths.pid_file)
            if info is not None and info.instance_id == instance_id:
                health = fetch_health(info.url)
                if health is not None and health.get("instance_id") == instance_id:
                    out(f"started (pid {info.pid}, {info.url})")
                    return 0
        elif child_done:
            break  # died without saying why: the log tells
        if child_done:
            time.sleep(delay)
        delay = min(delay * 2, 0.2)
    tail = _log_tail(data_paths.daemon_log) if data_paths.daemon_log.exists() else ""
    reason = "exited during start-up" if child_done and port is None else \
        f"did not answer /health within {timeout:g}s"
    raise ProvisioningError(
        f"orchestrator {reason}" + (f"; last log lines:\n{tail}" if tail else ""),
        hint=f"log: {data_paths.daemon_log} (from byte {log_offset})")


def port_in_use_error(config: Config, error: OSError) -> ProvisioningError:
    where = f"{config.server.host}:{config.server.port}"
    if error.errno == errno.EADDRINUSE:
        return ProvisioningError(f"cannot listen on {where}: address already in use",
                                 hint="another program uses that port: set server.port")
    return ProvisioningError(f"cannot listen on {where}: {error.strerror or error}")
