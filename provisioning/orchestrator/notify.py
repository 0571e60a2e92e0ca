"""systemd readiness (sd_notify(3)) with the standard library only.

`READY=1` is one datagram to the unix socket named in $NOTIFY_SOCKET; a name
starting with "@" is in the abstract namespace (a leading NUL byte).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

_address: str | None = None


def take_notify_socket() -> str | None:
    """Read $NOTIFY_SOCKET once and remove it from the environment, so task
    processes we spawn never talk to systemd in our name."""
    global _address
    value = os.environ.pop("NOTIFY_SOCKET", None)
    if value:
        _address = value
    return _address


def sd_notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1") to systemd; False when not under systemd.

    Never raises: a notification that cannot be sent is logged, the daemon
    keeps running (systemd then times the start out on its own).
    """
    address = _address or take_notify_socket()
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", _address, e)
        return False
