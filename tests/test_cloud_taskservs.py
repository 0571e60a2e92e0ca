"""Taskservs on cloud servers, end to end over the SSH transport (DESIGN.md 13: "then
taskservs go on over the transport").

The cloud is mocked (tests/fake_upcloud.py, a MOCK OF THE UPCLOUD API), the machines
behind it are real: the fake hands out as each new server's public IPv4 the address
of a namespaced sshd test host (tests/hosts.py). The real CLI submits to a real
daemon, whose task processes call the fake over HTTP and reach the hosts over SSH.

The same for aws: moto picks an instance's public IP itself and has no call to set
it, so the proxy in front of moto (tests/aws_fixture.py, `Proxy.public_ips`) shows
each public IP moto hands out as the address of a test host.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from provisioning.transport import close_masters
from tests.conftest import REPO, run_cli
from tests.daemon_fixture import start_daemon
from tests.fake_upcloud import FakeUpCloud
from tests.hosts import (
    ssh_hosts,  # noqa: F401 - the fixture
    write_web_taskserv,
)

HTTP_PORT = 18094
CRED_VARS = ("UPCLOUD_TOKEN", "UPCLOUD_USERNAME", "UPCLOUD_PASSWORD")

@pytest.fixture(autouse=True)
def no_outer_credentials(monkeypatch):
    for name in CRED_VARS:
        monkeypatch.delenv(name, raising=False)


def _write_taskserv(ws: Path) -> None:
    write_web_taskserv(ws, "hello", HTTP_PORT, "hello from")


def _write_infra(ws: Path, fake: FakeUpCloud, hosts) -> Path:
    d = ws / "infra" / "cloudy"
    d.mkdir(parents=True)
    lines = ['[infra]', 'name = "cloudy"', 'provider = "upcloud"', '[provider]',
             'zone = "fi-hel1"', 'template = "Ubuntu Server 24.04 LTS (Noble Numbat)"',
             'plan = "1xCPU-1GB"', f'endpoint_url = "{fake.url}"', 'ssh_user = "root"',
             'ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI test"]',
             f'identity_file = "{hosts[0].identity_file}"', 'trust_on_first_use = true']
    for i, h in enumerate(hosts):
        # root: the test hosts share this machine's filesystem (tests/hosts.py)
        lines += ["[[servers]]", f'hostname = "cloud-{i + 1}"', f'root = "{h.root}"',
                  'taskservs = ["hello"]']
    lines += ["[clusters.web]", 'servers = ["cloud-1", "cloud-2"]']
    (d / "settings.toml").write_text("\n".join(lines) + "\n")
    return d


def test_cluster_on_two_upcloud_servers_backed_by_real_hosts(ssh_hosts, tmp_path,  # noqa: F811
                                                             isolated):
    hosts = ssh_hosts(2)
    password = f"planted-{uuid.uuid4().hex}"
    fake = FakeUpCloud(username="ops", password=password).start()
    fake.public_addresses = [h.address for h in hosts]
    ws = tmp_path / "ws"
    _write_taskserv(ws)
    infra = _write_infra(ws, fake, hosts)
    d = start_daemon(tmp_path, env={"UPCLOUD_USERNAME": "ops", "UPCLOUD_PASSWORD": password})
    common = ("--config", str(d.config_file), "--endpoint", d.url, "--orchestrated")
    try:
        r = run_cli(*common, "cluster", "create", "web", "--infra", str(infra), "--wait",
                    timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        found = fake.by_hostname()
        assert sorted(found) == ["cloud-1", "cloud-2"] and fake.count("create") == 2
        by_address = {h.address: h for h in hosts}
        for name, (server,) in found.items():
            assert server["state"] == "started"
            public = [a["address"] for a in server["ip_addresses"]["ip_address"]
                      if a["access"] == "public"]
            _serving(name, by_address[public[0]])  # the mock's address: a real test host
        assert [h.accepted() for h in hosts] == [1, 1]  # one SSH connection per host
        close_masters(d.data_dir)  # the next workflow opens its own

        r = run_cli(*common, "cluster", "delete", "web", "--infra", str(infra), "--wait",
                    timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        assert fake.by_hostname() == {} and len(fake.deleted) == 2
        assert [h.accepted() for h in hosts] == [2, 2]  # again one per host
        _gone(hosts, d.data_dir)
    finally:
        d.stop()
        fake.stop()
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file()
             and password.encode() in p.read_bytes()]
    assert leaks == []


@pytest.fixture(scope="module")
def moto():
    pytest.importorskip("moto", reason="needs moto[server] (the test-aws extra)")
    from tests.aws_fixture import Moto

    m = Moto()
    yield m
    m.stop()


def _serving(name: str, host) -> None:
    """The taskserv answers at the host's address, and its files are under its root."""
    page = urllib.request.urlopen(f"http://{host.address}:{HTTP_PORT}/", timeout=5)
    assert page.read().decode().strip() == f"hello from {name} at {host.address}"
    assert (host.root / "opt/provisioning/taskservs/hello/install").is_file()


def _gone(hosts, data_dir: Path) -> None:
    """Nothing of the taskserv left on the hosts; their keys forgotten with the servers."""
    for h in hosts:
        assert not (h.root / "srv" / "hello").exists()
        assert not (h.root / "opt" / "provisioning" / "taskservs" / "hello").exists()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{h.address}:{HTTP_PORT}/", timeout=2)
    known = (data_dir / "ssh" / "known_hosts").read_text()
    assert not any(h.address in known for h in hosts)


def test_cluster_on_two_aws_instances_backed_by_real_hosts(ssh_hosts, tmp_path, moto,  # noqa: F811
                                                           monkeypatch, isolated):
    from tests.aws_fixture import Proxy, aws_env, instances, write_infra

    moto.reset()
    for k, v in aws_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    hosts = ssh_hosts(2)
    proxy = Proxy(moto.url)
    proxy.public_ips = [h.address for h in hosts]
    ws = tmp_path / "ws"
    _write_taskserv(ws)
    servers = "".join(f'\n[[servers]]\nhostname = "cloud-{i + 1}"\nplan = "t3.small"\n'
                      f'root = "{h.root}"\ntaskservs = ["hello"]\n'
                      for i, h in enumerate(hosts))
    infra = write_infra(ws, "cloudy", proxy.url, hosts=(), extra=(
        f'identity_file = "{hosts[0].identity_file}"\ntrust_on_first_use = true\n'
        + servers + '\n[clusters.web]\nservers = ["cloud-1", "cloud-2"]\n'))
    text = (infra / "settings.toml").read_text().replace('ssh_user = "ubuntu"',
                                                         'ssh_user = "root"')
    (infra / "settings.toml").write_text(text)
    d = start_daemon(tmp_path)
    common = ("--config", str(d.config_file), "--endpoint", d.url, "--orchestrated")
    try:
        r = run_cli(*common, "cluster", "create", "web", "--infra", str(infra), "--wait",
                    timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        assert sorted(instances(moto.ec2(), "cloudy")) == ["cloud-1", "cloud-2"]
        by_address = {h.address: h for h in hosts}
        for name in ("cloud-1", "cloud-2"):
            rec = json.loads((d.data_dir / f"state/infras/cloudy/servers/{name}.json")
                             .read_text())
            _serving(name, by_address[rec["address"]])
        assert [h.accepted() for h in hosts] == [1, 1]  # one SSH connection per host
        close_masters(d.data_dir)

        r = run_cli(*common, "cluster", "delete", "web", "--infra", str(infra), "--wait",
                    timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        assert instances(moto.ec2(), "cloudy") == {}
        assert [h.accepted() for h in hosts] == [2, 2]
        _gone(hosts, d.data_dir)
    finally:
        d.stop()
        proxy.stop()


@pytest.mark.parametrize("argv", [["version"], ["-v", "version"]])  # fast path; click's
def test_version_imports_no_cloud_sdk_and_no_jinja2(argv):
    code = ("import sys; from provisioning.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('boto3', 'botocore', 'jinja2') if m in sys.modules]\n"
            "print('IMPORTED', bad)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^core +\d", r.stdout, re.M), r.stdout  # it printed the versions
    assert re.search(r"^IMPORTED \[\]$", r.stdout, re.M), r.stdout


def test_on_a_cloud_server_keys_root_and_env(ssh_hosts, tmp_path):  # noqa: F811
    """OnHost directly: no key known and no trust -> the host is named; a server's
    host_key is used; commands run in the root with the host's env; no path leaves it."""
    from provisioning.errors import ProvisioningError, TransportError
    from provisioning.ops.providers.upcloud import UpCloudProvider
    from provisioning.ops.state import StateStore

    (host,) = ssh_hosts(1)
    host.root.mkdir(parents=True, exist_ok=True)
    state = StateStore(tmp_path / "data")
    settings = {"template": "x", "identity_file": str(host.identity_file)}
    record = {"hostname": "c1", "address": host.address, "port": 22, "ssh_user": "root",
              "root": str(host.root)}
    state.save_server("i", record)
    p = UpCloudProvider(infra="i", settings=settings, state=state)
    try:
        with pytest.raises(TransportError, match=f"c1 .*no host key known for {host.address}"):
            p.run("c1", ["true"])
        state.save_server("i", {**record, "host_key": host.host_key})
        p = UpCloudProvider(infra="i", settings=settings, state=state)
        proc = p.run("c1", ["sh", "-c", 'pwd; echo "$PROVISIONING_HOST_NAME $X"'],
                     env={"X": "y"})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split("\n")[:2] == [str(host.root), "c1 y"]
        src = tmp_path / "f.txt"
        src.write_text("hi")
        p.copy_file("c1", src, "etc/f.txt", mode=0o640)
        assert (host.root / "etc/f.txt").read_text() == "hi"
        assert (host.root / "etc/f.txt").stat().st_mode & 0o777 == 0o640
        with pytest.raises(ProvisioningError, match="leaves the root"):
            p.copy_file("c1", src, "../../outside.txt")
        p.remove_path("c1", "etc")
        assert not (host.root / "etc").exists()
        with pytest.raises(ProvisioningError, match="not recorded"):
            p.run("c9", ["true"])
    finally:
        close_masters(state.data_dir)


def test_cloud_servers_refuse_connection_keys_the_cloud_decides(tmp_path):
    from provisioning.errors import ValidationError
    from provisioning.ops.infra import load_infra

    d = tmp_path / "ws" / "infra" / "bad"
    d.mkdir(parents=True)
    (d / "settings.toml").write_text(
        '[infra]\nname = "bad"\nprovider = "upcloud"\n[provider]\nzone = "fi-hel1"\n'
        'template = "Ubuntu Server 24.04 LTS (Noble Numbat)"\n'
        '[[servers]]\nhostname = "a"\naddress = "192.0.2.1"\n')
    with pytest.raises(ValidationError, match=r"servers\[0\] \(a\): address: the cloud"):
        load_infra(d)
    (d / "settings.toml").write_text((d / "settings.toml").read_text().replace(
        'address = "192.0.2.1"', 'root = "relative"'))
    with pytest.raises(ValidationError, match="root must be an absolute path"):
        load_infra(d)
