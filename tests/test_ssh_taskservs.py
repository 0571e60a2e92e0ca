"""The shipped nginx and redis taskservs on real ssh test hosts (tests/hosts.py).

Three namespaced hosts, each with its own root under the test's tmp dir: web-1
runs a tiny backend (pyhttp, a workspace taskserv), lb-1 the shipped nginx
(its upstream lists the backend servers, read from `servers` in the
template), db-1 the shipped redis. `cluster create` runs through a real
daemon; the test reaches each service at its host's 10.213.x.y address, and
`cluster delete` leaves no process in the hosts' namespaces and nothing under
their opt/provisioning, the hosts still reachable.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.hosts import (
    ssh_hosts,  # noqa: F401 - the fixture
    write_web_taskserv,
)
from tests.test_ssh_provider import HTTP_PORT, assert_no_masters

pytestmark = pytest.mark.skipif(
    not (shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
         and shutil.which("redis-server") and shutil.which("redis-cli")),
    reason="nginx and redis-server are not installed (apt-get install nginx-light "
           "redis-server; .ci/run does)")

ROLES = {"web-1": ["pyhttp"], "lb-1": ["nginx"], "db-1": ["redis"]}


def write_workspace(ws: Path, hosts) -> Path:
    """A workspace with the pyhttp backend and an ssh infra of the hosts in ROLES."""
    write_web_taskserv(ws, "pyhttp", HTTP_PORT, "pyhttp on")
    d = ws / "infra" / "rack"
    d.mkdir(parents=True)
    lines = ['[infra]\nname = "rack"\nprovider = "ssh"\n',
             f'[provider]\nuser = "root"\nidentity_file = "{hosts[0].identity_file}"\n'
             'connect_timeout = 3\n',
             '[taskservs.nginx]\nbackend = "pyhttp"\ntitle = "rack door"\n']
    for h, (name, taskservs) in zip(hosts, ROLES.items(), strict=True):
        lines.append(f'[[servers]]\nhostname = "{name}"\naddress = "{h.address}"\n'
                     f'host_key = "{h.host_key}"\nroot = "{h.root}"\n'
                     f'taskservs = {json.dumps(taskservs)}\n')
    lines.append(f'[clusters.rack]\nservers = {json.dumps(list(ROLES))}\n')
    (d / "settings.toml").write_text("\n".join(lines))
    return d


def netns_pids(host) -> set[int]:
    """Processes in the host's network namespace other than its sshd and sessions."""
    if not host.netns:  # loopback mode: every process is in our namespace
        return set()
    out = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True,
                         text=True, check=True, timeout=30).stdout.split()
    found = set()
    for pid in out:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm != "sshd" and not comm.startswith("sshd"):
            found.add((int(pid), comm))
    return found


def link_hosts(a, b) -> None:
    """Let two namespaced hosts reach each other (nginx on one proxies to the other):
    a route in each to the other's /30 through our side of its veth, with forwarding
    on those two veth links only (no global sysctl; the links go with the hosts)."""
    if not (a.netns and b.netns):  # loopback mode: 127.x addresses reach each other
        return
    for h in (a, b):
        subprocess.run(["sysctl", "-q", "-w", f"net.ipv4.conf.{h.link}.forwarding=1"],
                       check=True, capture_output=True, timeout=30)
    for src, dst in ((a, b), (b, a)):
        gw = src.address.rsplit(".", 1)[0] + ".1"
        net = dst.address.rsplit(".", 1)[0] + ".0/30"
        subprocess.run(["ip", "netns", "exec", src.netns, "ip", "route", "add", net,
                        "via", gw], check=True, capture_output=True, timeout=30)


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def check_services(web, lb, db) -> None:
    page = http_get(f"http://{lb.address}:18090/")
    assert "rack door on lb-1" in page and web.address in page, page
    app = http_get(f"http://{lb.address}:18090/app/")  # through the upstream to web-1
    assert app.strip() == f"pyhttp on web-1 at {web.address}", app
    conf = (lb.root / "etc/provisioning/nginx/nginx.conf").read_text()
    assert f"server {web.address}:{HTTP_PORT};  # web-1" in conf
    assert f"listen {lb.address}:18090;" in conf
    with socket.create_connection((db.address, 16379), timeout=5) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(64) == b"+PONG\r\n"
    assert f"bind {db.address}\n" in (db.root / "etc/provisioning/redis/redis.conf").read_text()


@pytest.mark.slow
def test_nginx_and_redis_on_ssh_hosts_through_the_daemon(ssh_hosts, tmp_path,  # noqa: F811
                                                         isolated):
    from tests.daemon_fixture import start_daemon

    hosts = ssh_hosts(3)
    web, lb, db = hosts
    infra = write_workspace(tmp_path / "ws", hosts)
    link_hosts(lb, web)
    d = start_daemon(tmp_path)
    try:
        common = ("--config", str(d.config_file), "--endpoint", d.url)
        r = run_cli(*common, "--orchestrated", "cluster", "create", "rack", "--infra",
                    str(infra), "--wait", timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        check_services(web, lb, db)
        comms = {h.name: {c for _, c in netns_pids(h)} for h in hosts}
        if lb.netns:
            assert "nginx" in comms[lb.name] and "redis-server" in comms[db.name], comms
        for h in hosts:
            assert (h.root / "opt/provisioning/taskservs").is_dir()

        r = run_cli(*common, "--orchestrated", "cluster", "delete", "rack", "--infra",
                    str(infra), "--wait", timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        for h in hosts:
            assert netns_pids(h) == set(), (h.name, netns_pids(h))
            left = list((h.root / "opt/provisioning").rglob("*")) \
                if (h.root / "opt/provisioning").exists() else []
            assert left == [], left
            assert h.listening()
            out = subprocess.run(
                ["ssh", "-i", str(h.identity_file), "-o", "BatchMode=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path}/kh",
                 "-o", "ConnectTimeout=5", f"root@{h.address}", "echo", "still-here"],
                capture_output=True, text=True, timeout=30)
            assert out.stdout.strip() == "still-here", out.stderr
        with pytest.raises(OSError):
            socket.create_connection((db.address, 16379), timeout=2).close()
    finally:
        d.stop()
    assert_no_masters(Path(d.data_dir))
