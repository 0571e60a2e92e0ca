"""Taskservs on the local provider: real services, health, idempotence, failure, removal."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.request
from pathlib import Path

import psutil
import pytest

from provisioning import procinfo
from provisioning.errors import ProvisioningError, ValidationError
from provisioning.ops import installs, procs, providers, servers
from provisioning.ops.infra import load_infra
from provisioning.ops.state import StateStore
from tests.conftest import REPO, wait_for

EXAMPLE = REPO / "examples" / "infra" / "demo"


class Recorder:
    def __init__(self):
        self.lines: list[str] = []

    def progress(self, n: int, message: str = "") -> None:
        self.lines.append(f"{n} {message}")

    def log(self, message: str) -> None:
        self.lines.append(message)


def recorded_processes(data_dir: Path) -> list[dict]:
    out = []
    for f in (data_dir / "state" / "infras").glob("*/taskservs/*/*.json"):
        try:
            out.extend(json.loads(f.read_text()).get("processes", []))
        except (OSError, ValueError):
            pass
    return out


@pytest.fixture
def reap_services(isolated):
    """Stop every service process a test started (by recorded pid + create time)."""
    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    seen: list[dict] = []
    yield seen
    for p in seen + recorded_processes(data):
        procs.stop(p, grace=2)


def kv(address: str, port: int, line: str) -> str:
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall((line + "\n").encode())
        return s.recv(1024).decode().strip()


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(EXAMPLE, ws / "infra" / "demo")
    return ws


def test_install_runs_real_services_idempotently(workspace, reap_services):
    infra = load_infra(workspace / "infra" / "demo")
    r = Recorder()
    srv = servers.create(infra, "web-1", r)
    assert srv["changed"] is True
    with pytest.raises(ProvisioningError, match="requires kvstore, which is not running"):
        installs.install(infra, "web-1", "web", r)
    installs.install(infra, "web-1", "kvstore", r)
    res = installs.install(infra, "web-1", "web", r)
    addr = srv["address"]
    assert kv(addr, res["ports"]["http"] - 18080 + 17480, "PING") == "PONG"
    page = urllib.request.urlopen(f"http://{addr}:{res['ports']['http']}/", timeout=5).read()
    assert b"provisioning demo" in page and b"web-1" in page  # rendered from the template
    visits = urllib.request.urlopen(f"http://{addr}:{res['ports']['http']}/visits",
                                    timeout=5).read()
    assert visits == b"visits: 1\n"  # counted in kvstore: web really uses what it requires
    assert kv(addr, 17480, "GET web:installed") == "web-1"

    again = installs.install(infra, "web-1", "web", r)
    assert again["changed"] is False and "nothing to do" in again["message"]
    assert servers.create(infra, "web-1", r)["changed"] is False

    state = StateStore()
    web = state.taskserv("demo", "web-1", "web")
    [proc] = web["processes"]
    assert psutil.Process(proc["pid"]).status() != psutil.STATUS_ZOMBIE
    with pytest.raises(ProvisioningError, match="required by web"):
        installs.remove("demo", "web-1", "kvstore", r, provider=providers.for_infra(infra,
                                                                                       state))

    psutil.Process(proc["pid"]).kill()  # the service dies behind our back
    wait_for(lambda: not procinfo.is_alive(proc), what="web to die")
    [view] = servers.list_views("demo")
    assert view["status"] == "degraded"
    assert {t["name"]: t["status"] for t in view["taskservs"]} == {"kvstore": "running",
                                                                    "web": "dead"}
    healed = installs.install(infra, "web-1", "web", r)  # re-install heals it
    assert healed["changed"] is True
    assert servers.list_views("demo")[0]["status"] == "running"

    pids = [p for t in state.taskservs("demo", "web-1") for p in t["processes"]]
    out = servers.delete("demo", "web-1", r, provider=providers.for_infra(infra, state))
    assert out["changed"] is True
    assert not any(procinfo.is_alive(p) for p in pids)
    assert not Path(srv["root"]).exists()
    assert servers.list_views("demo") == []
    missing = servers.delete("demo", "web-1", r, provider=providers.for_infra(infra, state))
    assert missing["changed"] is False and "does not exist" in missing["message"]


def test_failed_install_leaves_state_that_a_rerun_resumes(workspace, reap_services):
    flaky = workspace / "taskservs" / "flaky"
    flaky.mkdir(parents=True)
    marker = workspace / "fixed"
    (flaky / "taskserv.toml").write_text("[taskserv]\nrequires = ['kvstore']\n")
    (flaky / "install.py").write_text(
        "import os, sys\n"
        f"if not os.path.exists({str(marker)!r}):\n"
        "    print('flaky: dependency missing', file=sys.stderr); sys.exit(4)\n"
        "print('flaky installed')\n")
    settings = workspace / "infra" / "demo" / "settings.toml"
    settings.write_text(settings.read_text().replace('taskservs = ["kvstore"]',
                                                     'taskservs = ["flaky"]'))
    infra = load_infra(workspace / "infra" / "demo")
    assert infra.taskserv_plan("db-1") == ["kvstore", "flaky"]
    r = Recorder()
    servers.create(infra, "db-1", r)
    installs.install(infra, "db-1", "kvstore", r)
    with pytest.raises(ProvisioningError, match=r"install of flaky on db-1 failed \(exit 4\): "
                                                "flaky: dependency missing"):
        installs.install(infra, "db-1", "flaky", r)
    rec = StateStore().taskserv("demo", "db-1", "flaky")
    assert rec["status"] == "failed" and rec["attempts"] == 1
    [view] = servers.list_views("demo")
    assert view["status"] == "incomplete"
    marker.write_text("ok")
    assert installs.install(infra, "db-1", "flaky", r)["changed"] is True
    rec = StateStore().taskserv("demo", "db-1", "flaky")
    assert rec["status"] == "installed" and rec["attempts"] == 2


def test_shared_loopback_offsets_ports(workspace, reap_services):
    settings = workspace / "infra" / "demo" / "settings.toml"
    settings.write_text(settings.read_text().replace('loopback = "auto"',
                                                     'loopback = "shared"'))
    infra = load_infra(workspace / "infra" / "demo")
    r = Recorder()
    srv = servers.create(infra, "db-1", r)
    assert srv["address"] == "127.0.0.1"
    res = installs.install(infra, "db-1", "kvstore", r)
    port = res["ports"]["kv"]
    assert port != 17480 and (port - 17480) % 10 == 0
    assert kv("127.0.0.1", port, "SET a 1") == "OK"
    assert kv("127.0.0.1", port, "INCR a") == "2"


def test_template_with_unknown_value_is_a_precise_error(workspace, reap_services):
    tdir = workspace / "taskservs" / "page"
    (tdir / "templates").mkdir(parents=True)
    (tdir / "taskserv.toml").write_text('[templates]\n"p.txt" = "srv/p.txt"\n')
    (tdir / "templates" / "p.txt").write_text("host {{ hostname }}\n"
                                              "owner {{ settings.owner }} {{ nosuch }}\n")
    settings = workspace / "infra" / "demo" / "settings.toml"
    settings.write_text(settings.read_text().replace('taskservs = ["kvstore"]',
                                                     'taskservs = ["page"]'))
    infra = load_infra(workspace / "infra" / "demo")
    servers.create(infra, "db-1", Recorder())
    with pytest.raises(ValidationError, match=r"p.txt:2: undefined template value: "
                                              "'nosuch' is undefined"):
        installs.install(infra, "db-1", "page", Recorder())
    (tdir / "templates" / "p.txt").write_text("host {{ hostname }} owner {{ setting_owner }}\n")
    installs.install(infra, "db-1", "page", Recorder())
    root = Path(StateStore().server("demo", "db-1")["root"])
    assert (root / "srv" / "p.txt").read_text() == "host db-1 owner platform-team\n"
