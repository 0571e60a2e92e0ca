"""The Provider interface: what a place that hosts servers must offer.

A provider creates, deletes, lists and reports on servers, runs a command on
one (an argv list, never a shell string) and copies a file to one. It keeps
its own state under `<data>/state/<provider name>/`; the server records the
business logic keeps (StateStore) hold whatever `create_server` returns.

Adding a provider (say `hetzner`), in one module `ops/providers/hetzner.py`
registered in `providers.BUILTIN` (or as an extension folder, see
providers/__init__.py):

- `validate_settings(settings)`: the infra's [provider] table, checked with
  no network and no SDK import (it runs at every load of the infra, in the
  CLI). Name the key in each problem.
- `create_server(server)` -> (record, created). Must be idempotent and
  crash-safe, since a task can be killed at any point and run again:
  1. look the server up first (`find_server`: on a cloud, by the tags or
     labels `provisioning:infra` = infra name and `provisioning:server` =
     hostname that every server it makes carries);
  2. if absent, derive a request token from (infra, hostname, generation),
     write it to the provider's state BEFORE the call (`self.state
     .provider_dir(self.name)`, atomic writes), and send it as the cloud's
     idempotency key when it has one (AWS `ClientToken`); the tags make the
     lookup of step 1 find a machine whose create answer was lost;
  3. wait for the state the next step needs, with a deadline (polling.py),
     reporting through `self.progress(percent, message)`;
  4. return the record: at least hostname, address, root, plus the cloud's
     id, addresses, ssh user (whatever `connection()` needs later).
  Errors are ProvisioningError with the cloud's error code and a plain
  reason; rate limits (429, throttling) are retried inside the call with
  capped, jittered backoff.
- `delete_server(hostname)`: destroy it and wait until it is gone; False
  (and no error) when it was already gone.
- `find_server`, `list_found`, `status`: READ ONLY. They back `--plan`
  (planner/plan.py) and drift in `server list` (`missing`, `orphan`,
  computed in ops/servers.py from `list_found`), so they must never change
  anything, and should be one cheap call per infra where the API allows.
- `connection(record)`: address/port/user/identity_file/host_key for
  provisioning.transport; `run`/`copy_file` go through that transport for
  real machines (only `local` runs things itself).
- Credentials: only from the cloud's usual places (environment, its config
  files), never the infra file, task params, the queue or logs. The task
  process environment is cleaned (engine/taskrun.py): name your variables'
  prefix in `providers.CREDENTIAL_ENV` so the launcher passes them through
  to this provider's tasks, and to no other task.
- SDKs are optional extras, imported inside methods (never at module
  level): the CLI imports this module to validate an infra.
"""

from __future__ import annotations

import abc
import subprocess
from collections.abc import Callable
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
        self.report: Any = None  # the op's OpContext while a task uses this provider

    def progress(self, percent: int, message: str) -> None:
        """A `PROGRESS:` line of the running task (nothing outside a task)."""
        if self.report is not None:
            self.report.progress(percent, message)

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
        """'running', 'stopped' or 'missing' (clouds may say their own state,
        e.g. 'pending'; 'missing' always means gone)."""

    def find_server(self, hostname: str) -> dict[str, Any] | None:
        """Read only: the provider's current record of this server (at least
        hostname, state, id if any, address), or None when it has none."""
        state = self.status(hostname)
        if state == "missing":
            return None
        record = self.state.server(self.infra, hostname) or {}
        return {"hostname": hostname, "state": state, "id": record.get("id"),
                "address": record.get("address")}

    def list_found(self) -> list[dict[str, Any]]:
        """Read only: every server the provider has for this infra (clouds:
        by tag/label provisioning:infra), each {"hostname", "state", "id"...}.
        Drift (`missing`, `orphan`) is computed from this by ops/, not here."""
        return [found for host in self.list_servers()
                if (found := self.find_server(host)) is not None]

    def connection(self, record: dict[str, Any]) -> dict[str, Any]:
        """Connection facts for provisioning.transport: {"address", "port",
        "user", "identity_file", "host_key"} (None where not applicable).
        The local provider returns {} (it is not reached over SSH)."""
        return {"address": record.get("address"), "port": record.get("port", 22),
                "user": record.get("ssh_user") or record.get("user"),
                "identity_file": record.get("identity_file"),
                "host_key": record.get("host_key")}

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


def settings_problems(settings: dict[str, Any], table: dict[str, Any], *,
                      credential: Callable[[str], str | None] | None = None) -> list[str]:
    """The [provider] keys checked against a provider's table, each problem naming the
    key: a value in `table` is a type (or tuple of types: bool is never an int) or a
    tuple of allowed strings; `credential(key)` says why a key may never be there."""
    problems = []
    for key, value in settings.items():
        refused = credential(key) if credential is not None and key not in table else None
        spec = table.get(key)
        if refused:
            problems.append(f"{key}: {refused}")
        elif spec is None:
            problems.append(f"{key}: unknown key (known: {', '.join(table)})")
        elif isinstance(spec, tuple) and all(isinstance(v, str) for v in spec):
            if value not in spec:
                problems.append(f"{key} must be one of {', '.join(spec)}, got {value!r}")
        elif not isinstance(value, spec) or isinstance(value, bool) != (spec is bool):
            expected = " or ".join(t.__name__ for t in (spec if isinstance(spec, tuple)
                                                        else (spec,)))
            problems.append(f"{key}: wrong type, got {value!r} ({expected} expected)")
    return problems
