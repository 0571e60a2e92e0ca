"""Business CLI commands and op scripts, run as real processes (direct mode)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.ops import procs
from tests.conftest import REPO, free_port, run_cli
from tests.test_taskservs import reap_services  # noqa: F401 - fixture

EXAMPLE = REPO / "examples" / "infra" / "demo"

# Every service a test starts is stopped by recorded pid + create time.
pytestmark = pytest.mark.usefixtures("reap_services")
LIB = REPO / "provisioning" / "lib"


@pytest.fixture
def infra_dir(tmp_path):
    d = tmp_path / "ws" / "infra" / "demo"
    shutil.copytree(EXAMPLE, d)
    return d


def no_daemon_env() -> dict[str, str]:
    port = free_port()
    return {"PROVISIONING_ORCHESTRATOR_ENDPOINT": f"http://127.0.0.1:{port}",
            "PROVISIONING_SERVER_PORT": str(port)}


def test_server_list_and_show_never_start_a_daemon(isolated):
    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    env = no_daemon_env()
    r = run_cli("server", "list", env=env)
    assert r.returncode == 0, r.stderr
    assert "no servers" in r.stdout
    r = run_cli("server", "list", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    r = run_cli("server", "show", "ghost", env=env)
    assert r.returncode == 2 and "server ghost does not exist" in r.stderr
    assert not (data / "orchestrator.pid").exists() and not (data / "token").exists()


def test_create_twice_and_delete_missing_say_so(infra_dir, isolated):
    env = no_daemon_env()
    first = run_cli("--direct", "server", "create", "db-1", "--infra", str(infra_dir), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "server db-1 created at" in first.stdout
    second = run_cli("--direct", "server", "create", "db-1", "--infra", str(infra_dir), env=env)
    assert second.returncode == 0
    assert "server db-1 already exists" in second.stdout and "nothing to do" in second.stdout
    r = run_cli("server", "list", "--json", env=env)
    [view] = json.loads(r.stdout)
    assert view["hostname"] == "db-1" and view["status"] == "running"
    for _ in range(2):
        gone = run_cli("--direct", "server", "delete", "web-2", "--infra", str(infra_dir),
                       env=env)
        assert gone.returncode == 0 and "does not exist" in gone.stdout
    deleted = run_cli("--direct", "server", "delete", "db-1", "--infra", str(infra_dir), env=env)
    assert deleted.returncode == 0 and "server db-1 deleted" in deleted.stdout
    assert not (Path(view["root"])).exists()
    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    assert not (data / "orchestrator.pid").exists()


def test_taskserv_commands_and_dead_process_in_list(infra_dir, isolated):
    env = no_daemon_env()
    r = run_cli("taskserv", "list", "--available", "--infra", str(infra_dir), env=env)
    assert r.returncode == 0 and "kvstore" in r.stdout and "web" in r.stdout
    assert run_cli("--direct", "server", "create", "web-2", "--infra", str(infra_dir),
                   env=env).returncode == 0
    r = run_cli("--direct", "taskserv", "create", "web", "--infra", str(infra_dir),
                "--server", "web-2", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(run_cli("taskserv", "list", "--json", env=env).stdout)
    assert [(t["name"], t["status"]) for t in rows] == [("kvstore", "running"),
                                                        ("web", "running")]
    web = next(t for t in rows if t["name"] == "web")
    assert procs.stop(web["processes"][0])
    listing = run_cli("server", "list", env=env).stdout
    assert "degraded" in listing and "web(dead)" in listing
    r = run_cli("--direct", "taskserv", "delete", "kvstore", "--infra", str(infra_dir),
                "--server", "web-2", env=env)
    assert r.returncode == 1, r.stdout + r.stderr  # refused: web requires kvstore
    rows = json.loads(run_cli("taskserv", "list", "--json", env=env).stdout)
    assert [t["name"] for t in rows] == ["kvstore", "web"]
    r = run_cli("--direct", "taskserv", "delete", "web", "--infra", str(infra_dir), env=env)
    assert r.returncode == 0
    rows = json.loads(run_cli("taskserv", "list", "--json", env=env).stdout)
    assert [t["name"] for t in rows] == ["kvstore"]


def test_op_scripts_follow_the_task_protocol(infra_dir, isolated):
    def op(path: str, params: dict) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(LIB / path)], input=json.dumps(params),
                              capture_output=True, text=True, timeout=60)

    r = op("servers/create.py", {"infra": str(infra_dir), "server": "db-1"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert any(line.startswith("PROGRESS: 10 ") for line in lines)
    result = json.loads(lines[-1].removeprefix("RESULT: "))
    assert result["changed"] is True and result["address"].startswith("127.")
    listed = op("servers/list.py", {})
    assert json.loads(listed.stdout.splitlines()[-1][8:])["servers"][0]["hostname"] == "db-1"
    bad = op("taskservs/create.py", {"infra": str(infra_dir), "server": "ghost",
                                     "taskserv": "kvstore"})
    assert bad.returncode == 1 and "server ghost" in bad.stderr
    assert json.loads(bad.stdout.splitlines()[-1][8:])["error"]
    gone = op("servers/delete.py", {"infra": str(infra_dir), "server": "db-1"})
    assert gone.returncode == 0 and '"changed": true' in gone.stdout
