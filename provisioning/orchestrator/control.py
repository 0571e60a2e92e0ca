"""Finding, asking and stopping a running daemon: the pidfile and its checks.

`stop_daemon()` / `daemon_status()` never signal or trust a pid before
confirming, with psutil, that it is the process that wrote the pidfile (same
create time, an orchestrator command line): pids get reused.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from provisioning import fsutil, procinfo
from provisioning.client import probe
from provisioning.errors import EXIT_FAILED, EXIT_UNAVAILABLE, ProvisioningError
from provisioning.orchestrator.listen import endpoint_host
from provisioning.polling import wait_until
from provisioning.selfexec import looks_like_orchestrator

if TYPE_CHECKING:
    from provisioning.config import Config
    from provisioning.paths import DataPaths

log = logging.getLogger("provisioning.orchestrator")


def new_instance_id() -> str:
    """The id a daemon answers with on /health and writes in its pidfile."""
    return uuid.uuid4().hex


# ---------------------------------------------------------------- pidfile


@dataclass(frozen=True)
class PidInfo:
    pid: int
    create_time: float
    instance_id: str
    port: int
    host: str
    started_at: float

    @property
    def url(self) -> str:
        return f"http://{endpoint_host(self.host)}:{self.port}"


def write_pidfile(path: Path, info: PidInfo) -> None:
    fsutil.atomic_write_json(path, {"schema": 1, **asdict(info)}, mode=0o600)


def read_pidfile(path: Path) -> PidInfo | None:
    """The pidfile's content, or None if there is none or it is unreadable."""
    try:
        data = fsutil.read_json(path)
        return PidInfo(pid=int(data["pid"]), create_time=float(data["create_time"]),
                       instance_id=str(data["instance_id"]), port=int(data["port"]),
                       host=str(data.get("host", "127.0.0.1")),
                       started_at=float(data.get("started_at", 0)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable pidfile %s: %s", path, e)
        return None


def remove_pidfile(path: Path, instance_id: str | None = None) -> None:
    """Remove the pidfile; with `instance_id`, only if it is still that daemon's."""
    if instance_id is not None:
        info = read_pidfile(path)
        if info is not None and info.instance_id != instance_id:
            return
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def process_is_ours(info: PidInfo) -> bool:
    """True only if info.pid is the very process that wrote the pidfile."""
    proc = procinfo.same_process(info.pid, info.create_time)  # None: gone, reused, zombie
    return proc is not None and looks_like_orchestrator(proc)


def running_daemon(data_paths: DataPaths) -> PidInfo | None:
    """The confirmed live daemon of this data dir, or None."""
    info = read_pidfile(data_paths.pid_file)
    if info is not None and process_is_ours(info):
        return info
    return None


# ---------------------------------------------------------------- stop / status


def _wait_gone(pid: int, create_time: float, timeout: float) -> bool:
    """Poll (with backoff) until the process is gone or a zombie."""
    return bool(wait_until(lambda: procinfo.same_process(pid, create_time) is None, timeout,
                           max_delay=0.25))


def stop_daemon(config: Config, out=print) -> int:
    """--stop: SIGTERM the confirmed daemon and wait for it to exit."""
    data_paths = config.data_paths()
    info = read_pidfile(data_paths.pid_file)
    if info is None:
        out("not running")
        return 0
    if not process_is_ours(info):
        remove_pidfile(data_paths.pid_file, info.instance_id)
        out(f"not running (removed stale pidfile naming pid {info.pid})")
        return 0
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        remove_pidfile(data_paths.pid_file, info.instance_id)
        out("not running")
        return 0
    wait_s = config.executor.shutdown_grace_seconds + config.executor.kill_grace_seconds + 15
    if not _wait_gone(info.pid, info.create_time, wait_s):
        raise ProvisioningError(
            f"orchestrator (pid {info.pid}) did not stop within {wait_s}s",
            hint=f"see {data_paths.daemon_log}; `kill -9 {info.pid}` loses nothing queued")
    out(f"stopped (pid {info.pid})")
    return 0


def daemon_status(config: Config, out=print) -> int:
    """--status: 0 running and answering, 1 running but not answering, 3 stopped."""
    data_paths = config.data_paths()
    info = read_pidfile(data_paths.pid_file)
    if info is None:
        out("stopped")
        return EXIT_UNAVAILABLE
    if not process_is_ours(info):
        out(f"stopped (stale pidfile naming pid {info.pid}, which is not the orchestrator)")
        return EXIT_UNAVAILABLE
    health = probe(info.url)
    if health is None or health.get("instance_id") != info.instance_id:
        out(f"running (pid {info.pid}) but not answering on {info.url}")
        return EXIT_FAILED
    out(f"running (pid {info.pid}, {info.url}, uptime {health.get('uptime_s', 0):.0f}s, "
        f"instance {info.instance_id})")
    return 0
