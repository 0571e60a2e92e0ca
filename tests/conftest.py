"""Shared fixtures: every path moved into tmp_path, free ports, the real CLI.

`isolated` is autouse: no test reads /etc, the user's config, or
/var/lib/provisioning, and none leaves files outside tmp_path.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll `condition` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    for name in list(os.environ):
        if name.startswith("PROVISIONING_") or name == "NOTIFY_SOCKET":
            monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    env = {
        "PROVISIONING_STORAGE_DATA_DIR": str(data),
        "PROVISIONING_SHARE_DIR": str(tmp_path / "share"),
        "PROVISIONING_ETC_DIR": str(tmp_path / "etc"),
        "PROVISIONING_USER_CONFIG_DIR": str(tmp_path / "userconfig"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield env
    _sweep_leaks(request.node.nodeid, str(tmp_path))


def _sweep_leaks(test: str, tmp: str) -> None:
    """Kill what the test left running: any process of ours whose environment
    points into its tmp_path (daemons carry the PROVISIONING_* dirs, task
    processes the data dir). A test that kill -9s a daemon on purpose may leave
    them behind too: it must stop them itself (restart the daemon, whose
    recovery kills them). A leak is an error of the test, so one in the code
    under test is seen instead of piling up on the machine."""
    import psutil

    me, uid = os.getpid(), os.getuid()
    leaked, described = [], []
    for p in psutil.process_iter(["uids"]):
        try:
            if p.pid == me or p.info["uids"] is None or p.info["uids"].real != uid:
                continue
            if any(tmp in v for v in p.environ().values()):
                leaked.append(p)
                described.append(f"pid {p.pid} {' '.join(p.cmdline())[:120]}")
        except (psutil.Error, OSError):
            continue
    for p in leaked:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(leaked, timeout=5)
    if leaked:
        raise AssertionError(f"{test} left {len(leaked)} process(es) running (killed now): "
                             + "; ".join(described))


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 60, cwd: str | os.PathLike[str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run the real installed `provisioning` entry point as a subprocess."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([str(BIN / "provisioning"), *args], capture_output=True, text=True,
                          env=full_env, input=input, timeout=timeout, cwd=cwd)
