"""The `ssh` provider: hosts that already exist (DESIGN.md 12).

`server create` adopts a host: it learns the host key (the server's
`host_key`, or `trust_on_first_use`), connects through provisioning.transport
and records facts (OS, architecture, CPUs, memory, Python if any) read by one
remote `sh -c` script. It never creates or destroys a machine: `server
delete` removes what we installed under `<root>/opt/provisioning/taskservs`
and forgets the host. Commands run with the server's root as working
directory; relative paths are under it.

Its own records: `<data>/state/ssh/<infra>/<hostname>.json`.
"""

from __future__ import annotations

import posixpath
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisioningError, TransportError
from provisioning.fsutil import atomic_write_json, ensure_private_dir, read_json
from provisioning.ops.providers.base import Provider, settings_problems
from provisioning.ops.providers.onhost import IN_ROOT, path_in_root
from provisioning.transport import Transport
from provisioning.transport.hostkeys import normalize_key

SETTINGS = {"user": str, "identity_file": str, "trust_on_first_use": bool,
            "connect_timeout": int}
TASKSERVS_DIR = "opt/provisioning/taskservs"
FACTS_TIMEOUT_S = 60

# POSIX sh: a host needs no Python. One `key=value` per line.
FACTS = r"""
os=$( (. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") || uname -s)
echo "os=$os"
echo "kernel=$(uname -sr)"
echo "arch=$(uname -m)"
echo "cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || echo 0)"
echo "memory_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)"
p=$(command -v python3 2>/dev/null || command -v python 2>/dev/null || true)
if [ -n "$p" ]; then
  echo "python=$("$p" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)"
  echo "python_path=$p"
fi
"""



def parse_facts(text: str) -> dict[str, Any]:
    raw = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def num(key: str) -> int:
        try:
            return int(raw.get(key, "0").strip() or 0)
        except ValueError:
            return 0

    return {"os": raw.get("os", "").strip(), "kernel": raw.get("kernel", "").strip(),
            "arch": raw.get("arch", "").strip(), "cpus": num("cpus"),
            "memory_mb": num("memory_kb") // 1024,
            "python": raw.get("python", "").strip() or None,
            "python_path": raw.get("python_path", "").strip() or None}


class SshProvider(Provider):
    name = "ssh"
    reads_hosts = True  # --plan reads what is installed from the host (installs.read_on_host)

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> list[str]:
        return settings_problems(settings, SETTINGS)

    @classmethod
    def validate_server(cls, conn: dict[str, Any]) -> list[str]:
        """Problems with one server's connection keys, each naming the key."""
        problems = []
        address = conn.get("address")
        if not address:
            problems.append('address is required for provider ssh (address = "10.0.0.11")')
        elif address.startswith("-") or any(c.isspace() for c in address):
            problems.append(f"address {address!r} is not a host name or IP address")
        port = conn.get("port", 22)
        if not 0 < port < 65536:
            problems.append(f"port must be 1..65535, got {port}")
        if conn.get("host_key"):
            try:
                normalize_key(conn["host_key"])
            except TransportError as e:
                problems.append(e.message)
        root = conn.get("root", "/")
        if not root.startswith("/"):
            problems.append(f"root must be an absolute path, got {root!r}")
        return problems

    # -- records -----------------------------------------------------------------
    @property
    def transport(self) -> Transport:
        return Transport(self.state.data_dir,
                         connect_timeout=int(self.settings.get("connect_timeout", 10)))

    def _record_file(self, hostname: str) -> Path:
        return self.state.provider_dir(self.name) / self.infra / f"{hostname}.json"

    def _own(self, hostname: str) -> dict[str, Any] | None:
        try:
            return read_json(self._record_file(hostname))
        except (OSError, ValueError):
            return None

    def _record(self, hostname: str) -> dict[str, Any]:
        record = self._own(hostname)
        if record is None:
            raise ProvisioningError(f"server '{hostname}' is not adopted by provider ssh "
                                    f"(infra {self.infra})",
                                    hint=f"provisioning server create {hostname}")
        return record

    def connection(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"hostname": record.get("hostname"), "address": record.get("address"),
                "port": int(record.get("port") or 22),
                "user": record.get("user") or self.settings.get("user"),
                "identity_file": record.get("identity_file")
                or self.settings.get("identity_file"),
                "host_key": record.get("host_key")}

    def _tofu(self) -> bool:
        return bool(self.settings.get("trust_on_first_use", False))

    # -- the interface ------------------------------------------------------------
    def create_server(self, server: Any) -> tuple[dict[str, Any], bool]:
        existing = self._own(server.hostname)
        given = dict(getattr(server, "connection", {}) or {})
        if existing and existing.get("address") == given.get("address"):
            return dict(self.state.server(self.infra, server.hostname) or existing), False
        record = {"hostname": server.hostname, "infra": self.infra, "provider": self.name,
                  "address": given.get("address"), "port": int(given.get("port", 22)),
                  "user": given.get("user"), "identity_file": given.get("identity_file"),
                  "host_key": given.get("host_key"),
                  "root": given.get("root", "/"), "port_offset": 0, "plan": server.plan,
                  "zone": server.zone, "labels": dict(server.labels),
                  "taskservs": list(server.taskservs)}
        conn = self.connection(record)
        self.transport.learn_host_key(conn, self._tofu())
        proc = self.transport.run(conn, ["sh", "-c", FACTS], timeout=FACTS_TIMEOUT_S)
        if proc.returncode != 0:
            raise TransportError(f"{server.hostname}: reading the host's facts failed "
                                 f"(exit {proc.returncode}): {proc.stderr.strip()[-200:]}")
        record.update(facts=parse_facts(proc.stdout), adopted_at=time.time(),
                      created_at=time.time())
        ensure_private_dir(self._record_file(server.hostname).parent)
        atomic_write_json(self._record_file(server.hostname), record)
        return record, True

    def delete_server(self, hostname: str) -> bool:
        record = self._own(hostname)
        if record is None:
            return False
        conn = self.connection(record)
        target = posixpath.join(record.get("root") or "/", TASKSERVS_DIR)
        proc = self.transport.run(conn, ["rm", "-rf", "--", target], timeout=FACTS_TIMEOUT_S)
        if proc.returncode != 0:
            raise TransportError(f"{hostname}: removing {target} failed: "
                                 f"{proc.stderr.strip()[-200:]}")
        self._record_file(hostname).unlink(missing_ok=True)
        try:
            self._record_file(hostname).parent.rmdir()
        except OSError:
            pass
        return True

    def list_servers(self) -> list[str]:
        d = self.state.provider_dir(self.name) / self.infra
        return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []

    def status(self, hostname: str) -> str:
        """'running' (answers), 'unreachable' (see status_reason) or 'missing'."""
        return self.status_detail(hostname)[0]

    def status_detail(self, hostname: str) -> tuple[str, str | None]:
        record = self._own(hostname)
        if record is None:
            return "missing", None
        try:
            self.transport.learn_host_key(self.connection(record), self._tofu())
            t = self.transport
            wait = t.connect_timeout + 2
            t.run(self.connection(record), ["true"], timeout=wait)
        except TransportError as e:
            if "did not finish" in e.message:  # a connection that stalled
                return "unreachable", f"{hostname} ({record.get('address')}): unreachable: " \
                    f"no answer within {wait}s"
            return "unreachable", e.message
        return "running", None

    def find_server(self, hostname: str) -> dict[str, Any] | None:
        record = self._own(hostname)
        if record is None:
            return None
        return {**record, "state": "adopted", "id": None}

    def list_found(self) -> list[dict[str, Any]]:
        out = []
        for host in self.list_servers():
            record = self._own(host) or {}
            state, reason = self.status_detail(host)
            out.append({"hostname": host, "state": state, "reason": reason, "id": None,
                        "address": record.get("address")})
        return out

    def probe(self, server: Any) -> tuple[str, str | None]:
        """Read only, for --plan: does a host not adopted yet answer? ('reachable', None)
        or ('unreachable', reason). Its key is checked against a throwaway known_hosts
        (learned as adoption would), so nothing of ours or the host's is changed."""
        given = dict(getattr(server, "connection", {}) or {})
        conn = self.connection({"hostname": server.hostname, **given})
        with tempfile.TemporaryDirectory(prefix="provisioning-probe-") as tmp:
            t = Transport(tmp, connect_timeout=self.transport.connect_timeout)
            try:
                t.learn_host_key(conn, self._tofu())
                t.run(conn, ["true"], timeout=t.connect_timeout + 2)
            except TransportError as e:
                if "did not finish" in e.message:
                    return "unreachable", f"{server.hostname} ({conn['address']}): " \
                        f"unreachable: no answer within {t.connect_timeout + 2}s"
                return "unreachable", e.message
            finally:
                t.close_all()
        return "reachable", None

    def masters_open(self) -> set[str]:
        """The adopted hosts with a master connection running (--plan closes the others
        it opened)."""
        return {h for h in self.list_servers()
                if self.transport.master_alive(self.connection(self._own(h) or {}))}

    def close_masters_except(self, keep: set[str]) -> None:
        for h in self.list_servers():
            if h not in keep:
                try:
                    self.transport.close_master(self.connection(self._own(h) or {}))
                except (TransportError, OSError, subprocess.TimeoutExpired):
                    pass

    def _path(self, record: dict[str, Any], dest: str) -> str:
        return path_in_root(record, dest)

    def run(self, hostname: str, argv: list[str], *, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float | None = None
            ) -> subprocess.CompletedProcess[str]:
        record = self._record(hostname)
        conn = self.connection(record)
        self.transport.learn_host_key(conn, self._tofu())
        full_env = {"PROVISIONING_HOST_NAME": hostname,
                    "PROVISIONING_HOST_ROOT": record.get("root") or "/",
                    "PROVISIONING_HOST_ADDRESS": str(record.get("address")),
                    "PROVISIONING_INFRA": self.infra, **(env or {})}
        root = record.get("root") or "/"
        return self.transport.run(conn, ["sh", "-c", IN_ROOT, "sh", root, *argv],
                                  input=input, env=full_env, timeout=timeout)

    def copy_file(self, hostname: str, src: Path, dest: str, *, mode: int = 0o600) -> None:
        record = self._record(hostname)
        conn = self.connection(record)
        self.transport.learn_host_key(conn, self._tofu())
        self.transport.copy(conn, src, self._path(record, dest), mode=mode)

    def remove_path(self, hostname: str, dest: str) -> None:
        record = self._record(hostname)
        path = self._path(record, dest)
        proc = self.run(hostname, ["rm", "-rf", "--", path])
        if proc.returncode != 0:
            raise TransportError(f"{hostname}: removing {path} failed: "
                                 f"{proc.stderr.strip()[-200:]}")

