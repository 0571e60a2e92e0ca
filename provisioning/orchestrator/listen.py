"""Where the daemon listens: the loopback-only bind rule and the address clients use.

Light on purpose (stdlib only): `provisioning-orchestrator --check` and the
pidfile code use it without loading the daemon's engine or HTTP server.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import TYPE_CHECKING

from provisioning.errors import ConfigError, ProvisioningError

if TYPE_CHECKING:
    from provisioning.config import Config


def check_bind_allowed(config: Config) -> None:
    """Refuse a non-loopback bind unless server.allow_remote is set explicitly."""
    host = config.server.host
    if config.server.allow_remote or is_loopback(host):
        return
    raise ConfigError(
        f"{config.sources.get('server.host', 'config')}: server.host = {host!r} is not a "
        "loopback address; refusing to expose the API",
        hint="bind 127.0.0.1, or set server.allow_remote = true (and protect the token)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def endpoint_host(bind_host: str) -> str:
    """The address clients (and our own tasks) use to reach a server bound to bind_host."""
    if bind_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind_host == "::":
        return "[::1]"
    return f"[{bind_host}]" if ":" in bind_host else bind_host


def port_in_use_error(config: Config, error: OSError) -> ProvisioningError:
    where = f"{config.server.host}:{config.server.port}"
    if error.errno == errno.EADDRINUSE:
        return ProvisioningError(f"cannot listen on {where}: address already in use",
                                 hint="another program uses that port: set server.port")
    return ProvisioningError(f"cannot listen on {where}: {error.strerror or error}")
