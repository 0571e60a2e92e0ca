"""The shared base helpers: locks (provisioning.locks), waiting with a deadline
(provisioning.polling) and "is this the same process" (provisioning.procinfo)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioning import locks, procinfo
from provisioning.polling import wait_until

PYTHON = sys.executable

HOLDER = r"""
import sys
from provisioning import locks
with locks.acquire(sys.argv[1], timeout=10):
    print("locked", flush=True)
    sys.stdin.readline()
"""


# -- polling ---------------------------------------------------------------------

def test_wait_until_returns_the_first_truthy_value():
    answers = iter([None, 0, "", "ready", "later"])
    assert wait_until(lambda: next(answers), 5, first_delay=0.001) == "ready"


def test_wait_until_gives_up_at_the_deadline_after_a_last_look():
    calls: list[float] = []

    def never() -> bool:
        calls.append(time.monotonic())
        return False

    start = time.monotonic()
    assert wait_until(never, 0.2, first_delay=0.01, max_delay=0.05) is None
    assert calls[-1] - start >= 0.2  # the last look is at (or after) the deadline
    assert 3 <= len(calls) < 40  # backoff: neither one look nor a busy loop


def test_a_zero_timeout_is_one_look():
    calls = []
    assert wait_until(lambda: calls.append(1), 0) is None
    assert calls == [1]


# -- procinfo --------------------------------------------------------------------

def test_identity_of_a_live_process_matches_and_a_wrong_create_time_does_not():
    me = procinfo.identity(os.getpid())
    assert me is not None and me["pid"] == os.getpid()
    assert procinfo.is_alive(me)
    assert procinfo.same_process(me["pid"], me["create_time"]).pid == os.getpid()
    # Rounded to 1/100 s (older records) is still the same process ...
    assert procinfo.is_alive({"pid": me["pid"], "create_time": round(me["create_time"], 2)})
    # ... a create time a second off is a reused pid, and none proves nothing.
    assert procinfo.same_process(me["pid"], me["create_time"] - 1.0) is None
    assert procinfo.same_process(me["pid"], None) is None
    assert not procinfo.is_alive({"pid": "1"}) and not procinfo.is_alive(None)


def test_a_zombie_is_not_alive_unless_asked_for():
    child = subprocess.Popen([PYTHON, "-c", "pass"])
    try:
        started = procinfo.create_time(child.pid)
        assert started is not None
        import psutil

        assert wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE,
                          10)
        assert procinfo.same_process(child.pid, started) is None
        assert procinfo.same_process(child.pid, started, zombies=True) is not None
    finally:
        child.wait()
    assert procinfo.identity(child.pid) is None  # reaped: gone


# -- locks -----------------------------------------------------------------------

def test_lock_timeouts_are_finite(tmp_path: Path):
    with pytest.raises(ValueError):
        locks.acquire(tmp_path / "x.lock", timeout=-1)


def test_a_lock_held_by_another_process_is_busy_then_free(tmp_path: Path):
    path = tmp_path / "held.lock"
    holder = subprocess.Popen([PYTHON, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert locks.try_acquire(path) is None
        with pytest.raises(locks.LockBusy) as err:
            locks.acquire(path, timeout=0.1)
        assert str(path) in str(err.value)
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    lock = locks.try_acquire(path)
    assert lock is not None and lock.is_locked
    lock.release()
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
