"""Business-logic state in the data dir: infras, servers, taskservs, clusters.

Layout (all JSON written atomically, files 0600, dirs 0700):

  <data>/state/infras/<infra>/infra.json                 name, path, provider
  <data>/state/infras/<infra>/servers/<host>.json        one server record
  <data>/state/infras/<infra>/taskservs/<host>/<ts>.json one installed taskserv
  <data>/state/infras/<infra>/clusters/<name>.json       one cluster record
  <data>/state/locks/<infra>[.<host>].lock               flock files (never removed)
  <data>/state/<provider>/...                            the provider's own state

Tasks run in their own processes (the daemon's or the CLI's children), so
every read-modify-write goes through a FileLock; records are whole files.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from provisioning import locks
from provisioning.config import load_config
from provisioning.fsutil import atomic_write_json, ensure_private_dir, read_json

SCHEMA = 1
LOCK_TIMEOUT_S = 120.0


def data_dir() -> Path:
    """The data dir the way tasks see it: env first (the executor sets it), then config."""
    env = os.environ.get("PROVISIONING_STORAGE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(load_config().storage.data_dir).expanduser()


def hold_lock(path: Path, timeout: float = LOCK_TIMEOUT_S):
    """`with hold_lock(path):` the state lock file `path` (its dir made first),
    through provisioning.locks; LockBusy (exit 1) after `timeout` s."""
    ensure_private_dir(path.parent)
    return locks.acquire(path, timeout)


class StateStore:
    """Records of one data dir. Cheap to create; holds no open files."""

    def __init__(self, root: Path | None = None):
        self.data_dir = Path(root) if root is not None else data_dir()
        self.state_dir = self.data_dir / "state"

    # -- locations -------------------------------------------------------
    def infra_dir(self, infra: str) -> Path:
        return self.state_dir / "infras" / infra

    def server_file(self, infra: str, host: str) -> Path:
        return self.infra_dir(infra) / "servers" / f"{host}.json"

    def taskserv_file(self, infra: str, host: str, taskserv: str) -> Path:
        return self.infra_dir(infra) / "taskservs" / host / f"{taskserv}.json"

    def cluster_file(self, infra: str, cluster: str) -> Path:
        return self.infra_dir(infra) / "clusters" / f"{cluster}.json"

    def provider_dir(self, provider: str) -> Path:
        return self.state_dir / provider

    def lock(self, infra: str, host: str | None = None):
        name = f"{infra}.{host}.lock" if host else f"{infra}.lock"
        return hold_lock(self.state_dir / "locks" / name)

    # -- generic record I/O ----------------------------------------------
    def _write(self, path: Path, record: dict[str, Any]) -> None:
        ensure_private_dir(path.parent)
        record = dict(record, schema=SCHEMA, updated_at=time.time())
        atomic_write_json(path, record)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            data = read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a torn or foreign file reads as absent; writers replace it
        return data if isinstance(data, dict) else None

    @classmethod
    def _read_all(cls, directory: Path) -> list[dict[str, Any]]:
        """Every readable record in `directory`, by file name; none if it is absent."""
        if not directory.is_dir():
            return []
        out = [cls._read(p) for p in sorted(directory.glob("*.json"))]
        return [r for r in out if r]

    @staticmethod
    def _remove(path: Path) -> bool:
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False

    # -- infras ----------------------------------------------------------
    def record_infra(self, name: str, path: str, provider: str,
                     provider_settings: dict[str, Any] | None = None) -> None:
        self._write(self.infra_dir(name) / "infra.json",
                    {"name": name, "path": path, "provider": provider,
                     "provider_settings": provider_settings or {}})

    def infra_record(self, name: str) -> dict[str, Any] | None:
        return self._read(self.infra_dir(name) / "infra.json")

    def infra_names(self) -> list[str]:
        base = self.state_dir / "infras"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def prune_infra(self, name: str) -> bool:
        """Remove the infra's state dir once no server or cluster is left in it."""
        d = self.infra_dir(name)
        if self.servers(name) or self.clusters(name):
            return False
        self._remove(d / "infra.json")
        # rmdir, never rmtree: a concurrent create's fresh record must survive.
        for sub in sorted(d.glob("**/*"), key=lambda p: len(p.parts), reverse=True):
            if sub.is_dir():
                try:
                    sub.rmdir()
                except OSError:
                    pass
        try:
            d.rmdir()
        except OSError:
            return False
        return True

    # -- servers ---------------------------------------------------------
    def save_server(self, infra: str, record: dict[str, Any]) -> None:
        self._write(self.server_file(infra, record["hostname"]), record)

    def server(self, infra: str, host: str) -> dict[str, Any] | None:
        return self._read(self.server_file(infra, host))

    def servers(self, infra: str) -> list[dict[str, Any]]:
        return self._read_all(self.infra_dir(infra) / "servers")

    def remove_server(self, infra: str, host: str) -> bool:
        removed = self._remove(self.server_file(infra, host))
        ts_dir = self.infra_dir(infra) / "taskservs" / host
        if ts_dir.exists():
            shutil.rmtree(ts_dir)
        return removed

    # -- taskservs -------------------------------------------------------
    def save_taskserv(self, infra: str, host: str, record: dict[str, Any]) -> None:
        self._write(self.taskserv_file(infra, host, record["name"]), record)

    def taskserv(self, infra: str, host: str, name: str) -> dict[str, Any] | None:
        return self._read(self.taskserv_file(infra, host, name))

    def taskservs(self, infra: str, host: str) -> list[dict[str, Any]]:
        return self._read_all(self.infra_dir(infra) / "taskservs" / host)

    def remove_taskserv(self, infra: str, host: str, name: str) -> bool:
        return self._remove(self.taskserv_file(infra, host, name))

    # -- clusters --------------------------------------------------------
    def save_cluster(self, infra: str, record: dict[str, Any]) -> None:
        self._write(self.cluster_file(infra, record["name"]), record)

    def cluster(self, infra: str, name: str) -> dict[str, Any] | None:
        return self._read(self.cluster_file(infra, name))

    def clusters(self, infra: str) -> list[dict[str, Any]]:
        return self._read_all(self.infra_dir(infra) / "clusters")

    def remove_cluster(self, infra: str, name: str) -> bool:
        return self._remove(self.cluster_file(infra, name))
