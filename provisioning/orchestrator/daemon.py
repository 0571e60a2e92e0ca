"""The daemon itself: singleton lock, pidfile, signals, sd_notify, engine + HTTP server.

What runs where:
- `Orchestrator.run()` is the foreground daemon (what systemd/launchd run).
- `--daemon` (double fork, readiness pipe): background.py.
- stopping and asking a running daemon (pidfile, --stop, --status): control.py.
- the bind rule and the address clients use: listen.py; the HTTP server: server.py.

Signal handlers only set an event; the main thread then drains the engine,
stops the HTTP server and removes the pidfile.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from provisioning import fsutil, locks, procinfo, transport
from provisioning.engine.engine import Engine
from provisioning.errors import ConfigError, ProvisioningError
from provisioning.ops.registry import OpRegistry
from provisioning.orchestrator import auth, notify, peers, server
from provisioning.orchestrator.background import READY_MARKER, pipe_send
from provisioning.orchestrator.control import (
    PidInfo,
    new_instance_id,
    remove_pidfile,
    running_daemon,
    write_pidfile,
)
from provisioning.orchestrator.listen import check_bind_allowed, endpoint_host
from provisioning.polling import wait_until
from provisioning.store import fscheck
from provisioning.store.jsonfile import JsonFileStore

if TYPE_CHECKING:
    from filelock import FileLock

    from provisioning.config import Config
    from provisioning.model.storage import Store
    from provisioning.paths import DataPaths

log = logging.getLogger("provisioning.orchestrator")


class AlreadyRunning(ProvisioningError):
    """Another daemon holds the data dir. Not a failure: exit 0 with a message."""

    exit_code = 0

    def __init__(self, pid: int | None):
        super().__init__(f"already running (pid {pid if pid else 'unknown'})")
        self.pid = pid


def check_data_dir_fs(config: Config) -> None:
    """Refuse a network filesystem (flock is unreliable there), via store.fscheck."""
    fscheck.check_data_dir(config.data_paths().data_dir,
                           allow_network_fs=config.storage.allow_network_fs)


# A daemon killed with -9 keeps its lock until its last thread has exited, and
# a thread inside fsync on a busy disk exits only when the fsync returns.
LOCK_HOLDER_WAIT_S = 30.0


def acquire_singleton(data_paths: DataPaths, *, wait_s: float = LOCK_HOLDER_WAIT_S):
    """Take the data dir's daemon lock for life, or raise AlreadyRunning naming
    the live daemon (confirmed by its pidfile) that holds it.

    A busy lock with no confirmed daemon behind it belongs to a daemon that is
    still starting (its pidfile comes next) or still dying (killed, its last
    threads not yet gone): wait up to ``wait_s`` for the one or the other. A
    holder that is neither is an error, never "already running": nothing
    would serve, and a caller would read the stale pidfile of the dead one.
    """
    waiting_logged = False

    def lock_or_owner() -> tuple[FileLock | None, PidInfo | None] | None:
        nonlocal waiting_logged
        lock = locks.try_acquire(data_paths.daemon_lock)
        if lock is not None:
            return lock, None
        owner = running_daemon(data_paths)
        if owner is not None:
            return None, owner
        if not waiting_logged:
            waiting_logged = True
            log.info("%s is busy and no daemon answers for it yet: waiting up to %gs "
                     "for its holder to start or exit", data_paths.daemon_lock, wait_s)
        return None

    got = wait_until(lock_or_owner, wait_s, first_delay=0.02)
    if got is None:
        raise ProvisioningError(
            f"{data_paths.daemon_lock} is held by a process that is not a running "
            f"orchestrator (waited {wait_s:g}s)",
            hint=f"a daemon still exiting, or another program: `fuser {data_paths.daemon_lock}`")
    lock, owner = got
    if lock is None:
        raise AlreadyRunning(owner.pid if owner else None)
    return lock


def open_store(config: Config, data_paths: DataPaths) -> Store:
    """The configured backend (storage.backend): JSON files, or PostgreSQL."""
    if config.storage.backend == "postgres":
        # lazy: psycopg and the postgres backend only where that backend is configured
        from provisioning.store.postgres import PostgresStore

        if config.storage.postgres_shared:
            # lazy: as above (psycopg); several daemons on one database
            from provisioning.store.postgres_shared import SharedPostgresStore

            return SharedPostgresStore(config.storage.postgres_dsn, data_paths, on_fenced=_fenced,
                                       lease_s=config.storage.postgres_lease_seconds)
        return PostgresStore(config.storage.postgres_dsn, data_paths, on_fenced=_fenced)
    return JsonFileStore(data_paths, writer_process=config.storage.writer_process)


def _fenced() -> None:
    """Another daemon took our PostgreSQL database over while we were cut off:
    stop as for SIGTERM (start nothing more, drain, exit); nothing we do is
    recorded any more (README "Running several orchestrators")."""
    log.error("another orchestrator took the database over: stopping this one")
    os.kill(os.getpid(), signal.SIGTERM)


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
        self.fenced = False  # lost a workflow lease: stop without a drain grace

    # signal handlers: set the flag only; the main thread acts
    def install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def start(self) -> None:
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
        write_pidfile(self.data_paths.pid_file, PidInfo(
            pid=os.getpid(), create_time=procinfo.create_time(os.getpid()) or 0.0,
            instance_id=self.instance_id, port=self.port, host=config.server.host,
            started_at=time.time()))
        registry = OpRegistry.from_config(config)
        store = open_store(config, self.data_paths)
        self.engine = Engine(store, config, registry=registry, instance_id=self.instance_id,
                             endpoint=endpoint, python_zygote=True)
        self.engine.start()
        if hasattr(store, "start_leases"):  # storage.postgres_shared: the lease thread
            engine = self.engine
            store.start_leases(on_adopt=engine.adopt, on_lost=self._lost_leases,
                               endpoint=endpoint,  # a peer's cancel or retry: orchestrator/peers.py
                               on_request=lambda wid, action: peers.serve_request(engine, wid,
                                                                                  action),
                               on_reopened=engine.forget)
        self.server.attach(self.engine, registry)
        self.serve_thread = threading.Thread(target=self.server.serve_forever,
                                             name="http-accept", daemon=True)
        self.serve_thread.start()
        log.info("orchestrator %s listening on %s (pid %d, data dir %s)", self.instance_id,
                 endpoint, os.getpid(), self.data_paths.data_dir)
        notify.sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=listening on {endpoint}")

    def _lost_leases(self, workflow_ids: set[str]) -> None:
        """Another daemon has some of our workflows now (our lease ran out while
        we were stalled or cut off): their tasks must not keep running here.
        Stop at once, with no drain grace; the store writes nothing of them."""
        log.error("lost workflows %s to another orchestrator: stopping this one now",
                  ", ".join(sorted(workflow_ids)))
        self.fenced = True
        self.stop_requested.set()
        os.kill(os.getpid(), signal.SIGTERM)  # wakes wait()

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
        grace = 0 if self.fenced else self.config.executor.shutdown_grace_seconds
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
        transport.close_masters(self.data_paths.data_dir)  # SSH masters of finished tasks
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
            pipe_send(ready_fd, f"{READY_MARKER} {self.port}")
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
