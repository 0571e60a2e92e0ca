"""The `upcloud` provider: servers are UpCloud cloud servers (API 1.3).

    [infra]
    provider = "upcloud"
    [provider]
    zone = "fi-hel1"                                  # a server's own zone wins
    template = "Ubuntu Server 24.04 LTS (Noble Numbat)"   # title or storage UUID
    plan = "1xCPU-2GB"                                # a server's own plan wins
    ssh_user = "root"
    ssh_keys = ["ssh-ed25519 AAAA... ops"]
    endpoint_url = ""                                 # a private or test endpoint

Every server carries the labels provisioning:infra=<infra> and
provisioning:server=<hostname>; create looks it up by them first, so a
task re-run after a crash (daemon killed after the request, before the
answer) finds the half-made server instead of making another. UpCloud has
no client token: the label lookup is the idempotency key, and the per-host
state lock keeps two creates of one host from racing. Create waits
`maintenance` -> `started` (POST answers 202 while the server is built);
delete stops it, waits `stopped`, then deletes it with its storages,
retrying SERVER_STATE_ILLEGAL while the stop lands.

Credentials: UPCLOUD_TOKEN, or UPCLOUD_USERNAME/UPCLOUD_PASSWORD, from the
environment only (upcloud_api.py). The HTTP client is imported on first use:
loading an infra (the CLI) validates settings without it.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

from provisioning.errors import ProvisioningError, ValidationError
from provisioning.ops.providers.base import Provider, settings_problems
from provisioning.ops.providers.onhost import OnHost, check_server
from provisioning.polling import wait_until

LABEL_INFRA = "provisioning:infra"
LABEL_SERVER = "provisioning:server"
SETTINGS: dict[str, type | tuple[type, ...]] = {
    "zone": str, "template": str, "plan": str, "ssh_user": str, "ssh_keys": list,
    "storage_size": int, "storage_tier": str, "endpoint_url": str,
    "create_timeout_s": (int, float), "delete_timeout_s": (int, float),
    "identity_file": str, "trust_on_first_use": bool,
}
CREDENTIAL_KEYS = ("token", "username", "password", "api_token", "api_key")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DEFAULT_PLAN = "1xCPU-1GB"
PLACEHOLDER_PLAN, PLACEHOLDER_ZONE = "small", "local"  # ServerDef's defaults: "not given"


def label_problem(key: str, value: str) -> str | None:
    """UpCloud's label rules: key 2-32 printable ASCII, no leading '_'; value <= 255."""
    if not (2 <= len(key) <= 32) or not all(" " <= c <= "~" for c in key) or key[0] == "_":
        return (f"label key {key!r}: 2 to 32 printable ASCII characters, "
                "not starting with '_'")
    if len(value) > 255:
        return f"label {key!r}: the value is longer than 255 characters"
    return None


def _credential_key(key: str) -> str | None:
    if key.lower() in CREDENTIAL_KEYS:
        return ("credentials never go in the infra file; set UPCLOUD_TOKEN or "
                "UPCLOUD_USERNAME/UPCLOUD_PASSWORD in the environment")
    return None


class UpCloudProvider(OnHost, Provider):
    """Run/copy on a server: OnHost (onhost.py), over the SSH transport."""

    name = "upcloud"
    validate_server = staticmethod(check_server)  # a server's root / host_key

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> list[str]:
        problems = settings_problems(settings, SETTINGS, credential=_credential_key)
        if not settings.get("template"):
            problems.append("template is required (a template title or storage UUID)")
        if "ssh_keys" in settings and not all(isinstance(k, str) for k in settings["ssh_keys"]):
            problems.append("ssh_keys must be a list of public keys (strings)")
        if settings.get("endpoint_url"):
            from provisioning.ops.providers import upcloud_api  # lazy: urllib only when used

            problem = upcloud_api.check_endpoint(settings["endpoint_url"])
            if problem:
                problems.append(problem)
        return problems

    # -- the API, opened on first use -------------------------------------------
    @property
    def api(self):
        if getattr(self, "_api", None) is None:
            from provisioning.ops.providers import upcloud_api  # lazy: urllib, ssl

            auth, source = upcloud_api.credentials_from_env()
            self._api = upcloud_api.UpCloudAPI(self.settings.get("endpoint_url", ""),
                                               auth=auth, auth_source=source, log=_log)
        return self._api

    def _labels(self, hostname: str) -> dict[str, str]:
        return {LABEL_INFRA: self.infra, LABEL_SERVER: hostname}

    def _lookup(self, hostname: str) -> dict[str, Any] | None:
        """The cloud's server for this host (by its labels), details included."""
        found = self.api.list_servers(self._labels(hostname))
        if not found:
            return None
        if len(found) > 1:
            _log(f"warning: {len(found)} UpCloud servers carry the labels of {hostname}: "
                 + ", ".join(s.get("uuid", "?") for s in found) + "; using the first")
        return self.api.get_server(found[0]["uuid"])

    # -- create -----------------------------------------------------------------
    def create_server(self, server: Any) -> tuple[dict[str, Any], bool]:
        recorded = self.state.server(self.infra, server.hostname)
        cloud = self._lookup(server.hostname)
        if cloud is None:
            cloud = self._create(server)
        else:
            _progress(20, f"{server.hostname} exists on UpCloud ({cloud['uuid']}, "
                          f"{cloud.get('state')}): not creating another")
            if cloud.get("state") == "stopped":  # stopped by hand: create means running
                _progress(25, f"starting {server.hostname} ({cloud['uuid']})")
                self.api.start_server(cloud["uuid"])
        cloud = self._wait_state(cloud["uuid"], ("started",), self._timeout("create"),
                                 f"{server.hostname} to start", base=30, span=60)
        record = self._record(server, cloud)
        # created=False only when our record and the cloud agree; a server found by its
        # labels but not recorded (a crash between the request and the record) is adopted.
        same = recorded is not None and recorded.get("id") == record["id"]
        return (recorded if same else record), not same

    def _create(self, server: Any) -> dict[str, Any]:
        labels = {**dict(server.labels), **self._labels(server.hostname)}
        for key, value in labels.items():
            problem = label_problem(key, value)
            if problem:
                raise ValidationError(f"server {server.hostname}: {problem}")
        zone = self._zone(server)
        body: dict[str, Any] = {
            "zone": zone, "title": f"{self.infra}/{server.hostname}",
            "hostname": server.hostname, "plan": self._plan(server), "metadata": "yes",
            "labels": {"label": [{"key": k, "value": v} for k, v in labels.items()]},
            "storage_devices": {"storage_device": [{
                "action": "clone", "storage": self._template_uuid(),
                "title": f"{server.hostname}-disk", "size": self.settings.get("storage_size", 25),
                "tier": self.settings.get("storage_tier", "maxiops")}]},
            "login_user": {"username": self.settings.get("ssh_user", "root"),
                           "create_password": "no",
                           "ssh_keys": {"ssh_key": list(self.settings.get("ssh_keys", []))}},
        }
        _progress(15, f"creating {server.hostname} on UpCloud ({zone}, {body['plan']})")
        cloud = self.api.create_server(body)
        _progress(25, f"{server.hostname} accepted as {cloud.get('uuid')} "
                      f"({cloud.get('state')})")
        return cloud

    def _zone(self, server: Any) -> str:
        zone = server.zone if server.zone != PLACEHOLDER_ZONE else self.settings.get("zone")
        if not zone:
            raise ValidationError(f"server {server.hostname}: no zone (set zone for the "
                                  "server or in [provider])")
        return zone

    def _plan(self, server: Any) -> str:
        if server.plan != PLACEHOLDER_PLAN:
            return server.plan
        return self.settings.get("plan", DEFAULT_PLAN)

    def _template_uuid(self) -> str:
        template = self.settings["template"]
        if UUID_RE.match(template):
            return template
        known = self.api.templates()
        for t in known:
            if t.get("title") == template:
                return t["uuid"]
        titles = sorted(str(t.get("title")) for t in known)
        raise ProvisioningError(f"unknown UpCloud template {template!r}",
                                hint="templates: " + ", ".join(titles[:8])
                                + (" ..." if len(titles) > 8 else ""))

    def _timeout(self, op: str) -> float:
        return float(self.settings.get(f"{op}_timeout_s", 600))

    def _wait_state(self, uuid: str, states: tuple[str, ...], timeout: float, what: str,
                    *, base: int, span: int) -> dict[str, Any]:
        """Poll the server until it is in one of `states`; PROGRESS as it goes."""
        last: dict[str, Any] = {}
        start = time.monotonic()

        def reached():
            server = self.api.get_server(uuid)
            if server is None:
                raise ProvisioningError(f"UpCloud server {uuid} vanished while waiting for "
                                        f"{what}")
            last.update(server)
            spent = time.monotonic() - start
            _progress(base + int(span * min(1.0, spent / max(timeout, 1))),
                      f"waiting for {what}: {server.get('state')}")
            return server if server.get("state") in states else None

        done = wait_until(reached, timeout, first_delay=0.05, max_delay=3.0)
        if done is None:
            raise ProvisioningError(f"timed out after {timeout:.0f}s waiting for {what}: "
                                    f"UpCloud server {uuid} is {last.get('state')}",
                                    hint="the next attempt finds it by its labels")
        return done

    def _record(self, server: Any, cloud: dict[str, Any]) -> dict[str, Any]:
        from provisioning.ops.providers import upcloud_api  # lazy: see the api property

        addresses = [a for a in (cloud.get("ip_addresses") or {}).get("ip_address") or []]
        return {
            "hostname": server.hostname, "infra": self.infra, "provider": self.name,
            "id": cloud["uuid"], "uuid": cloud["uuid"],
            "address": upcloud_api.public_ipv4(cloud), "addresses": addresses,
            "ssh_user": self.settings.get("ssh_user", "root"), "port": 22,
            "root": server.connection.get("root", "/"),
            "host_key": server.connection.get("host_key"),
            "plan": cloud.get("plan", self._plan(server)), "zone": cloud.get("zone"),
            "state": cloud.get("state"), "labels": dict(server.labels),
            "taskservs": list(server.taskservs), "created_at": time.time(),
        }

    # -- delete -------------------------------------------------------------------
    def delete_server(self, hostname: str) -> bool:
        cloud = self._lookup(hostname)
        if cloud is None:
            _log(f"{hostname} is not on UpCloud (already gone); nothing to delete there")
            return False
        uuid, timeout = cloud["uuid"], self._timeout("delete")
        if cloud.get("state") not in ("started", "stopped"):
            cloud = self._wait_state(uuid, ("started", "stopped"), timeout,
                                     f"{hostname} to leave {cloud.get('state')}", base=80,
                                     span=2)
        if cloud.get("state") == "started":
            _progress(82, f"stopping {hostname} ({uuid})")
            self._retry_illegal(lambda: self.api.stop_server(uuid), timeout, f"stop {hostname}")
            self._wait_state(uuid, ("stopped",), timeout, f"{hostname} to stop", base=84,
                             span=5)
        _progress(90, f"deleting {hostname} ({uuid}) and its storage")
        self._retry_illegal(lambda: self.api.delete_server(uuid), timeout,
                            f"delete {hostname}")
        if wait_until(lambda: self.api.get_server(uuid) is None, timeout,
                      first_delay=0.05, max_delay=3.0) is None:
            raise ProvisioningError(f"UpCloud server {uuid} ({hostname}) still exists "
                                    f"{timeout:.0f}s after its delete")
        self.forget_host_key(hostname)  # the cloud hands the address to another machine
        return True

    def _retry_illegal(self, call: Any, timeout: float, what: str) -> None:
        """Run `call`, again while UpCloud answers SERVER_STATE_ILLEGAL (a stop landing)."""
        from provisioning.ops.providers.upcloud_api import UpCloudError  # lazy: see api

        errors: list[UpCloudError] = []

        def attempt():
            try:
                call()
                return True
            except UpCloudError as e:
                if e.status == 404:  # gone already (a delete that landed before a crash)
                    return True
                if e.code != "SERVER_STATE_ILLEGAL":
                    raise
                errors.append(e)
                _log(f"{what}: SERVER_STATE_ILLEGAL (attempt {len(errors)}), trying again")
                return False

        if wait_until(attempt, timeout, first_delay=0.2, max_delay=3.0) is None:
            raise errors[-1] if errors else ProvisioningError(f"{what}: timed out")

    # -- reads --------------------------------------------------------------------
    def find_server(self, hostname: str) -> dict[str, Any] | None:
        from provisioning.ops.providers import upcloud_api  # lazy: see the api property

        cloud = self._lookup(hostname)
        if cloud is None:
            return None
        return {"hostname": hostname, "state": cloud.get("state"), "id": cloud.get("uuid"),
                "address": upcloud_api.public_ipv4(cloud), "zone": cloud.get("zone"),
                "plan": cloud.get("plan")}

    def list_found(self) -> list[dict[str, Any]]:
        from provisioning.ops.providers import upcloud_api  # lazy: see the api property

        out = []
        for s in self.api.list_servers({LABEL_INFRA: self.infra}):
            host = upcloud_api.label_map(s).get(LABEL_SERVER) or s.get("hostname")
            out.append({"hostname": host, "state": s.get("state"), "id": s.get("uuid"),
                        "zone": s.get("zone"), "plan": s.get("plan")})
        return sorted(out, key=lambda s: str(s["hostname"]))

    def list_servers(self) -> list[str]:
        return sorted({str(s["hostname"]) for s in self.list_found()})

    def status(self, hostname: str) -> str:
        found = self.find_server(hostname)
        if found is None:
            return "missing"
        return "running" if found["state"] == "started" else "stopped"

    def connection(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"address": record.get("address"), "port": int(record.get("port", 22)),
                "user": record.get("ssh_user") or self.settings.get("ssh_user", "root"),
                "identity_file": self.settings.get("identity_file"),
                "host_key": record.get("host_key")}


def _progress(percent: int, message: str) -> None:
    """A task-protocol PROGRESS line (the provider runs inside a task process)."""
    print(f"PROGRESS: {max(0, min(100, percent))} {message}", flush=True)


def _log(message: str) -> None:
    print(message, file=sys.stdout, flush=True)
