"""The `aws` provider: a server is an EC2 instance (boto3, `provisioning[aws]`).

    [provider]
    region = "eu-north-1"
    image = "ami-..."          # required
    ssh_user = "ubuntu"
    key_name = "ops"           # optional; public_key_file imports it when missing
    identity_file = "~/.ssh/id_ed25519"   # for the transport; trust_on_first_use = true
    vpc_cidr / vpc_id, subnet_cidr / subnet_id, security_group_id, ssh_cidrs
    endpoint_url = ""          # optional: a private or test endpoint (moto)
    wait_timeout_s = 600

Every instance is tagged provisioning:infra / provisioning:server. Create
looks the server up by those tags first; if there is none it writes a client
token derived from (infra, hostname, generation) to the provider state
(`<data>/state/aws/<infra>/<host>.json`) BEFORE run_instances, so a task
killed after the request and before the answer finds the instance by its
tags on the next attempt, and AWS answers a repeat of the same request
with the same instance. The generation goes up when the server is deleted,
so a later re-create is a new request. See aws_api.py for credentials,
errors and throttling, aws_net.py for the network.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisioningError
from provisioning.fsutil import atomic_write_json, ensure_private_dir, read_json
from provisioning.ops.providers import aws_net
from provisioning.ops.providers.aws_api import Ec2, tags_of
from provisioning.ops.providers.base import Provider, settings_problems
from provisioning.ops.providers.onhost import OnHost, check_server
from provisioning.ops.state import hold_lock
from provisioning.polling import wait_until

TAG_SERVER = "provisioning:server"
LIVE = ("pending", "running", "stopping", "stopped")
FOUND = (*LIVE, "shutting-down")
SETTINGS: dict[str, type | tuple[type, ...]] = {
    "region": str, "image": str, "ssh_user": str, "key_name": str, "public_key_file": str,
    "endpoint_url": str, "vpc_id": str, "vpc_cidr": str, "subnet_id": str,
    "subnet_cidr": str, "security_group_id": str, "ssh_cidrs": list, "public_ip": bool,
    "wait_timeout_s": (int, float), "identity_file": str, "trust_on_first_use": bool}
SECRET_WORDS = re.compile(r"secret|access_key|token|password|credential", re.I)
EXCLUSIVE = (("vpc_id", "vpc_cidr"), ("subnet_id", "subnet_cidr"))


def _credential_key(key: str) -> str | None:
    if SECRET_WORDS.search(key):
        return ("credentials never go in the infra file; boto3 reads them from "
                "AWS_PROFILE / ~/.aws or the environment")
    return None


class AwsProvider(OnHost, Provider):
    validate_server = staticmethod(check_server)  # a server's root / host_key
    name = "aws"

    @classmethod
    def validate_settings(cls, settings: dict[str, Any]) -> list[str]:
        problems = settings_problems(settings, SETTINGS, credential=_credential_key)
        for key in ("region", "image"):
            if not settings.get(key):
                problems.append(f"{key} is required for provider aws")
        for a, b in EXCLUSIVE:
            if settings.get(a) and settings.get(b):
                problems.append(f"{a} and {b}: give one of them, not both")
        if settings.get("subnet_cidr") and not (settings.get("vpc_id")
                                                 or settings.get("vpc_cidr")):
            problems.append("subnet_cidr needs vpc_id or vpc_cidr")
        return problems

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.ec2 = Ec2(self.settings, log=self._log)

    def _log(self, message: str) -> None:
        if self.report is not None:
            self.report.log(message)

    # -- provider state: the client token, checkpointed before the call -----
    def _host_file(self, hostname: str) -> Path:
        return self.state.provider_dir(self.name) / self.infra / f"{hostname}.json"

    def _host_state(self, hostname: str) -> dict[str, Any]:
        try:
            data = read_json(self._host_file(hostname))
        except (OSError, ValueError):
            return {"generation": 1}
        return data if isinstance(data, dict) else {"generation": 1}

    def _save_host_state(self, hostname: str, data: dict[str, Any]) -> None:
        f = self._host_file(hostname)
        for d in (f.parent.parent, f.parent):
            ensure_private_dir(d)
        atomic_write_json(f, data)

    def client_token(self, hostname: str, *, next_generation: bool = False) -> str:
        """The run_instances ClientToken of this server's current generation,
        written to the provider state before it is ever sent."""
        st = self._host_state(hostname)
        if next_generation:
            st = {"generation": int(st.get("generation", 1)) + 1}
        if not st.get("client_token"):
            gen = int(st.get("generation", 1))
            digest = hashlib.sha256(f"{self.infra}|{hostname}|{gen}".encode()).hexdigest()
            st["client_token"] = f"prov-{digest[:48]}"  # AWS: at most 64 ASCII chars
            self._save_host_state(hostname, st)
        return str(st["client_token"])

    # -- reads ------------------------------------------------------------------
    def _instances(self, hostname: str | None = None) -> list[dict[str, Any]]:
        filters = [{"Name": "tag:provisioning:infra", "Values": [self.infra]},
                   {"Name": "instance-state-name", "Values": list(FOUND)}]
        if hostname:
            filters.append({"Name": f"tag:{TAG_SERVER}", "Values": [hostname]})
        return self.ec2.paginate("describe_instances", "Instances", Filters=filters)

    def _live(self, hostname: str) -> dict[str, Any] | None:
        live = [i for i in self._instances(hostname) if i["State"]["Name"] in LIVE]
        return sorted(live, key=lambda i: str(i.get("LaunchTime", "")))[0] if live else None

    @staticmethod
    def _found(inst: dict[str, Any]) -> dict[str, Any]:
        return {"hostname": tags_of(inst).get(TAG_SERVER, ""), "state": inst["State"]["Name"],
                "id": inst["InstanceId"],
                "address": inst.get("PublicIpAddress") or inst.get("PrivateIpAddress"),
                "plan": inst.get("InstanceType"),
                "zone": inst.get("Placement", {}).get("AvailabilityZone")}

    def find_server(self, hostname: str) -> dict[str, Any] | None:
        found = self._instances(hostname)
        live = [i for i in found if i["State"]["Name"] in LIVE] or found
        return self._found(live[0]) if live else None

    def list_found(self) -> list[dict[str, Any]]:
        return sorted((self._found(i) for i in self._instances()),
                      key=lambda f: (f["hostname"], f["id"]))

    def list_servers(self) -> list[str]:
        return sorted({f["hostname"] for f in self.list_found() if f["state"] in LIVE})

    def status(self, hostname: str) -> str:
        found = self.find_server(hostname)
        if found is None or found["state"] == "shutting-down":
            return "missing"
        return str(found["state"])

    # -- create -----------------------------------------------------------------
    def _run_args(self, server: Any, token: str, net: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        tags = [{"Key": "provisioning:infra", "Value": self.infra},
                {"Key": TAG_SERVER, "Value": server.hostname},
                {"Key": "Name", "Value": server.hostname}]
        tags += [{"Key": k, "Value": v} for k, v in server.labels.items()]
        args: dict[str, Any] = {
            "ImageId": s["image"], "InstanceType": server.plan, "MinCount": 1, "MaxCount": 1,
            "ClientToken": token, "TagSpecifications": [{"ResourceType": "instance",
                                                         "Tags": tags}]}
        if s.get("key_name"):
            args["KeyName"] = s["key_name"]
        if net.get("subnet_id"):  # the subnet decides the zone
            nic: dict[str, Any] = {"DeviceIndex": 0, "SubnetId": net["subnet_id"],
                                   "AssociatePublicIpAddress": bool(s.get("public_ip", True))}
            if net.get("security_group_ids"):
                nic["Groups"] = net["security_group_ids"]
            args["NetworkInterfaces"] = [nic]
        else:
            if net.get("security_group_ids"):
                args["SecurityGroupIds"] = net["security_group_ids"]
            if server.zone and server.zone != "local":
                args["Placement"] = {"AvailabilityZone": server.zone}
        return args

    def _launch(self, server: Any) -> str:
        """run_instances for a server the tags do not know; its instance id."""
        # one lock per infra: parallel creates share one network; a token written under
        # it tells a delete of the last server that this create needs the network
        with self._net_lock():
            net = aws_net.ensure(self.ec2, self.infra, self.settings)
            aws_net.ensure_key_pair(self.ec2, self.settings.get("key_name"),
                                    self.settings.get("public_key_file"))
            token = self.client_token(server.hostname)
        self.progress(20, f"run_instances {server.hostname} ({server.plan}, "
                          f"{self.settings['image']})")
        try:
            try:
                reply = self.ec2.call("run_instances", **self._run_args(server, token, net))
            except ProvisioningError as e:
                if getattr(e, "aws_code", "") != "IdempotentParameterMismatch":
                    raise
                # the token went out with other settings (an earlier failed attempt) and
                # nothing of it exists (the tags found none): a new generation, a new request
                token = self.client_token(server.hostname, next_generation=True)
                reply = self.ec2.call("run_instances", **self._run_args(server, token, net))
        except ProvisioningError as e:
            if getattr(e, "aws_code", ""):  # AWS said no: nothing was made, no create pends
                self._save_host_state(server.hostname, {"generation": int(
                    self._host_state(server.hostname).get("generation", 1))})
            raise
        iid = reply["Instances"][0]["InstanceId"]
        self._save_host_state(server.hostname, {**self._host_state(server.hostname),
                                                "instance_id": iid})
        return iid

    def _wait_state(self, iid: str, want: str, hostname: str) -> dict[str, Any] | None:
        timeout = float(self.settings.get("wait_timeout_s", 600))
        start = time.monotonic()
        seen: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            found = self.ec2.paginate("describe_instances", "Instances",
                                      Filters=[{"Name": "instance-id", "Values": [iid]}])
            inst = found[0] if found else {"State": {"Name": "terminated"}}
            state = inst["State"]["Name"]
            if state != seen.get("state"):
                self.progress(40 if want == "running" else 85,
                              f"{hostname} ({iid}) is {state} after "
                              f"{time.monotonic() - start:.0f}s")
                seen["state"] = state
            if want != "terminated" and state in ("terminated", "shutting-down"):
                reason = inst.get("StateReason", {}).get("Message", "")
                raise ProvisioningError(f"aws: instance {iid} of {hostname} went {state} "
                                        f"while starting: {reason or 'no reason given'}")
            return inst if state == want else None

        inst = wait_until(check, timeout, first_delay=1.0, max_delay=5.0)
        if inst is None:
            raise ProvisioningError(f"aws: {hostname} ({iid}) is still {seen.get('state')} "
                                    f"after {timeout:.0f}s (wait_timeout_s); it is tagged, "
                                    "the next create finds it")
        return inst

    def create_server(self, server: Any) -> tuple[dict[str, Any], bool]:
        known = self.state.server(self.infra, server.hostname)
        inst = self._live(server.hostname)
        if inst is None:
            iid = self._launch(server)
        else:
            iid = inst["InstanceId"]
            self.progress(20, f"{server.hostname} found by its tags: {iid} "
                              f"({inst['State']['Name']})")
        if inst is not None and inst["State"]["Name"] in ("stopping", "stopped"):
            if inst["State"]["Name"] == "stopping":
                self._wait_state(iid, "stopped", server.hostname)
            self.progress(30, f"starting {server.hostname} ({iid}): it was stopped")
            self.ec2.call("start_instances", InstanceIds=[iid])
            inst = None  # wait for it below
        if inst is None or inst["State"]["Name"] == "pending":
            inst = self._wait_state(iid, "running", server.hostname)
        assert inst is not None
        record = self._record(server, inst)
        if known and known.get("id") == iid:
            if known.get("address") == record["address"]:
                return known, False  # nothing to do
            record["created_at"] = known.get("created_at")  # restarted: a new public address
        # True: the state did not know it like this (new, its answer lost, or restarted)
        return record, True

    def _record(self, server: Any, inst: dict[str, Any]) -> dict[str, Any]:
        return {
            "hostname": server.hostname, "infra": self.infra, "provider": self.name,
            "id": inst["InstanceId"], "instance_id": inst["InstanceId"],
            "address": inst.get("PublicIpAddress") or inst.get("PrivateIpAddress"),
            "public_ip": inst.get("PublicIpAddress"), "private_ip": inst.get("PrivateIpAddress"),
            "ssh_user": self.settings.get("ssh_user", "ubuntu"), "port": 22,
            "region": self.settings.get("region"), "image": inst.get("ImageId"),
            "zone": inst.get("Placement", {}).get("AvailabilityZone"),
            "plan": inst.get("InstanceType"), "root": server.connection.get("root", "/"),
            "host_key": server.connection.get("host_key"), "labels": dict(server.labels),
            "taskservs": list(server.taskservs), "state": inst["State"]["Name"],
            "created_at": time.time()}

    # -- delete -----------------------------------------------------------------
    def delete_server(self, hostname: str) -> bool:
        found = self._instances(hostname)
        if not found:
            self._log(f"{hostname}: no instance tagged for infra {self.infra}; already gone")
        ids = [i["InstanceId"] for i in found]
        if ids:
            self.progress(82, f"terminating {hostname} ({', '.join(ids)})")
            self.ec2.call("terminate_instances", InstanceIds=ids)
            for iid in ids:
                self._wait_state(iid, "terminated", hostname)
            self.forget_host_key(hostname)  # its address goes to another machine
        self._save_host_state(hostname, {"generation": int(
            self._host_state(hostname).get("generation", 1)) + 1})
        with self._net_lock():
            if not self._instances() and not self._pending():  # the infra's last server
                try:
                    aws_net.teardown(self.ec2, self.infra, self._log)
                except ProvisioningError as e:  # the server is gone; say what is left
                    self._log(f"warning: the network of infra {self.infra} stays: {e}")
        return bool(ids)

    def _pending(self) -> list[str]:
        """Servers with a create under way (a client token and no delete since)."""
        base = self.state.provider_dir(self.name) / self.infra
        out = []
        for f in sorted(base.glob("*.json")) if base.is_dir() else []:
            try:
                if read_json(f).get("client_token"):
                    out.append(f.stem)
            except (OSError, ValueError, AttributeError):
                continue
        return out

    def _net_lock(self):
        return hold_lock(self.state.state_dir / "locks" / f"aws-{self.infra}.lock")

    # -- on the server: OnHost (onhost.py), through the transport (section 11) ----
    def connection(self, record: dict[str, Any]) -> dict[str, Any]:
        """What the transport needs: the public address (else the private one), the
        image's ssh user, the key file of [provider] identity_file; a new instance's
        host key is learned only with trust_on_first_use = true (section 11)."""
        return {"address": record.get("address"), "port": int(record.get("port", 22)),
                "user": record.get("ssh_user") or self.settings.get("ssh_user", "ubuntu"),
                "identity_file": self.settings.get("identity_file"),
                "host_key": record.get("host_key"),
                "trust_on_first_use": bool(self.settings.get("trust_on_first_use", False))}
