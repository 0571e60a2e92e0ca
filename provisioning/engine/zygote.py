"""The daemon's Python zygote: started, watched, restarted, retired.

A Python op costs an interpreter start and the package's imports (~25 ms of
CPU), and with a cloud SDK much more (`import boto3` and a client: ~0.6 s
and 66 MB). The zygote (zygote_server.py) pays that once: a child of the
daemon that pre-imports the package and `executor.python_zygote_preload`
(what is importable of it) and forks one child per Python op. Each child is
still a fresh process per task, with its own pid, session, environment,
stdin params and protocol (DESIGN.md 17); the executor treats it like any
other (children.ZygoteChild).

The engine keeps two, a lean one and one with the SDKs: zygotes.py says why.

Lifetime, and what happens when something goes wrong:
- started by a keeper thread of this object when the engine starts (the
  daemon is ready without waiting for it: ops spawn plainly until its
  hello arrives); no fd of the daemon but its socket end, a clean
  environment: it never holds the daemon's locks or token;
- it dies with the daemon, kill -9 included: the end of its socket, and on
  Linux PR_SET_PDEATHSIG (which follows the thread that started it: the
  keeper, alive until close());
- if it dies, the keeper logs it and starts another; ops spawn plainly
  meanwhile. A zygote that fails three times in a row, each within
  QUICK_DEATH_SECONDS of its start, is given up: ops spawn plainly from then
  on, and the log says so;
- when a module file it imported (the package's, or a preloaded package's
  `__init__`) or a config file changes on disk (an upgrade, an edit),
  checked at most once a second at a spawn, it is retired (it finishes
  reporting its children, then exits) and a new one started, with the
  zygote settings of the config read again (`python_zygote = false` there
  stops it).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisioning.engine.children import ZygoteChild
from provisioning.engine.zygote_server import MARKER_ENV, MARKER_RESERVE
from provisioning.errors import ConfigError

log = logging.getLogger("provisioning.engine")

ZYGOTE_MAIN = "from provisioning.engine.zygote_server import main; main()"
START_TIMEOUT = 120.0  # seconds for its imports (a cold boto3 on a loaded machine: ~2 s)
SPAWN_TIMEOUT = 10.0  # a fork that takes longer: the zygote is hung, killed, restarted
CHECK_INTERVAL = 1.0  # seconds between looks at its files on disk
QUICK_DEATH_SECONDS = 30.0
MAX_QUICK_DEATHS = 3
RESTART_DELAY = 1.0


@dataclass(frozen=True)
class ZygoteSettings:
    enabled: bool
    preload: tuple[str, ...] = ()


def supported() -> bool:
    """Linux with pidfds, fd passing and SOCK_SEQPACKET (it needs all three)."""
    return (sys.platform.startswith("linux") and hasattr(os, "pidfd_open")
            and hasattr(socket, "send_fds") and hasattr(socket, "SOCK_SEQPACKET"))


class Zygote:
    """The daemon's handle on its zygote. spawn() forks a Python op, or says None
    (then the caller spawns it plainly)."""

    def __init__(self, *, env: dict[str, str], settings: ZygoteSettings,
                 config_files: list[Path] = (),
                 reload: Callable[[], ZygoteSettings] | None = None):
        env = {k: v for k, v in env.items() if k != MARKER_ENV}
        env[MARKER_ENV] = "0" * MARKER_RESERVE  # last: a child writes its run marker over it
        self._env = env
        self._settings = settings
        self._reload = reload
        self._config_files = [Path(p) for p in config_files]
        self._lock = threading.Lock()  # the socket (one spawn at a time) and what follows
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._files: list[tuple[str, int | None, int | None]] = []  # stat at import time
        self._config_stats = _stats(self._config_files)
        self._next_check = 0.0
        self._retired: list[subprocess.Popen] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._restart: str | None = None  # why it must be replaced: "files", "config"
        self._closing = False
        self._thread: threading.Thread | None = None
        self.started = threading.Event()  # set at the first hello (or when given up)

    @property
    def pid(self) -> int | None:
        """The serving zygote's pid, None while there is none."""
        with self._lock:
            return self._proc.pid if self._sock is not None else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._keep, name="python-zygote", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Retire the zygote (after the engine has stopped its tasks) and wait for it."""
        self._closing = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout)

    def spawn(self, argv: list[str], *, env: dict[str, str], cwd: str | None,
              key: str, marker: str | None = None) -> ZygoteChild | None:
        """Fork the Python op `argv` as the task `key` (its run ``marker``, proctree.py;
        default: the key's environment value); None: no zygote to do it."""
        with self._lock:
            sock = self._sock
        if sock is None or self._stale():
            return None
        marker = marker or env.get(MARKER_ENV) or f"{key}/0"  # "<key>/<run>": proctree.py
        request = json.dumps({"argv": argv, "env": env, "cwd": cwd, "key": key,
                              "marker": marker}).encode()
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        status_r, status_w = os.pipe()
        ours = [stdin_w, out_r, status_r]
        try:
            with self._lock:
                if self._sock is not sock:
                    raise _Gone
                socket.send_fds(sock, [request], [stdin_r, out_w, status_w])
                reply, fds, _, _ = socket.recv_fds(sock, 4096, 1, socket.MSG_CMSG_CLOEXEC)
            answer = json.loads(reply) if reply else {"error": "the zygote closed its socket"}
        except _Gone:
            answer = None
        except OSError as e:
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):  # too big: this task only
                self._broken(sock, e)  # dead or hung (timeout)
            answer = None
        except ValueError as e:  # talking nonsense
            self._broken(sock, e)
            answer = None
        finally:
            for fd in (stdin_r, out_w, status_w):
                os.close(fd)
        if not answer or "pid" not in answer:
            if answer:
                log.warning("python zygote could not start task %s (%s); spawning it plainly",
                            key, answer.get("error"))
            for fd in ours + (fds if answer else []):
                os.close(fd)
            return None
        return ZygoteChild(answer["pid"], pidfd=fds[0] if fds else None, status_fd=status_r,
                           stdin_fd=stdin_w, stdout_fd=out_r)

    # -- the keeper thread ---------------------------------------------------------------

    def _keep(self) -> None:
        quick_deaths = 0
        while not self._closing:
            if not self._settings.enabled:
                self.started.set()
                self._pause(None)
                continue
            begun = time.monotonic()
            proc = self._launch()
            ended = self._serve(proc) if proc is not None else "failed"
            if ended in ("closing", "restart"):
                continue
            if ended == "failed" or time.monotonic() - begun < QUICK_DEATH_SECONDS:
                quick_deaths += 1
            else:
                quick_deaths = 0
            if quick_deaths >= MAX_QUICK_DEATHS:
                log.error("the Python zygote failed %d times in a row; Python ops start as "
                          "plain processes from now on", quick_deaths)
                self.started.set()
                while not self._closing:
                    self._pause(None)
                break
            self._pause(RESTART_DELAY)
        self._retire_current()
        for proc in self._retired:
            _reap(proc, 10.0)

    def _launch(self) -> subprocess.Popen | None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        begun = time.monotonic()
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-c", ZYGOTE_MAIN, str(theirs.fileno()), str(os.getpid()),
                 json.dumps(list(self._settings.preload))],
                stdin=subprocess.DEVNULL, env=self._env, close_fds=True,
                pass_fds=(theirs.fileno(),))
        except OSError as e:
            log.warning("cannot start the Python zygote: %s", e)
            mine.close()
            return None
        finally:
            theirs.close()
        try:
            mine.settimeout(START_TIMEOUT)
            hello = json.loads(mine.recv(1 << 22) or b"null")
            mine.settimeout(SPAWN_TIMEOUT)
        except (OSError, ValueError) as e:
            hello = {"error": str(e)}
        if not isinstance(hello, dict) or not hello.get("marker"):
            why = (hello or {}).get("error") if isinstance(hello, dict) else None
            log.warning("the Python zygote (pid %d) did not start%s; Python ops start as "
                        "plain processes", proc.pid,
                        f" ({why})" if why else (" (its children cannot carry the recovery "
                                                 "marker here)" if hello else ""))
            mine.close()
            _reap(proc, 5.0)
            return None
        with self._lock:
            self._sock, self._proc = mine, proc
            self._files = [tuple(f) for f in hello.get("files", [])]
        missing = ", ".join(sorted(hello.get("missing", {})))
        log.info("python zygote pid %d ready in %.2fs (preloaded %d modules%s)", proc.pid,
                 time.monotonic() - begun, len(hello.get("preloaded", [])),
                 f"; not importable: {missing}" if missing else "")
        self.started.set()
        return proc

    def _serve(self, proc: subprocess.Popen) -> str:
        """Watch the serving zygote: 'died', 'restart' (retired for a new one), 'closing'."""
        pidfd = os.pidfd_open(proc.pid)
        try:
            while True:
                if self._closing:
                    return "closing"
                if self._restart:
                    why, self._restart = self._restart, None
                    self._retire_current()
                    if why == "config" and self._reload is not None:
                        self._reload_settings()
                    return "restart"
                if self._pause(None, pidfd):
                    break
        finally:
            os.close(pidfd)
        with self._lock:
            if self._proc is proc:
                self._sock.close()
                self._sock = None
        code = proc.wait()
        log.warning("the Python zygote (pid %d) %s; Python ops start as plain processes "
                    "until a new one is ready", proc.pid,
                    f"was killed by signal {-code}" if code < 0 else f"exited ({code})")
        return "died"

    def _pause(self, timeout: float | None, pidfd: int | None = None) -> bool:
        """Wait for a poke, `timeout` or `pidfd`; reap retired zygotes meanwhile.
        True if `pidfd` became readable."""
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ)
            if pidfd is not None:
                sel.register(pidfd, selectors.EVENT_READ)
            retired = {}
            for proc in self._retired:
                fd = os.pidfd_open(proc.pid)
                retired[fd] = proc
                sel.register(fd, selectors.EVENT_READ)
            try:
                ready = {key.fd for key, _ in sel.select(timeout)}
            finally:
                for fd in retired:
                    os.close(fd)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 1024)
            except BlockingIOError:
                pass
        for fd, proc in retired.items():
            if fd in ready:
                proc.wait()
                self._retired.remove(proc)
        return pidfd is not None and pidfd in ready

    def _retire_current(self) -> None:
        with self._lock:
            sock, proc = self._sock, self._proc
            self._sock = self._proc = None
        if sock is None:
            return
        try:
            sock.send(json.dumps({"retire": True}).encode())
        except OSError:
            pass
        sock.close()
        self._retired.append(proc)

    def _reload_settings(self) -> None:
        try:
            self._settings = self._reload()
        except ConfigError as e:
            log.warning("config changed but cannot be read (%s); the Python zygote keeps "
                        "its settings", e)
        self._config_stats = _stats(self._config_files)

    # -- called from task threads --------------------------------------------------------

    def _stale(self) -> bool:
        """Has a file it imported, or a config file, changed on disk? (at most once a second)"""
        now = time.monotonic()
        if now < self._next_check:
            return self._restart is not None
        self._next_check = now + CHECK_INTERVAL
        with self._lock:
            files = list(self._files)
        changed = next((path for path, mtime, size in files
                        if _stat(path) != (mtime, size)), None)
        why = "files" if changed is not None else None
        if why is None and _stats(self._config_files) != self._config_stats:
            changed, why = "a config file", "config"
        if why is not None and self._restart is None:
            log.info("%s changed on disk: restarting the Python zygote", changed)
            self._restart = why
            self._poke()
        return self._restart is not None

    def _broken(self, sock: socket.socket, error: Exception) -> None:
        with self._lock:
            proc = self._proc if self._sock is sock else None
        if proc is not None:
            log.warning("the Python zygote (pid %d) did not answer (%s): killing it",
                        proc.pid, error)
            proc.kill()  # the keeper sees it die and starts another

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass


class _Gone(Exception):
    """The zygote was replaced while a spawn waited for the socket."""


def _stat(path: str | Path) -> tuple[int | None, int | None]:
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_mtime_ns, st.st_size


def _stats(paths: list[Path]) -> list[tuple[int | None, int | None]]:
    return [_stat(p) for p in paths]


def _reap(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
