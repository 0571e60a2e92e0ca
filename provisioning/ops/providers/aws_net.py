"""The network an `aws` infra's servers go into, and its key pair.

From the infra's [provider] table: existing ids (`vpc_id`, `subnet_id`,
`security_group_id`) are used as they are and never deleted; CIDRs
(`vpc_cidr`, `subnet_cidr`) make a VPC (with an internet gateway and a
default route), a subnet and a security group (tcp/22 from `ssh_cidrs`),
each tagged `provisioning:infra`, found again by that tag before anything
is made (a crash between request and answer never makes a second one), and
removed with the infra's last server. Neither: the region's default VPC.
One infra's network is made under one lock, so parallel creates share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioning.errors import ProvisioningError
from provisioning.ops.providers.aws_api import Ec2

TAG_INFRA = "provisioning:infra"
TAG_ROLE = "provisioning:role"


def _tags(infra: str, role: str) -> list[dict[str, Any]]:
    return [{"Key": TAG_INFRA, "Value": infra}, {"Key": TAG_ROLE, "Value": role},
            {"Key": "Name", "Value": f"provisioning-{infra}"}]


def _filters(infra: str, role: str, **more: str) -> list[dict[str, Any]]:
    out = [{"Name": f"tag:{TAG_INFRA}", "Values": [infra]},
           {"Name": f"tag:{TAG_ROLE}", "Values": [role]}]
    out += [{"Name": k, "Values": [v]} for k, v in more.items()]
    return out


def _spec(kind: str, infra: str, role: str) -> list[dict[str, Any]]:
    return [{"ResourceType": kind, "Tags": _tags(infra, role)}]


def ensure(ec2: Ec2, infra: str, s: dict[str, Any]) -> dict[str, Any]:
    """Subnet and security groups for run_instances ({} = the default VPC)."""
    vpc = s.get("vpc_id")
    if not vpc and s.get("vpc_cidr"):
        vpc = _vpc(ec2, infra, s["vpc_cidr"])
    subnet = s.get("subnet_id")
    if not subnet and s.get("subnet_cidr") and vpc:
        found = ec2.paginate("describe_subnets", "Subnets",
                             Filters=_filters(infra, "subnet", **{"vpc-id": vpc}))
        subnet = found[0]["SubnetId"] if found else ec2.call(
            "create_subnet", VpcId=vpc, CidrBlock=s["subnet_cidr"],
            TagSpecifications=_spec("subnet", infra, "subnet"))["Subnet"]["SubnetId"]
    group = s.get("security_group_id")
    if not group and vpc:
        group = _group(ec2, infra, vpc, list(s.get("ssh_cidrs", [])))
    out: dict[str, Any] = {}
    if subnet:
        out["subnet_id"] = subnet
    if group:
        out["security_group_ids"] = [group]
    return out


def _vpc(ec2: Ec2, infra: str, cidr: str) -> str:
    found = ec2.paginate("describe_vpcs", "Vpcs", Filters=_filters(infra, "vpc"))
    if found:
        return found[0]["VpcId"]
    vpc = ec2.call("create_vpc", CidrBlock=cidr,
                   TagSpecifications=_spec("vpc", infra, "vpc"))["Vpc"]["VpcId"]
    gw = ec2.call("create_internet_gateway",
                  TagSpecifications=_spec("internet-gateway", infra, "gateway"))
    gw_id = gw["InternetGateway"]["InternetGatewayId"]
    ec2.call("attach_internet_gateway", InternetGatewayId=gw_id, VpcId=vpc)
    tables = ec2.paginate("describe_route_tables", "RouteTables",
                          Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                   {"Name": "association.main", "Values": ["true"]}])
    if tables:
        ec2.call("create_route", RouteTableId=tables[0]["RouteTableId"],
                 DestinationCidrBlock="0.0.0.0/0", GatewayId=gw_id)
    return vpc


def _group(ec2: Ec2, infra: str, vpc: str, ssh_cidrs: list[str]) -> str:
    found = ec2.paginate("describe_security_groups", "SecurityGroups",
                         Filters=_filters(infra, "security-group", **{"vpc-id": vpc}))
    if found:
        return found[0]["GroupId"]
    group = ec2.call("create_security_group", GroupName=f"provisioning-{infra}",
                     Description=f"provisioning infra {infra}", VpcId=vpc,
                     TagSpecifications=_spec("security-group", infra,
                                             "security-group"))["GroupId"]
    if ssh_cidrs:
        ec2.call("authorize_security_group_ingress", GroupId=group, IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
            "IpRanges": [{"CidrIp": c, "Description": "ssh"} for c in ssh_cidrs]}])
    return group


def teardown(ec2: Ec2, infra: str, log: Any) -> None:
    """Remove what ensure() made for the infra (tagged; never given ids)."""
    for g in ec2.paginate("describe_security_groups", "SecurityGroups",
                          Filters=_filters(infra, "security-group")):
        ec2.call("delete_security_group", GroupId=g["GroupId"])
        log(f"deleted security group {g['GroupId']}")
    for sn in ec2.paginate("describe_subnets", "Subnets", Filters=_filters(infra, "subnet")):
        ec2.call("delete_subnet", SubnetId=sn["SubnetId"])
        log(f"deleted subnet {sn['SubnetId']}")
    for gw in ec2.paginate("describe_internet_gateways", "InternetGateways",
                           Filters=_filters(infra, "gateway")):
        for a in gw.get("Attachments", []):
            ec2.call("detach_internet_gateway", InternetGatewayId=gw["InternetGatewayId"],
                     VpcId=a["VpcId"])
        ec2.call("delete_internet_gateway", InternetGatewayId=gw["InternetGatewayId"])
    for v in ec2.paginate("describe_vpcs", "Vpcs", Filters=_filters(infra, "vpc")):
        ec2.call("delete_vpc", VpcId=v["VpcId"])
        log(f"deleted vpc {v['VpcId']}")


def ensure_key_pair(ec2: Ec2, key_name: str | None, public_key_file: str | None) -> None:
    """Import `public_key_file` as `key_name` when the region does not have it yet."""
    if not key_name or not public_key_file:
        return
    try:
        ec2.call("describe_key_pairs", KeyNames=[key_name])
        return
    except ProvisioningError as e:
        if "InvalidKeyPair.NotFound" not in e.message:
            raise
    path = Path(public_key_file).expanduser()
    try:
        material = path.read_bytes()
    except OSError as e:
        raise ProvisioningError(f"aws: public_key_file {path}: {e.strerror}") from None
    if b"PRIVATE KEY" in material:
        raise ProvisioningError(f"aws: public_key_file {path} holds a private key; "
                                "give the .pub file")
    ec2.call("import_key_pair", KeyName=key_name, PublicKeyMaterial=material)

