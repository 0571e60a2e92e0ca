"""Finding and killing a task's process tree.

A task runs in its own session, so one killpg reaches most of it. What killpg
misses: descendants that called setsid; what psutil's children() misses:
orphans reparented to init (giampaolo/psutil#2534). So every task process
carries a marker in the environment, inherited by all descendants, and the
sweep also kills our own processes carrying it (the trick Jenkins'
ProcessTreeKiller uses). The marker is ``<task key>/<run id>``
(PROVISIONING_TASK_RUN): recovery kills every run of a task it takes over,
whoever started it; a running task's own timeout, cancel or shutdown kills
only ITS run (two daemons on one host and one database: a daemon whose lease
ran out must not kill the run of the daemon that took the task over).
Never signal a pid without checking its create time: pids are reused.
"""

from __future__ import annotations

import os
import secrets
import signal
from typing import Any

import psutil

from provisioning import procinfo
from provisioning.polling import wait_until

MARKER_ENV = "PROVISIONING_TASK_RUN"  # "<key>/<run id>": every descendant inherits it
LEGACY_MARKER_ENV = "PROVISIONING_TASK_ID"  # the key alone, as earlier releases marked


def run_marker(key: str) -> str:
    """A fresh marker for one run of the task ``key``."""
    return f"{key}/{secrets.token_hex(8)}"


def tree_processes(pid: int | None, create_time: float | None, key: str,
                   run: str | None = None) -> list:
    """Processes of a task: the main one (if it is still the same process), its
    descendants, and any process of ours carrying the task's marker (of the
    run ``run`` only, when given)."""
    found: dict[int, Any] = {}
    if pid is not None:
        try:
            # No create time: our own child, not reaped yet, so the pid is still ours.
            main = psutil.Process(pid) if create_time is None else \
                procinfo.same_process(pid, create_time, zombies=True)
            if main is not None:
                found[main.pid] = main
                for c in main.children(recursive=True):
                    found[c.pid] = c
        except psutil.Error:
            pass
    for p in marked_processes({key}, run=run).get(key, []):
        found.setdefault(p.pid, p)
    found.pop(os.getpid(), None)
    return list(found.values())


def marked_processes(keys: set[str], run: str | None = None) -> dict[str, list]:
    """Our processes whose environment marks them as a run of one of the task
    keys (Jenkins' ProcessTreeKiller trick): finds descendants that escaped the
    group and tree. ``run``: only those of that run (its full marker)."""
    uid = os.getuid()
    me = os.getpid()
    out: dict[str, list] = {}
    for p in psutil.process_iter(["uids"]):
        try:
            if p.pid == me or p.info["uids"] is None or p.info["uids"].real != uid:
                continue
            env = p.environ()
        except (psutil.Error, OSError):
            continue
        marker = env.get(MARKER_ENV)
        if run is not None:
            if marker == run:
                out.setdefault(run.rpartition("/")[0], []).append(p)
            continue
        key = marker.rpartition("/")[0] if marker else env.get(LEGACY_MARKER_ENV)
        if key in keys:
            out.setdefault(key, []).append(p)
    return out


def kill_tree(pid: int | None, create_time: float | None, key: str, grace: float) -> None:
    """Kill a task tree left by an earlier process (recovery): SIGTERM the group and
    the tree, wait up to `grace`, SIGKILL what is left, sweep by marker."""

    procs = tree_processes(pid, create_time, key)
    if not procs:
        return
    if pid is not None and any(p.pid == pid for p in procs):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        signal_quietly(p, signal.SIGTERM)
    alive = wait_gone(procs, grace)
    if pid is not None and any(p.pid == pid for p in procs):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in alive + tree_processes(None, None, key):
        signal_quietly(p, signal.SIGKILL)
    wait_gone(alive, grace)


def wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Wait up to `timeout` for `procs` to exit; return those still alive.

    Unlike psutil.wait_procs, a zombie counts as gone: the orphans of a dead
    daemon are reaped by pid 1, which in a container may take seconds (or
    never happen), and waiting for that only stalls recovery.
    """
    alive = [p for p in procs if _running(p)]

    def all_gone() -> bool:
        alive[:] = [p for p in alive if _running(p)]
        return not alive

    # Short rounds: a process that turns zombie is noticed promptly.
    wait_until(all_gone, timeout, first_delay=0.01, max_delay=0.05)
    return alive


def _running(p: Any) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_quietly(p: Any, sig: int) -> None:
    try:
        p.send_signal(sig)
    except (psutil.Error, OSError):
        pass
