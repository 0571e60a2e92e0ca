"""The `ssh` provider on real sshd test hosts (tests/hosts.py): adopting, running,
copying, forgetting; and a whole cluster through the real daemon."""

from __future__ import annotations

import json
import platform
import re
import urllib.request
from pathlib import Path

import psutil
import pytest

from provisioning.errors import ValidationError
from provisioning.ops.infra import ServerDef, load_infra
from provisioning.ops.providers.ssh import SshProvider
from provisioning.ops.state import StateStore
from provisioning.transport import close_masters, control_dir
from tests.conftest import run_cli
from tests.hosts import (
    ssh_hosts,  # noqa: F401 - the fixture
    write_web_taskserv,
)

HTTP_PORT = 18093

FLAKY = """#!/bin/sh
[ -f "{marker}" ] || {{ echo "flaky: not yet" >&2; exit 5; }}
echo ok
"""


def _write_taskservs(ws: Path, marker: Path) -> None:
    write_web_taskserv(ws, "pyhttp", HTTP_PORT, "pyhttp on")
    flaky = ws / "taskservs" / "flaky"
    flaky.mkdir(parents=True)
    (flaky / "taskserv.toml").write_text('[taskserv]\ndescription = "fails until fixed"\n')
    (flaky / "install").write_text(FLAKY.format(marker=marker))
    (flaky / "install").chmod(0o755)


def _write_infra(d: Path, hosts, *, extra: str = "", taskservs=("pyhttp",)) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lines = ['[infra]\nname = "rack"\nprovider = "ssh"\n',
             f'[provider]\nuser = "root"\nidentity_file = "{hosts[0].identity_file}"\n'
             'trust_on_first_use = false\nconnect_timeout = 3\n']
    for h in hosts:
        lines.append(f'[[servers]]\nhostname = "{h.name}"\naddress = "{h.address}"\n'
                     f'host_key = "{h.host_key}"\nroot = "{h.root}"\n'
                     f'taskservs = {json.dumps(list(taskservs))}\n')
    lines.append(extra)
    names = [h.name for h in hosts] + re.findall(r'hostname = "(gone\d*)"', extra)
    lines.append(f'[clusters.rack]\nservers = {json.dumps(names)}\n')
    (d / "settings.toml").write_text("\n".join(lines))
    return d


def test_validation_names_the_key(tmp_path):
    d = tmp_path / "ws" / "infra" / "rack"
    d.mkdir(parents=True)
    (d / "settings.toml").write_text('[infra]\nprovider = "ssh"\n[[servers]]\nhostname = "a"\n')
    with pytest.raises(ValidationError, match=r"servers\[0\] \(a\): address is required"):
        load_infra(d)
    (d / "settings.toml").write_text('[infra]\nprovider = "ssh"\n[provider]\nidentity = "x"\n')
    with pytest.raises(ValidationError, match="identity: unknown key"):
        load_infra(d)
    (d / "settings.toml").write_text('[infra]\nprovider = "ssh"\n[[servers]]\nhostname = "a"\n'
                                     'address = "10.0.0.1"\nhost_key = "nonsense"\n')
    with pytest.raises(ValidationError, match="not an OpenSSH public key"):
        load_infra(d)


def test_adopt_run_copy_and_forget(ssh_hosts, tmp_path, isolated):  # noqa: F811
    (h,) = ssh_hosts(1)
    state = StateStore()
    p = SshProvider(infra="rack", settings={"user": "root", "identity_file":
                                            str(h.identity_file), "connect_timeout": 3},
                    state=state)
    server = ServerDef(hostname=h.name, connection={"address": h.address,
                                                    "host_key": h.host_key,
                                                    "root": str(h.root)})
    try:
        record, created = p.create_server(server)
        assert created and record["address"] == h.address
        facts = record["facts"]
        assert facts["arch"] == platform.machine() and facts["cpus"] >= 1
        assert facts["memory_mb"] > 0 and facts["os"]
        assert facts["python"] and facts["python"].count(".") == 2
        assert p.create_server(server)[1] is False
        assert p.list_servers() == [h.name] and p.status(h.name) == "running"
        assert p.find_server(h.name)["address"] == h.address
        assert p.connection(record)["identity_file"] == str(h.identity_file)
        out = p.run(h.name, ["sh", "-c", 'pwd; echo "$PROVISIONING_HOST_NAME"'])
        assert out.stdout.split() == [str(h.root), h.name]
        src = tmp_path / "f.txt"
        src.write_text("hello")
        p.copy_file(h.name, src, "opt/provisioning/taskservs/t/f.txt", mode=0o644)
        assert (h.root / "opt/provisioning/taskservs/t/f.txt").read_text() == "hello"
        (h.root / "etc").mkdir()
        (h.root / "etc" / "keep").write_text("the host's own")
        with pytest.raises(Exception, match="leaves the root"):
            p.copy_file(h.name, src, "../../escape")
        h.pause()
        found = p.list_found()
        assert found[0]["state"] == "unreachable" and "unreachable" in found[0]["reason"]
        h.resume()
        assert p.delete_server(h.name) is True
        assert not (h.root / "opt/provisioning/taskservs").exists()
        assert (h.root / "etc" / "keep").read_text() == "the host's own"  # never destroys
        assert p.list_servers() == [] and p.status(h.name) == "missing"
        assert p.delete_server(h.name) is False
    finally:
        h.resume()
        close_masters(state.data_dir)


def assert_no_masters(data: Path) -> None:
    cm = control_dir(data)
    assert not (cm.exists() and list(cm.iterdir())), list(cm.iterdir())
    left = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(f"ControlPath={cm}" in a for a in p.info["cmdline"] or []):
                left.append(p)
        except psutil.Error:
            pass
    for p in left:
        p.kill()
    assert not left, "master connections left running"


def _views(common) -> dict:
    r = run_cli(*common, "server", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {v["hostname"]: v for v in json.loads(r.stdout)}


@pytest.mark.slow
def test_cluster_on_three_hosts_through_the_daemon(ssh_hosts, tmp_path, isolated):  # noqa: F811
    from tests.daemon_fixture import start_daemon

    hosts = ssh_hosts(3)
    ws = tmp_path / "ws"
    marker = tmp_path / "fixed"
    _write_taskservs(ws, marker)
    gone = (f'[[servers]]\nhostname = "gone"\naddress = "{ssh_hosts.unused_address()}"\n'
            f'host_key = "{hosts[0].host_key}"\ntaskservs = ["pyhttp"]\n')
    infra = _write_infra(ws / "infra" / "rack", hosts, extra=gone)
    d = start_daemon(tmp_path)
    try:
        common = ("--config", str(d.config_file), "--endpoint", d.url)
        r = run_cli(*common, "--orchestrated", "cluster", "create", "rack", "--infra",
                    str(infra), "--wait", timeout=240)
        assert r.returncode == 1, r.stdout + r.stderr  # `gone` fails; the others succeed
        wid = re.search(r"Workflow submitted: (\S+)", r.stdout).group(1)
        view = json.loads(run_cli(*common, "--json", "workflow", "status", wid).stdout)
        failed = [t for t in view["tasks"] if t["status"] == "failed"]
        assert [t["id"] for t in failed] == ["create-gone"], view["tasks"]
        log = run_cli(*common, "workflow", "logs", wid, "--task", "create-gone").stdout
        assert "gone (10.213.255.2:22): unreachable" in log.replace("127.213", "10.213"), log
        views = _views(common)
        assert "gone" not in views
        for h in hosts:
            assert views[h.name]["status"] == "running", views[h.name]
            page = urllib.request.urlopen(f"http://{h.address}:{HTTP_PORT}/", timeout=5)
            assert page.read().decode().strip() == f"pyhttp on {h.name} at {h.address}"
        assert [h.accepted() for h in hosts] == [1, 1, 1]  # one connection per host

        # A failing install: retry re-runs only it.
        r = run_cli(*common, "--orchestrated", "taskserv", "create", "flaky", "--infra",
                    str(infra), "--server", hosts[0].name, "--wait", timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr
        wid = re.search(r"Workflow submitted: (\S+)", r.stdout).group(1)
        marker.write_text("ok")
        r = run_cli(*common, "workflow", "retry", wid, "--wait", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        view = json.loads(run_cli(*common, "--json", "workflow", "status", wid).stdout)
        assert [t["attempts"] for t in view["tasks"]] == [2]

        # Unreachable shows as such, with the reason.
        hosts[2].pause()
        r = run_cli(*common, "server", "list")
        assert re.search(rf"{hosts[2].name} .*unreachable", r.stdout), r.stdout
        assert f"{hosts[2].name}: " in r.stdout
        hosts[2].resume()

        infra_gone = _write_infra(ws / "infra" / "rack", hosts)  # without `gone`
        r = run_cli(*common, "--orchestrated", "cluster", "delete", "rack", "--infra",
                    str(infra_gone), "--wait", timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        assert _views(common) == {}
        for h in hosts:  # clean and still reachable
            assert not (h.root / "srv" / "pyhttp").exists()
            assert not (h.root / "opt" / "provisioning" / "taskservs").exists()
            assert h.listening()
    finally:
        for h in hosts:
            h.resume()
        d.stop()
    assert_no_masters(Path(d.data_dir))  # the daemon closed them at shutdown


def test_rack_example_on_two_hosts_direct(ssh_hosts, tmp_path, isolated):  # noqa: F811
    """examples/infra/rack with its addresses and keys replaced by two test hosts'."""
    import shutil

    from tests.conftest import REPO

    hosts = ssh_hosts(2)
    ws = tmp_path / "ws"
    shutil.copytree(REPO / "examples" / "infra" / "rack", ws / "infra" / "rack")
    shutil.copytree(REPO / "examples" / "taskservs" / "hello", ws / "taskservs" / "hello")
    f = ws / "infra" / "rack" / "settings.toml"
    text = f.read_text().replace("~/.ssh/id_ed25519", str(hosts[0].identity_file))
    for h, n in zip(hosts, ("192.0.2.11", "192.0.2.12"), strict=True):
        text = text.replace(f'address = "{n}"', f'address = "{h.address}"\n'
                            f'root = "{h.root}"', 1)
    text = text.replace('root = "/"', "")
    for h in hosts:
        text = re.sub(r'host_key = "ssh-ed25519 AAAAC3[^"]*Replace[^"]*"',
                      f'host_key = "{h.host_key}"', text, count=1)
    f.write_text(text)
    infra = load_infra(ws / "infra" / "rack")
    assert infra.provider == "ssh" and [s.hostname for s in infra.servers] == ["node-1", "node-2"]
    r = run_cli("--direct", "cluster", "create", "rack", "--infra", str(f.parent), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    for h, name in zip(hosts, ("node-1", "node-2"), strict=True):
        page = urllib.request.urlopen(f"http://{h.address}:18094/", timeout=5).read().decode()
        assert page == f"hello from the rack from {name}\n"
    r = run_cli("--direct", "cluster", "delete", "rack", "--infra", str(f.parent), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(not (h.root / "srv" / "hello").exists() for h in hosts)
    assert_no_masters(Path(isolated["PROVISIONING_STORAGE_DATA_DIR"]))
