"""Commands and files on a cloud server, over the SSH transport (DESIGN.md 11, 13).

The cloud providers (`aws`, `upcloud`) make the machine; what happens on it
afterwards (taskservs) goes through provisioning.transport like the `ssh`
provider's hosts: the record's public address, the image's `ssh_user`, the
[provider] `identity_file`. A new server's host key is not known before it
exists, so it is learned only as the infra says: a server's own `host_key`,
or `trust_on_first_use = true` in [provider]; else the first command fails
with the host named. The key is checked once per host and provider object
(one task), and the transport's master connection is shared by the tasks of
a workflow, so a workflow opens one SSH connection per server.

Commands run with the server's `root` (default "/") as working directory;
relative paths are under it, and no path may leave it.
"""

from __future__ import annotations

import posixpath
import subprocess
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisioningError, TransportError

IN_ROOT = 'cd "$1" || exit 125; shift; exec "$@"'


def path_in_root(record: dict[str, Any], dest: str) -> str:
    """`dest` under the server's root (relative or absolute), never outside it."""
    root = record.get("root") or "/"
    path = posixpath.normpath(posixpath.join(root, dest.lstrip("/")))
    if path != root.rstrip("/") and not path.startswith(root.rstrip("/") + "/"):
        raise ProvisioningError(f"path '{dest}' leaves the root of server "
                                f"'{record.get('hostname')}'")
    return path


def check_server(conn: dict[str, Any]) -> list[str]:
    """Problems with the keys of a cloud server's [[servers]] table that reach it."""
    problems = []
    for key in ("address", "port", "user", "identity_file"):
        if key in conn:
            problems.append(f"{key}: the cloud gives a server's address and port; set "
                            "ssh_user and identity_file in [provider]")
    root = conn.get("root", "/")
    if not root.startswith("/"):
        problems.append(f"root must be an absolute path, got {root!r}")
    if conn.get("host_key"):
        from provisioning.transport.hostkeys import normalize_key  # lazy: CLI start-up

        try:
            normalize_key(conn["host_key"])
        except TransportError as e:
            problems.append(e.message)
    return problems


class OnHost:
    """run/copy_file/remove_path for providers whose servers are machines on a cloud.

    Needs from the provider: `infra`, `settings`, `state`, `connection(record)`.
    """

    infra: str
    settings: dict[str, Any]
    state: Any

    def connection(self, record: dict[str, Any]) -> dict[str, Any]:  # the provider's
        raise NotImplementedError

    def _on_host(self, hostname: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """(transport, connection facts, record) of a recorded server, its host key
        checked (learned first when the infra trusts on first use)."""
        if getattr(self, "_ssh", None) is None:
            from provisioning.transport import Transport  # lazy: only tasks on a server

            timeout = int(self.settings.get("connect_timeout", 10))
            self._ssh = Transport(self.state.data_dir, connect_timeout=timeout)
            self._keys_checked: set[str] = set()
        record = self.state.server(self.infra, hostname)
        if record is None:
            raise ProvisioningError(f"server '{hostname}' is not recorded in infra "
                                    f"{self.infra}", hint=f"provisioning server create "
                                    f"{hostname}")
        if not record.get("address"):
            raise ProvisioningError(f"server '{hostname}' has no address to reach it at "
                                    "(the cloud gave it no public or private IPv4)")
        conn = {"hostname": hostname, **self.connection(record)}
        if hostname not in self._keys_checked:
            self._ssh.learn_host_key(conn, bool(self.settings.get("trust_on_first_use")))
            self._keys_checked.add(hostname)
        return self._ssh, conn, record

    def forget_host_key(self, hostname: str) -> None:
        """Drop the deleted server's key from our known_hosts: a cloud gives its
        address to the next machine, whose key differs (learned again as above)."""
        record = self.state.server(self.infra, hostname) or {}
        if record.get("address"):
            from provisioning.transport.hostkeys import KnownHosts, host_pattern  # lazy

            KnownHosts(Path(self.state.data_dir) / "ssh").replace(
                host_pattern(str(record["address"]), int(record.get("port") or 22)), [])

    def run(self, hostname: str, argv: list[str], *, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float | None = None
            ) -> subprocess.CompletedProcess[str]:
        ssh, conn, record = self._on_host(hostname)
        root = record.get("root") or "/"
        full_env = {"PROVISIONING_HOST_NAME": hostname, "PROVISIONING_HOST_ROOT": root,
                    "PROVISIONING_HOST_ADDRESS": str(record.get("address")),
                    "PROVISIONING_INFRA": self.infra, **(env or {})}
        return ssh.run(conn, ["sh", "-c", IN_ROOT, "sh", root, *argv], input=input,
                       env=full_env, timeout=timeout)

    def copy_file(self, hostname: str, src: Path, dest: str, *, mode: int = 0o600) -> None:
        ssh, conn, record = self._on_host(hostname)
        ssh.copy(conn, src, path_in_root(record, dest), mode=mode)

    def remove_path(self, hostname: str, dest: str) -> None:
        _, _, record = self._on_host(hostname)
        path = path_in_root(record, dest)
        proc = self.run(hostname, ["rm", "-rf", "--", path])
        if proc.returncode != 0:
            raise TransportError(f"{hostname}: removing {path} failed: "
                                 f"{proc.stderr.strip()[-200:]}")
