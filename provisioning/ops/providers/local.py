"""The `local` provider: a server is a sandbox on this machine.

Each server gets a root directory `<data>/state/local/<infra>/<hostname>/`
(etc/, srv/, var/, log/, run/, opt/) and its own loopback address. On Linux
all of 127.0.0.0/8 reaches the loopback interface, so every server gets its
own 127.x.y.z; elsewhere (macOS only answers on 127.0.0.1 unless aliases are
configured) servers share 127.0.0.1 and each gets a distinct port offset
that is added to its taskservs' ports. `loopback = "shared"` in the infra's
[provider] table forces the second scheme on Linux too.

Addresses are derived from a hash of (data dir, infra, hostname), so they
are stable across re-creation and two data dirs (tests, a quickstart, a
system install) rarely pick the same one; uniqueness inside one data dir is
guaranteed by the allocation table `<data>/state/local/addresses.json`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisioningError
from provisioning.fsutil import atomic_write_json, ensure_private_dir, read_json
from provisioning.ops.providers.base import Provider, settings_problems
from provisioning.ops.state import hold_lock

SUBDIRS = ("etc", "srv", "var", "log", "run", "opt")
SETTINGS = {"loopback": ("auto", "shared")}
OFFSET_STEP = 10
OFFSET_SLOTS = 2000  # offsets 0..19990: declared ports stay below 65536 for ports < 45000


class LocalProvider(Provider):
    name = "local"
    host_python = sys.executable  # a taskserv's python3 here: the tool's own interpreter

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> list[str]:
        return settings_problems(settings, SETTINGS)

    # -- locations -------------------------------------------------------
    @property
    def base(self) -> Path:
        return self.state.provider_dir(self.name)

    def root(self, hostname: str) -> Path:
        return self.base / self.infra / hostname

    def _table_file(self) -> Path:
        return self.base / "addresses.json"

    # -- address allocation -----------------------------------------------
    def _shared(self) -> bool:
        if self.settings.get("loopback") == "shared" or not sys.platform.startswith("linux"):
            return True
        return False

    def _allocate(self, hostname: str) -> dict[str, Any]:
        """Address and port offset for a server, recorded under the table's lock."""
        key = f"{self.infra}/{hostname}"
        with hold_lock(self.state.state_dir / "locks" / "local-addresses.lock"):
            try:
                table = read_json(self._table_file())
            except (OSError, ValueError):
                table = {}
            if key in table:
                return table[key]
            digest = hashlib.sha256(f"{self.state.data_dir}|{key}".encode()).digest()
            used_addr = {v["address"] for v in table.values() if v.get("port_offset") == 0}
            used_off = {v["port_offset"] for v in table.values()
                        if v["address"] == "127.0.0.1"}
            entry = None
            if not self._shared():
                for probe in range(4096):
                    n = int.from_bytes(digest[:3], "big") + probe
                    a, b, c = 16 + (n >> 16) % 224, (n >> 8) % 256, 1 + n % 254
                    address = f"127.{a}.{b}.{c}"
                    if address not in used_addr and _bindable(address):
                        entry = {"address": address, "port_offset": 0}
                        break
            if entry is None:  # shared 127.0.0.1: distinct port offsets instead
                start = int.from_bytes(digest[3:5], "big") % OFFSET_SLOTS
                for probe in range(OFFSET_SLOTS):
                    offset = OFFSET_STEP * (1 + (start + probe) % (OFFSET_SLOTS - 1))
                    if offset not in used_off:
                        entry = {"address": "127.0.0.1", "port_offset": offset}
                        break
            if entry is None:
                raise ProvisioningError("local provider: no free loopback address or port "
                                        "offset left in this data dir")
            table[key] = entry
            ensure_private_dir(self.base)
            atomic_write_json(self._table_file(), table)
            return entry

    def _release(self, hostname: str) -> None:
        key = f"{self.infra}/{hostname}"
        with hold_lock(self.state.state_dir / "locks" / "local-addresses.lock"):
            try:
                table = read_json(self._table_file())
            except (OSError, ValueError):
                return
            if table.pop(key, None) is not None:
                atomic_write_json(self._table_file(), table)

    # -- the interface ------------------------------------------------------
    def create_server(self, server: Any) -> tuple[dict[str, Any], bool]:
        existing = self.state.server(self.infra, server.hostname)
        root = self.root(server.hostname)
        if existing and root.is_dir():
            return existing, False
        entry = self._allocate(server.hostname)
        for d in (self.base, self.base / self.infra, root):  # parents too: all 0700
            ensure_private_dir(d)
        for sub in SUBDIRS:
            ensure_private_dir(root / sub)
        record = {
            "hostname": server.hostname, "infra": self.infra, "provider": self.name,
            "address": entry["address"], "port_offset": entry["port_offset"],
            "root": str(root), "plan": server.plan, "zone": server.zone,
            "labels": dict(server.labels), "taskservs": list(server.taskservs),
            "created_at": time.time(),
        }
        return record, True

    def delete_server(self, hostname: str) -> bool:
        root = self.root(hostname)
        existed = root.exists()
        if existed:
            shutil.rmtree(root)
        self._release(hostname)
        infra_dir = self.base / self.infra
        try:
            infra_dir.rmdir()  # only when it was the last server of the infra
        except OSError:
            pass
        return existed

    def list_servers(self) -> list[str]:
        d = self.base / self.infra
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def status(self, hostname: str) -> str:
        return "running" if self.root(hostname).is_dir() else "missing"

    def find_server(self, hostname: str) -> dict[str, Any] | None:
        root = self.root(hostname)
        if not root.is_dir():
            return None
        record = self.state.server(self.infra, hostname) or {}
        return {"hostname": hostname, "state": "running", "id": str(root),
                "address": record.get("address"), "root": str(root)}

    def list_found(self) -> list[dict[str, Any]]:
        return [f for h in self.list_servers() if (f := self.find_server(h)) is not None]

    def connection(self, record: dict[str, Any]) -> dict[str, Any]:
        return {}  # a sandbox on this machine: run() and copy_file() reach it directly

    # Not PROVISIONING_SERVER_*: that prefix is the [server] config section
    # (env layer), and a nested `provisioning` call would reject it.
    def _env(self, hostname: str, extra: dict[str, str] | None) -> dict[str, str]:
        record = self.state.server(self.infra, hostname) or {}
        keep = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "PYTHONPATH", "SYSTEMROOT")
        env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}
        env.update({
            "PROVISIONING_HOST_NAME": hostname,
            "PROVISIONING_HOST_ROOT": str(self.root(hostname)),
            "PROVISIONING_HOST_ADDRESS": str(record.get("address", "127.0.0.1")),
            "PROVISIONING_INFRA": self.infra,
        })
        env.update(extra or {})
        return env

    def run(self, hostname: str, argv: list[str], *, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float | None = None
            ) -> subprocess.CompletedProcess[str]:
        root = self.root(hostname)
        if not root.is_dir():
            raise ProvisioningError(f"server '{hostname}' does not exist on provider local")
        try:
            return subprocess.run(argv, cwd=root, env=self._env(hostname, env), input=input,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ProvisioningError(f"{argv[-1]} on '{hostname}' did not finish "
                                    f"within {timeout}s") from e
        except OSError as e:
            raise ProvisioningError(f"cannot run {argv[0]} on '{hostname}': {e}") from e

    def _inside(self, hostname: str, dest: str) -> Path:
        root = self.root(hostname).resolve()
        target = (root / dest).resolve()
        if target != root and root not in target.parents:
            raise ProvisioningError(f"path '{dest}' leaves the root of server '{hostname}'")
        return target

    def copy_file(self, hostname: str, src: Path, dest: str, *, mode: int = 0o600) -> None:
        target = self._inside(hostname, dest)
        ensure_private_dir(target.parent)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(src, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)

    def remove_path(self, hostname: str, dest: str) -> None:
        target = self._inside(hostname, dest)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _bindable(address: str) -> bool:
    """Can this machine bind the address (a 127/8 alias answers on Linux)?"""
    try:
        with socket.socket() as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False
