"""The Provider interface's read-only calls (find_server, list_found, connection) on
the local provider, and the aws provider's parts that need no AWS (its settings
checks and its connection facts; no boto3 import)."""

from __future__ import annotations

from types import SimpleNamespace

from provisioning.ops.providers import available, open_provider
from provisioning.ops.providers.aws import AwsProvider
from provisioning.ops.state import StateStore
from tests.conftest import run_cli


def test_local_provider_reads(tmp_path):
    state = StateStore(tmp_path / "data")
    p = open_provider("local", infra="i", settings={}, state=state)
    assert p.find_server("a") is None and p.list_found() == []
    record, created = p.create_server(SimpleNamespace(hostname="a", plan="small", zone="local",
                                                      labels={}, taskservs=()))
    state.save_server("i", record)
    assert created
    found = p.find_server("a")
    assert found["state"] == "running" and found["address"] == record["address"]
    assert [f["hostname"] for f in p.list_found()] == ["a"]
    assert p.connection(record) == {}
    assert p.delete_server("a") and p.find_server("a") is None


def test_aws_settings_and_connection_need_no_boto3(tmp_path):
    assert "aws" in available([])
    problems = AwsProvider.validate_settings({"image": "ami-1", "access_key": "AKIA",
                                              "vpc_id": "vpc-1", "vpc_cidr": "10.0.0.0/16",
                                              "subnet_cidr": "10.0.1.0/24",
                                              "public_ip": "yes"})
    assert "region is required for provider aws" in problems
    assert any(p.startswith("access_key: credentials never go in the infra file")
               for p in problems)
    assert "vpc_id and vpc_cidr: give one of them, not both" in problems
    assert "public_ip: wrong type, got 'yes' (bool expected)" in problems
    p = AwsProvider(infra="i", settings={"region": "r", "image": "ami-1", "ssh_user": "admin",
                                         "identity_file": "~/.ssh/k"},
                    state=StateStore(tmp_path / "data"))
    assert p.connection({"address": "198.51.100.7", "port": 22}) == {
        "address": "198.51.100.7", "port": 22, "user": "admin", "identity_file": "~/.ssh/k",
        "host_key": None, "trust_on_first_use": False}


def test_an_aws_infra_with_a_credential_in_it_is_refused(tmp_path):
    d = tmp_path / "ws" / "infra" / "leaky"
    d.mkdir(parents=True)
    (d / "settings.toml").write_text('[infra]\nprovider = "aws"\n[provider]\nregion = "r"\n'
                                     'image = "ami-1"\nsecret_access_key = "abc"\n')
    r = run_cli("config", "validate", str(d / "settings.toml"))
    assert r.returncode == 2
    assert "secret_access_key: credentials never go in the infra file" in r.stderr
    assert "abc" not in r.stderr
