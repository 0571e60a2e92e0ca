"""The Provider interface: what a place that hosts servers must offer.

A provider creates, deletes, lists and reports on servers, runs a command on
one (an argv list, never a shell string) and copies a file to one. It keeps
its own state under `<data>/state/<provider name>/`; the server records the
business logic keeps (StateStore) hold whatever `create_server` returns.
"""

from __future__ import annotations

import abc
import subprocess
from pathlib import Path
from typing import Any

from provisioning.ops.state import StateStore


class Provider(abc.ABC):
    """One provider bound to one infra (name + provider settings)."""

    name: str = ""

    def __init__(self, *, infra: str, settings: dict[str, Any], state: StateStore):
        self.infra = infra
        self.settings = settings
        self.state = state

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> list[str]:
        """Problems with the infra's [provider] table, each naming the key."""
        return []

    @abc.abstractmethod
    def create_server(self, server: Any) -> tuple[dict[str, Any], bool]:
        """Create (or find) the server for a ServerDef. Returns (record, created).

        The record must hold at least hostname, address, root. Creating an
        existing server returns its record and created=False.
        """

    @abc.abstractmethod
    def delete_server(self, hostname: str) -> bool:
        """Remove the server and everything on it. False when it did not exist."""

    @abc.abstractmethod
    def list_servers(self) -> list[str]:
        """Hostnames that exist on the provider for this infra."""

    @abc.abstractmethod
    def status(self, hostname: str) -> str:
        """'running', 'stopped' or 'missing'."""

    @abc.abstractmethod
    def run(self, hostname: str, argv: list[str], *, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run argv on the server; output captured, never raises on a non-zero exit."""

    @abc.abstractmethod
    def copy_file(self, hostname: str, src: Path, dest: str, *, mode: int = 0o600) -> None:
        """Copy a local file to `dest` (relative to the server's root)."""

    def remove_path(self, hostname: str, dest: str) -> None:
        """Remove a file or directory (relative to the server's root), if present."""
        self.run(hostname, ["rm", "-rf", "--", dest])

    def port_offset(self, record: dict[str, Any]) -> int:
        """Added to every declared taskserv port (providers sharing one address)."""
        return int(record.get("port_offset", 0))
