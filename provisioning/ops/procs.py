"""Processes we started (services): stop exactly them; their health checks.

A pid alone may have been reused by the time we look: a service's record is
provisioning.procinfo's identity (pid + create time), and nothing is
signalled before procinfo confirms it is still that process.

psutil is imported in each function that uses it (lazy): it costs ~20 ms,
and `server list` with nothing recorded never needs it (bench/cli_start.py).
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

from provisioning import procinfo
from provisioning.polling import wait_until


def stop(rec: dict[str, Any], grace: float = 5.0) -> bool:
    """SIGTERM the recorded process (and its children), SIGKILL after `grace`.

    Returns True when something of ours was running and is now gone.
    """
    import psutil  # lazy: see the module docstring

    p = procinfo.same_process(rec.get("pid"), rec.get("create_time"))
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
    left = list(procs_)

    def all_gone() -> bool:
        left[:] = [p for p in left if not _gone(p)]
        return not left

    wait_until(all_gone, timeout, max_delay=0.2)
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
    """Probe with backoff until healthy or the deadline passes; the last probe's answer."""
    last: list[tuple[bool, str]] = []

    def healthy() -> bool:
        last[:] = [check_once(kind, address, port, **kw)]
        return last[0][0]

    wait_until(healthy, deadline_s, first_delay=0.05, max_delay=1.0)
    return last[0]
