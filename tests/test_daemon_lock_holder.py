"""A daemon lock that outlives its daemon: the restart waits, it never claims success.

A daemon killed with -9 shows as a zombie (its main thread has exited) while
its other threads may still be finishing an fsync; the data dir's flock goes
only with the last of them. A restart in that window used to give up after 3 s
with "already running (pid unknown)" and exit 0: its caller read the dead
daemon's pidfile and got "connection refused" (the crash matrix flake,
CRASH_SEED=885317291). Here a helper process holds the lock the way that
dying daemon does, beside the dead daemon's stale pidfile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.errors import ProvisioningError
from provisioning.orchestrator.daemon import AlreadyRunning, acquire_singleton
from provisioning.paths import DataPaths
from tests.conftest import wait_for
from tests.daemon_fixture import ORCHESTRATOR, write_config

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def stale_pidfile(paths: DataPaths) -> None:
    """The pidfile of a dead daemon: a pid that ran and is gone, on a port nobody serves."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    paths.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.pid_file.write_text(json.dumps({
        "schema": 1, "pid": int(dead.stdout), "create_time": 1.0, "instance_id": "dead",
        "port": 1, "host": "127.0.0.1", "started_at": 1.0}))


@pytest.fixture
def held_lock(tmp_path: Path):
    paths = DataPaths(tmp_path / "data")
    stale_pidfile(paths)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(paths.daemon_lock)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield paths, holder
    if holder.poll() is None:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_lock_held_by_no_running_daemon_is_an_error_not_already_running(held_lock):
    paths, _ = held_lock
    with pytest.raises(ProvisioningError) as caught:
        acquire_singleton(paths, wait_s=0.3)
    assert not isinstance(caught.value, AlreadyRunning)
    assert "not a running orchestrator" in str(caught.value)


def test_a_restart_waits_for_the_dying_holder_then_serves(tmp_path: Path, held_lock):
    paths, holder = held_lock
    config = write_config(tmp_path / "orchestrator.toml", {
        "server": {"port": 0}, "storage": {"data_dir": str(paths.data_dir)}})
    env = {k: v for k, v in os.environ.items() if k != "PROVISIONING_STORAGE_DATA_DIR"}
    start = subprocess.Popen([ORCHESTRATOR, "--daemon", "--config", str(config)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: start.poll() is not None or (
            paths.daemon_log.exists()
            and "no daemon answers for it yet" in paths.daemon_log.read_text()),
            timeout=30, what="the new daemon to wait for the lock")
        assert start.poll() is None, f"gave up while the lock was held: {start.stdout.read()}"
        holder.stdin.close()  # the dying daemon's last thread exits
        holder.wait(timeout=30)
        out, _ = start.communicate(timeout=60)
    finally:
        if start.poll() is None:
            start.kill()
            start.wait(timeout=30)
    assert start.returncode == 0 and "started (pid" in out, out
    info = json.loads(paths.pid_file.read_text())
    assert info["instance_id"] != "dead" and info["port"] != 1
    stop = subprocess.run([ORCHESTRATOR, "--stop", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert stop.returncode == 0 and f"stopped (pid {info['pid']})" in stop.stdout, stop
