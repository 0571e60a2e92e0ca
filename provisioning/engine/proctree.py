"""Finding and killing a task's process tree.

A task runs in its own session, so one killpg reaches most of it. What killpg
misses: descendants that called setsid; what psutil's children() misses:
orphans reparented to init (giampaolo/psutil#2534). So every task process
carries its key in the environment (PROVISIONING_TASK_ID, inherited by all
descendants) and the sweep also kills our own processes carrying it (the
trick Jenkins' ProcessTreeKiller uses). Never signal a pid without checking
its create time: pids are reused.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import psutil

from provisioning import procinfo
from provisioning.polling import wait_until

MARKER_ENV = "PROVISIONING_TASK_ID"  # every descendant inherits it; the sweep looks for it


def tree_processes(pid: int | None, create_time: float | None, key: str) -> list:
    """Processes of a task: the main one (if it is still the same process), its
    descendants, and any process of ours carrying the task's marker."""
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
    for p in marked_processes({key}).get(key, []):
        found.setdefault(p.pid, p)
    found.pop(os.getpid(), None)
    return list(found.values())


def marked_processes(keys: set[str]) -> dict[str, list]:
    """Our processes whose environment carries one of the task keys (Jenkins'
    ProcessTreeKiller trick): finds descendants that escaped the group and tree."""
    uid = os.getuid()
    me = os.getpid()
    out: dict[str, list] = {}
    for p in psutil.process_iter(["uids"]):
        try:
            if p.pid == me or p.info["uids"] is None or p.info["uids"].real != uid:
                continue
            value = p.environ().get(MARKER_ENV)
        except (psutil.Error, OSError):
            continue
        if value in keys:
            out.setdefault(value, []).append(p)
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
