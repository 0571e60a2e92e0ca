"""Taskservs on cloud servers, end to end over the SSH transport (DESIGN.md 13: "then
taskservs go on over the transport").

The cloud is mocked (tests/fake_upcloud.py, a MOCK OF THE UPCLOUD API), the machines
behind it are real: the fake hands out as each new server's public IPv4 the address
of a namespaced sshd test host (tests/hosts.py). The real CLI submits to a real
daemon, whose task processes call the fake over HTTP and reach the hosts over SSH.

Only upcloud: moto gives an instance a public IP of its own choosing and has no
way to set it, so an aws instance's address cannot point at a test host.
"""

from __future__ import annotations

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
from tests.hosts import ssh_hosts  # noqa: F401 - the fixture

HTTP_PORT = 18094
CRED_VARS = ("UPCLOUD_TOKEN", "UPCLOUD_USERNAME", "UPCLOUD_PASSWORD")

INSTALL = """#!/bin/sh
# Runs ON the server (cwd: its root): a tiny web service bound to the server's address.
set -e
cat > /dev/null  # the context JSON; this one needs only the env
mkdir -p srv/hello run
echo "hello from $PROVISIONING_HOST_NAME at $PROVISIONING_HOST_ADDRESS" > srv/hello/index.html
setsid python3 -m http.server --bind "$PROVISIONING_HOST_ADDRESS" --directory srv/hello \\
    {port} < /dev/null > run/hello.log 2>&1 &
echo $! > run/hello.pid
"""
REMOVE = """#!/bin/sh
[ -f run/hello.pid ] && kill "$(cat run/hello.pid)" 2>/dev/null
rm -rf srv/hello run/hello.pid run/hello.log
exit 0
"""


@pytest.fixture(autouse=True)
def no_outer_credentials(monkeypatch):
    for name in CRED_VARS:
        monkeypatch.delenv(name, raising=False)


def _write_taskserv(ws: Path) -> None:
    ts = ws / "taskservs" / "hello"
    ts.mkdir(parents=True)
    (ts / "taskserv.toml").write_text(
        '[taskserv]\ndescription = "a POSIX sh install serving on the host address"\n'
        f'[ports]\nhttp = {HTTP_PORT}\n'
        '[health]\ntype = "http"\nport = "http"\npath = "/"\nexpect = "hello"\n'
        'timeout_s = 20\n')
    (ts / "install").write_text(INSTALL.format(port=HTTP_PORT))
    (ts / "remove").write_text(REMOVE)
    for f in (ts / "install", ts / "remove"):
        f.chmod(0o755)


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
            host = by_address[public[0]]  # the mock's address is a real test host
            page = urllib.request.urlopen(f"http://{host.address}:{HTTP_PORT}/", timeout=5)
            assert page.read().decode().strip() == f"hello from {name} at {host.address}"
            assert (host.root / "opt/provisioning/taskservs/hello/install").is_file()
        assert [h.accepted() for h in hosts] == [1, 1]  # one SSH connection per host
        close_masters(d.data_dir)  # the next workflow opens its own

        r = run_cli(*common, "cluster", "delete", "web", "--infra", str(infra), "--wait",
                    timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        assert fake.by_hostname() == {} and len(fake.deleted) == 2
        assert [h.accepted() for h in hosts] == [2, 2]  # again one per host
        for h in hosts:
            assert not (h.root / "srv" / "hello").exists()
            assert not (h.root / "opt" / "provisioning" / "taskservs" / "hello").exists()
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://{h.address}:{HTTP_PORT}/", timeout=2)
        known = (d.data_dir / "ssh" / "known_hosts").read_text()
        assert not any(h.address in known for h in hosts)  # forgotten with the servers
    finally:
        d.stop()
        fake.stop()
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file()
             and password.encode() in p.read_bytes()]
    assert leaks == []


def test_version_imports_no_cloud_sdk_and_no_jinja2():
    code = ("import sys; from provisioning.cli import main\n"
            "try:\n    main(['version'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('boto3', 'botocore', 'jinja2') if m in sys.modules]\n"
            "print('IMPORTED', bad)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^IMPORTED \[\]$", r.stdout, re.M), r.stdout
