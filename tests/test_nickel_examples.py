"""Acceptance (DESIGN.md 14): the seeds' own Nickel examples, submitted through the real
daemon, run to success; their services answer; teardown leaves nothing running."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from provisioning import nickel
from tests.conftest import REPO, run_cli
from tests.test_taskservs import reap_services, recorded_processes  # noqa: F401

pytestmark = [
    pytest.mark.skipif(not nickel.library_available(), reason="py-nickel is not installed "
                       "(extra provisioning[nickel], Python >= 3.11)"),
    pytest.mark.usefixtures("reap_services"),
    pytest.mark.slow,
]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """examples/ copied: both .ncl files, the demo (TOML) and multicloud (Nickel) infras,
    and the workspace's own taskservs."""
    ws = tmp_path / "ws"
    examples = REPO / "examples"
    shutil.copytree(examples / "infra", ws / "infra")
    shutil.copytree(examples / "taskservs", ws / "taskservs")
    for name in ("server-cluster.ncl", "multi-cloud-deployment.ncl"):
        shutil.copy2(examples / name, ws / name)
    return ws


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def test_server_cluster_ncl_through_the_daemon(tmp_path: Path, workspace: Path, isolated):
    from tests.daemon_fixture import start_daemon

    d = start_daemon(tmp_path)
    common = ("--config", str(d.config_file), "--endpoint", d.url)
    try:
        # run from elsewhere: the file's `infra = "demo"` resolves next to the file
        r = run_cli(*common, "workflow", "submit", str(workspace / "server-cluster.ncl"),
                    "--wait", timeout=240, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        wid = re.search(r"Workflow submitted: (\S+)", r.stdout).group(1)
        view = json.loads(run_cli(*common, "--json", "workflow", "status", wid).stdout)
        assert view["name"] == "server-cluster" and view["status"] == "succeeded"
        assert view["counts"]["succeeded"] == 8  # 3 servers, 3 kvstores, 2 webs
        servers = {v["hostname"]: v for v in json.loads(
            run_cli(*common, "server", "list", "--json").stdout)}
        assert set(servers) == {"web-1", "web-2", "db-1"}
        web = servers["web-2"]
        port = {t["name"]: t["ports"] for t in web["taskservs"]}["web"]["http"]
        assert "server: web-2" in _get(f"http://{web['address']}:{port}/")
        r = run_cli(*common, "--orchestrated", "cluster", "delete", "demo", "--infra",
                    str(workspace / "infra" / "demo"), "--wait", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not recorded_processes(Path(isolated["PROVISIONING_STORAGE_DATA_DIR"]))
    finally:
        d.stop()


def test_multi_cloud_deployment_ncl_batch_through_the_daemon(tmp_path: Path, workspace: Path,
                                                             isolated):
    from tests.daemon_fixture import start_daemon

    d = start_daemon(tmp_path)
    common = ("--config", str(d.config_file), "--endpoint", d.url)
    try:
        r = run_cli(*common, "batch", "submit", str(workspace / "multi-cloud-deployment.ncl"),
                    "--wait", timeout=300, cwd=workspace)
        assert r.returncode == 0, r.stdout + r.stderr
        wid = re.search(r"Workflow submitted: (\S+)", r.stdout).group(1)
        view = json.loads(run_cli(*common, "--json", "batch", "status", wid).stdout)
        assert view["kind"] == "batch" and view["status"] == "succeeded"
        tasks = {t["id"]: t for t in view["tasks"]}
        servers = [f"server-node-{i}" for i in range(1, 6)]
        assert set(tasks) == {*servers, "kubernetes", "deploy-apps"}
        # the order the seeds describe: all servers, then Kubernetes, then the apps
        assert max(tasks[s]["finished_at"] for s in servers) <= tasks["kubernetes"]["started_at"]
        assert tasks["kubernetes"]["finished_at"] <= tasks["deploy-apps"]["started_at"]
        assert len({tasks[s]["started_at"] // 1 for s in servers}) <= 2  # started together
        views = json.loads(run_cli(*common, "server", "list", "--json").stdout)
        assert len(views) == 5
        for v in views:
            ports = {t["name"]: t["ports"] for t in v["taskservs"]}
            node = json.loads(_get(f"http://{v['address']}:{ports['kubernetes']['api']}"
                                   "/node.json"))
            assert node["name"] == v["hostname"] and node["status"] == "Ready"
            assert node["cluster"] == "multicloud"
            page = _get(f"http://{v['address']}:{ports['app']['http']}/")
            assert f"node {v['hostname']}" in page and "multi-cloud deployment" in page
        r = run_cli(*common, "--orchestrated", "cluster", "delete", "multicloud", "--infra",
                    str(workspace / "infra" / "multicloud"), "--wait", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not recorded_processes(Path(isolated["PROVISIONING_STORAGE_DATA_DIR"]))
    finally:
        d.stop()


def test_config_validate_and_plain_errors_on_the_examples(workspace: Path):
    for path, what in [(workspace / "server-cluster.ncl", "a valid workflow (8 tasks)"),
                       (workspace / "multi-cloud-deployment.ncl", "a valid workflow (7 tasks)"),
                       (workspace / "infra" / "multicloud" / "settings.ncl",
                        "a valid infra 'multicloud' (5 servers)")]:
        r = run_cli("config", "validate", str(path))
        assert r.returncode == 0 and r.stdout.strip() == f"ok: {path} is {what}", r.stderr
    settings = workspace / "infra" / "multicloud" / "settings.ncl"
    settings.write_text(settings.read_text().replace('zone = if', 'zone_name = if'))
    # a typo in the imported infra, found through the workflow: Nickel places an
    # extra field at the record that holds it
    r = run_cli("config", "validate", str(workspace / "multi-cloud-deployment.ncl"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"error: {settings}:14:3: contract broken by the value of "
                               "`servers`: extra field `zone_name`"), r.stderr
    assert "\x1b[" not in r.stderr and "Traceback" not in r.stderr


def _other_minor_python() -> str | None:
    """An interpreter (>= 3.11) of another CPython minor version than this one.
    (3.10 would need tomli, which a zipapp built on 3.11+ does not carry.)"""
    probe = "import sys; print(sys.version_info >= (3, 11), sys.version_info[1])"
    names = ("python3.13", "python3.12", "python3.11", "python3")
    candidates = [shutil.which(n, path="/usr/bin:/bin") for n in names]
    candidates += sorted(str(p) for p in Path("~/.pyenv/versions").expanduser().glob(
        "3.1*/bin/python3"))  # pyenv's interpreters, when its shims hide them
    for exe in dict.fromkeys(c for c in candidates if c):
        r = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=60)
        if r.returncode == 0 and r.stdout.split() not in (
                ["True", str(sys.version_info[1])], ["False", str(sys.version_info[1])]) \
                and r.stdout.startswith("True"):
            return exe
    return None


def test_zipapp_carries_py_nickel_for_its_build_python(tmp_path_factory, tmp_path: Path):
    from tests.test_packaging import build_dist_once, zipapp_env

    pyz = build_dist_once(tmp_path_factory)["dist"] / "provisioning"
    with zipfile.ZipFile(pyz) as z:
        names = set(z.namelist())
        info = json.loads(z.read("site-packages/provisioning/_zipapp_build.json"))
    assert "site-packages/provisioning/ncl/provisioning/workflow.ncl" in names
    tag = f"cpython-{sys.version_info[0]}{sys.version_info[1]}"
    assert [e.split(".")[1].startswith(tag) for e in info["optional_extensions"]] == [True]
    assert info["abi_tag"] == "py3"  # the core still runs on any CPython >= 3.10
    example = str(REPO / "examples" / "multi-cloud-deployment.ncl")
    env = zipapp_env(tmp_path / "shiv")
    # -S: the build's interpreter without its own site-packages, so the bundled copy is used
    r = subprocess.run([sys.executable, "-S", str(pyz), "config", "validate", example],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "a valid workflow (7 tasks)" in r.stdout, r.stderr
    other = _other_minor_python()
    if other is None:
        pytest.skip("no Python of another minor version here to check the message")
    r = subprocess.run([other, str(pyz), "config", "validate", example], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "the Nickel library cannot be loaded by Python" in r.stderr
    assert "no `nickel` binary on PATH" in r.stderr
