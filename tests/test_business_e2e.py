"""Acceptance: the example infra provisioned from nothing, its services answering at
their addresses, then torn down leaving no process and no directory; direct and
through the real daemon."""

from __future__ import annotations

import json
import re
import shutil
import socket
import urllib.request
from pathlib import Path

import pytest

from provisioning import procinfo
from tests.conftest import REPO, run_cli
from tests.test_taskservs import reap_services, recorded_processes  # noqa: F401

EXAMPLE = REPO / "examples" / "infra" / "demo"

# Every service a test starts is stopped by recorded pid + create time.
pytestmark = pytest.mark.usefixtures("reap_services")


@pytest.fixture
def infra_dir(tmp_path):
    d = tmp_path / "ws" / "infra" / "demo"
    shutil.copytree(EXAMPLE, d)
    return d


def assert_services_answer(views: list[dict]) -> None:
    assert {v["hostname"] for v in views} == {"web-1", "web-2", "db-1"}
    assert len({v["address"] for v in views}) == 3 or all(v["port_offset"] for v in views)
    for v in views:
        assert v["status"] == "running", v
        ports = {t["name"]: t["ports"] for t in v["taskservs"]}
        with socket.create_connection((v["address"], ports["kvstore"]["kv"]), timeout=5) as s:
            s.sendall(b"PING\n")
            assert s.recv(16) == b"PONG\n"
        if v["hostname"].startswith("web"):
            url = f"http://{v['address']}:{ports['web']['http']}/"
            page = urllib.request.urlopen(url, timeout=5).read().decode()
            assert f"server: {v['hostname']} ({v['address']}" in page


def assert_torn_down(data: Path, pids: list[dict], views: list[dict]) -> None:
    assert pids and not any(procinfo.is_alive(p) for p in pids)
    for v in views:
        assert not Path(v["root"]).exists()
    assert not (data / "state" / "local" / "demo").exists()
    assert not (data / "state" / "infras" / "demo").exists()


def test_cluster_direct_end_to_end(infra_dir, isolated):
    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    r = run_cli("--direct", "cluster", "create", "demo", "--infra", str(infra_dir), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cluster demo healthy (5 check(s) passed)" in r.stdout
    views = json.loads(run_cli("server", "list", "--json").stdout)
    assert_services_answer(views)
    pids = recorded_processes(data)
    assert len(pids) == 5
    again = run_cli("--direct", "cluster", "create", "demo", "--infra", str(infra_dir))
    assert again.returncode == 0 and again.stdout.count("nothing to do") == 8
    assert recorded_processes(data) == pids  # no second copy of any service
    r = run_cli("--direct", "cluster", "delete", "demo", "--infra", str(infra_dir), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_torn_down(data, pids, views)
    assert json.loads(run_cli("server", "list", "--json").stdout) == []
    r = run_cli("--direct", "cluster", "delete", "demo", "--infra", str(infra_dir))
    assert r.returncode == 0 and "nothing to delete" in r.stdout


@pytest.mark.slow
def test_cluster_through_the_daemon_and_retry_after_failed_install(
        tmp_path, infra_dir, isolated):
    from tests.daemon_fixture import start_daemon

    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    d = start_daemon(tmp_path)
    try:
        common = ("--config", str(d.config_file), "--endpoint", d.url)
        r = run_cli(*common, "--orchestrated", "cluster", "create", "demo", "--infra",
                    str(infra_dir), "--wait", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Workflow submitted:" in r.stdout
        views = json.loads(run_cli(*common, "server", "list", "--json").stdout)
        assert_services_answer(views)
        pids = recorded_processes(data)

        # A taskserv whose install fails until a marker exists: the workflow fails,
        # `workflow retry` re-runs only the failed task and succeeds.
        flaky = infra_dir.parent.parent / "taskservs" / "flaky"
        flaky.mkdir(parents=True)
        marker = tmp_path / "fixed"
        (flaky / "taskserv.toml").write_text("[taskserv]\nrequires = ['kvstore']\n")
        (flaky / "install.py").write_text(
            "import os, sys\n"
            f"if not os.path.exists({str(marker)!r}):\n"
            "    print('flaky: not yet', file=sys.stderr); sys.exit(5)\n")
        r = run_cli(*common, "--orchestrated", "taskserv", "create", "flaky", "--infra",
                    str(infra_dir), "--server", "db-1", "--wait", timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr
        wid = re.search(r"Workflow submitted: (\S+)", r.stdout).group(1)
        rows = json.loads(run_cli(*common, "taskserv", "list", "--json").stdout)
        assert ("flaky", "failed") in {(t["name"], t["status"]) for t in rows}
        marker.write_text("ok")
        r = run_cli(*common, "workflow", "retry", wid, "--wait", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        view = json.loads(run_cli(*common, "--json", "workflow", "status", wid).stdout)
        attempts = {t["id"]: t["attempts"] for t in view["tasks"]}
        assert attempts == {"install-db-1-kvstore": 1, "install-db-1-flaky": 2}
        rows = json.loads(run_cli(*common, "taskserv", "list", "--json").stdout)
        assert ("flaky", "running") in {(t["name"], t["status"]) for t in rows}

        r = run_cli(*common, "--orchestrated", "cluster", "delete", "demo", "--infra",
                    str(infra_dir), "--wait", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert_torn_down(data, pids, views)
    finally:
        d.stop()


def test_nushell_op_from_a_lib_dir(tmp_path, isolated):
    if shutil.which("nu") is None:
        pytest.skip("Nushell (`nu`) is not installed; CI may install it from npm 'nushell'")
    wf = tmp_path / "wf.toml"
    wf.write_text('[[tasks]]\nid = "inspect"\nop = "infra.inspect"\n'
                  f'params = {{ infra = "{EXAMPLE}" }}\n')
    r = run_cli("--direct", "workflow", "submit", str(wf),
                env={"PROVISIONING_LIB": str(REPO / "examples" / "lib")}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "inspect: 10% reading the infra definition" in r.stdout  # PROGRESS from nu
    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    logs = list(data.glob("direct/logs/*/inspect.log"))
    assert logs and "inspected 3 servers: web-1, web-2, db-1" in logs[0].read_text()
