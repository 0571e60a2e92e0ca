"""Is this still the same process? A pid plus its psutil create time.

Pids are reused, so a pid we recorded (a task's process, the daemon's
pidfile, a service an op started) is trusted only while the process with
that pid has the create time recorded with it. ``identity(pid)`` is what to
record; ``same_process`` / ``is_alive`` are the one check.

psutil is imported on first use: this module sits below the CLI, whose fast
path (``provisioning version``) must not pay for the C extension.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h

# One tolerance for every comparison of create times. On Linux psutil's
# create time is the boot time plus the process's start in clock ticks
# (1/100 s), so re-reading one process gives the same float; records that
# kept it rounded to 1/100 s (older ops records) are off by at most 0.005.
# 0.05 s covers that with margin, and a different process would have to have
# been started within 50 ms of the recorded one under the same pid, which
# needs the whole pid space to wrap in that time. Larger would only widen
# that window; smaller risks calling our own process foreign after rounding.
# (A clock step moves psutil's boot time, and with it every create time: then
# a recorded process looks foreign, the safe way round: we never signal it.)
CREATE_TIME_TOLERANCE = 0.05


def create_time(pid: int) -> float | None:
    """The create time of live process ``pid``, or None (gone, not visible)."""
    import psutil  # lazy: see the module docstring

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def identity(pid: int) -> dict[str, Any] | None:
    """``{"pid", "create_time"}`` of a live process, to record; None if it is gone."""
    started = create_time(pid)
    return None if started is None else {"pid": pid, "create_time": started}


def same_create_time(a: float, b: float) -> bool:
    return abs(a - b) <= CREATE_TIME_TOLERANCE


def same_process(pid: Any, recorded_create_time: Any, *, zombies: bool = False):
    """The psutil.Process ``pid`` if it is the process recorded with
    ``recorded_create_time``, else None: gone, a reused pid, no create time
    recorded (nothing proves it is ours), or a zombie unless ``zombies``."""
    import psutil  # lazy: see the module docstring

    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if not isinstance(recorded_create_time, (int, float)) or not recorded_create_time:
        return None
    try:
        proc = psutil.Process(pid)
        if not same_create_time(proc.create_time(), float(recorded_create_time)):
            return None
        if not zombies and proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def is_alive(record: dict[str, Any] | None) -> bool:
    """True while the process of an ``identity()`` record runs (a zombie has exited)."""
    if not isinstance(record, dict):
        return False
    return same_process(record.get("pid"), record.get("create_time")) is not None


def die_with_parent(parent_pid: int) -> bool:
    """Have the kernel SIGKILL this process the moment its parent dies
    (Linux PR_SET_PDEATHSIG), so a helper child (the record writer, the
    zygote) never outlives a kill -9 of the daemon; exit at once if
    ``parent_pid`` is already gone (it died before that took effect). False
    where the kernel cannot: the caller notices its parent's end itself (end
    of input). PDEATHSIG follows the parent THREAD that started the child."""
    followed = False
    if sys.platform.startswith("linux"):
        import ctypes  # lazy: only the helper children that call this need it

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL),
                                                    0, 0, 0)
            followed = True
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(0)
    return followed
