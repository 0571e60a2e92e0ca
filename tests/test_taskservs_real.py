"""The shipped nginx and redis taskservs (real Debian binaries) on the local provider.

Each local server is a sandbox with its own 127.x.y.z: a load balancer runs
nginx (its upstream lists the web servers, read from `servers` in the
template) and redis (its rendered conf binds the server's address). CI
installs nginx-light and redis-server (.ci/run install_debian_tools).
"""

from __future__ import annotations

import shutil
import socket
import urllib.request
from pathlib import Path

import psutil
import pytest

from provisioning import procinfo
from provisioning.ops import installs, procs, providers, servers
from provisioning.ops.infra import load_infra
from provisioning.ops.state import StateStore
from tests.test_taskservs import Recorder, recorded_processes

pytestmark = pytest.mark.skipif(
    not (shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
         and shutil.which("redis-server") and shutil.which("redis-cli")),
    reason="nginx and redis-server are not installed (apt-get install nginx-light "
           "redis-server; .ci/run does)")

SETTINGS = """
[infra]
name = "lbdemo"
provider = "local"

[settings]
domain = "lb.test"

[taskservs.nginx]
title = "front door"

[[servers]]
hostname = "web-1"
taskservs = ["web"]

[[servers]]
hostname = "web-2"
taskservs = ["web"]

[[servers]]
hostname = "lb-1"
taskservs = ["nginx", "redis"]
"""


def ours(tmp: Path) -> list[psutil.Process]:
    """Processes whose command line names a path under this test's tmp dir."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(tmp) in a for a in p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.fixture
def lbdemo(tmp_path, isolated):
    d = tmp_path / "ws" / "infra" / "lbdemo"
    d.mkdir(parents=True)
    (d / "settings.toml").write_text(SETTINGS)
    yield load_infra(d)
    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    for p in recorded_processes(data):
        procs.stop(p, grace=2)
    for p in ours(tmp_path):  # nginx workers, a redis that outlived its record
        p.kill()


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def test_nginx_upstreams_and_redis_install_serve_and_remove_cleanly(lbdemo, tmp_path):
    r = Recorder()
    made = {h: servers.create(lbdemo, h, r) for h in ("web-1", "web-2", "lb-1")}
    for h in ("web-1", "web-2"):
        installs.install(lbdemo, h, "kvstore", r)
        installs.install(lbdemo, h, "web", r)
    ng = installs.install(lbdemo, "lb-1", "nginx", r)
    rd = installs.install(lbdemo, "lb-1", "redis", r)
    lb = made["lb-1"]["address"]
    assert ng["address"] == lb and lb.startswith("127.") and lb != "127.0.0.1"

    root = Path(made["lb-1"]["root"])
    conf = (root / "etc/provisioning/nginx/nginx.conf").read_text()
    for h in ("web-1", "web-2"):  # the upstream lists every web server, from `servers`
        assert f"server {made[h]['address']}:18080;  # {h}" in conf
    assert (root / "opt/provisioning/taskservs/nginx/install").stat().st_mode & 0o100
    page = http_get(f"http://{lb}:{ng['ports']['http']}/")
    assert "front door on lb-1" in page and made["web-2"]["address"] in page
    seen = {h for _ in range(4) for h in ("web-1", "web-2")
            if f"server: {h} " in http_get(f"http://{lb}:{ng['ports']['http']}/app/")}
    assert seen == {"web-1", "web-2"}  # round robin through the upstream

    redis_conf = (root / "etc/provisioning/redis/redis.conf").read_text()
    assert f"bind {lb}\n" in redis_conf and f"dir {root}/var/lib/provisioning/redis" in redis_conf
    with socket.create_connection((lb, rd["ports"]["redis"]), timeout=5) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(64) == b"+PONG\r\n"
    with pytest.raises(OSError):  # bound to the server's address only
        socket.create_connection(("127.0.0.1", rd["ports"]["redis"]), timeout=2).close()

    state = StateStore()
    pids = [p for t in state.taskservs("lbdemo", "lb-1") for p in t["processes"]]
    assert len(pids) == 2 and all(procinfo.is_alive(p) for p in pids)
    provider = providers.for_infra(lbdemo, state)
    for name in ("nginx", "redis"):
        out = installs.remove("lbdemo", "lb-1", name, r, provider=provider)
        assert out["changed"] is True
    assert not any(procinfo.is_alive(p) for p in pids)
    assert not [p for p in ours(tmp_path) if str(root) in " ".join(p.cmdline())]
    assert not (root / "opt/provisioning/taskservs/nginx").exists()
    assert not (root / "var/lib/provisioning/redis").exists()
    assert not (root / "run/provisioning-nginx.pid").exists()
    for h in ("web-1", "web-2", "lb-1"):
        servers.delete("lbdemo", h, r, provider=provider)
    assert ours(tmp_path) == []
