"""Processes we started (services): identify by pid + create time, stop exactly them.

A pid alone may have been reused by the time we look; psutil's create_time
(rounded the same way on both sides) confirms the process is the one we
recorded before anything is signalled.

psutil is imported in each function that uses it (lazy): it costs ~20 ms,
and `server list` with nothing recorded never needs it (bench/cli_start.py).
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Any


def identify(pid: int) -> dict[str, Any] | None:
    """{"pid", "create_time"} of a live process, or None."""
    import psutil  # lazy: see the module docstring

    try:
        return {"pid": pid, "create_time": round(psutil.Process(pid).create_time(), 2)}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _process(rec: dict[str, Any]):
    import psutil  # lazy: see the module docstring

    try:
        p = psutil.Process(int(rec["pid"]))
        if round(p.create_time(), 2) != round(float(rec["create_time"]), 2):
            return None  # the pid was reused: not ours
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError, ValueError):
        return None


def alive(rec: dict[str, Any]) -> bool:
    return _process(rec) is not None


def stop(rec: dict[str, Any], grace: float = 5.0) -> bool:
    """SIGTERM the recorded process (and its children), SIGKILL after `grace`.

    Returns True when something of ours was running and is now gone.
    """
    import psutil  # lazy: see the module docstring

    p = _process(rec)
    if p is None:
        return False
    try:
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for q in procs:
        try:
            q.terminate()
        except psutil.NoSuchProcess:
            pass
    left = _wait_gone(procs, grace)
    for q in left:
        try:
            q.kill()
        except psutil.NoSuchProcess:
            pass
    _wait_gone(left, grace)
    return True


def _gone(p) -> bool:
    import psutil  # lazy: see the module docstring

    try:
        # A zombie has exited: in a container whose init does not reap orphans
        # it may stay a zombie forever, and waiting for it would only stall.
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(procs_: list, timeout: float) -> list:
    """Poll (with backoff, up to `timeout`) until each process exited; the rest."""
    end = time.monotonic() + timeout
    delay = 0.01
    left = [p for p in procs_ if not _gone(p)]
    while left and time.monotonic() < end:
        time.sleep(min(delay, max(0.0, end - time.monotonic())))
        delay = min(delay * 2, 0.2)
        left = [p for p in left if not _gone(p)]
    return left


# -- health checks --------------------------------------------------------------

def check_once(kind: str, address: str, port: int, *, path: str = "/", send: str = "",
               expect: str = "", timeout: float = 2.0) -> tuple[bool, str]:
    """One health probe. (ok, detail)."""
    if kind == "tcp":
        try:
            with socket.create_connection((address, port), timeout=timeout) as s:
                if send:
                    s.sendall(send.encode())
                    reply = s.recv(4096).decode(errors="replace")
                    if expect and expect not in reply:
                        return False, f"tcp {address}:{port} answered {reply.strip()!r}"
            return True, f"tcp {address}:{port} ok"
        except OSError as e:
            return False, f"tcp {address}:{port}: {e}"
    url = f"http://{address}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http only
            body = resp.read(65536).decode(errors="replace")
            if expect and expect not in body:
                return False, f"GET {url}: page lacks {expect!r}"
            return True, f"GET {url}: {resp.status}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, f"GET {url}: {e}"


def wait_healthy(kind: str, address: str, port: int, *, deadline_s: float = 20.0,
                 **kw: Any) -> tuple[bool, str]:
    """Probe with backoff until healthy or the deadline passes."""
    end = time.monotonic() + deadline_s
    delay = 0.05
    while True:
        ok, detail = check_once(kind, address, port, **kw)
        if ok or time.monotonic() >= end:
            return ok, detail
        time.sleep(min(delay, max(0.0, end - time.monotonic())))
        delay = min(delay * 2, 1.0)
