"""The API token, and the Host / Origin checks that keep browsers out.

The token is created at first start in the data dir (mode 0600) and must be
sent as `Authorization: Bearer <token>` on every route but /health. Host and
Origin must match exactly one of the names we serve (DNS rebinding and
cross-site `text/plain` posts would otherwise reach a loopback daemon).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from provisioning.errors import ConfigError
from provisioning.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def ensure_token(token_file: Path) -> str:
    """Return the API token, creating it (random, 0600, atomic) on first start."""
    try:
        token = read_token(token_file)
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        atomic_write_bytes(token_file, token.encode() + b"\n", mode=0o600)
        log.info("created API token file %s", token_file)
        return token
    st = token_file.stat()
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{token_file}: token file is owned by uid {st.st_uid}, not by us",
                          hint="remove it or run the orchestrator as its owner")
    if stat.S_IMODE(st.st_mode) & 0o077:
        # Someone loosened it; tighten rather than refuse (the token may have leaked: say so).
        os.chmod(token_file, 0o600)
        log.warning("%s was readable by others; mode reset to 0600 (consider deleting it "
                    "to rotate the token)", token_file)
    return token


def read_token(token_file: Path) -> str:
    """The token in `token_file`; FileNotFoundError if there is none yet."""
    token = token_file.read_text(encoding="utf-8").strip()
    if not token:
        raise ConfigError(f"{token_file}: token file is empty", hint="delete it and restart")
    return token


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison (hmac.compare_digest) of two tokens."""
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def allowed_host_values(port: int, extra_names: list[str], bind_host: str) -> frozenset[str]:
    """Exact `Host` header values we answer: loopback names and configured ones.

    A configured name without a port gets ours; one with a port is kept as is.
    On port 80 a bare name is also what clients send.
    """
    names = list(LOOPBACK_NAMES)
    if bind_host and bind_host not in ("0.0.0.0", "::", "127.0.0.1", "::1", "localhost"):
        names.append(f"[{bind_host}]" if ":" in bind_host else bind_host)
    values = set()
    for name in names + [n.strip() for n in extra_names if n.strip()]:
        name = name.lower()
        if _has_port(name):
            values.add(name)
            continue
        values.add(f"{name}:{port}")
        if port == 80:
            values.add(name)
    return frozenset(values)


def _has_port(name: str) -> bool:
    if name.startswith("["):
        return "]:" in name
    return name.count(":") == 1


def host_allowed(host_header: str | None, allowed: frozenset[str]) -> bool:
    return bool(host_header) and host_header.strip().lower() in allowed


def origin_allowed(origin: str | None, allowed: frozenset[str]) -> bool:
    """No Origin (curl, our client) is fine; a browser's must be one of ours exactly."""
    if origin is None:
        return True
    return origin.strip().lower() in {f"http://{h}" for h in allowed}
