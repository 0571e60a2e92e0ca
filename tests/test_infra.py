"""Infra definitions: finding, loading, validation errors, workflow shapes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from provisioning.errors import UsageError, ValidationError
from provisioning.ops.infra import find_workspace, load_infra, resolve_infra
from provisioning.planner import build_workflow
from tests.conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "infra" / "demo"

GOOD = """
[infra]
provider = "local"

[[servers]]
hostname = "a"
taskservs = ["web"]
"""


def make_infra(workspace: Path, text: str, name: str = "t") -> Path:
    d = workspace / "infra" / name
    d.mkdir(parents=True)
    (d / "settings.toml").write_text(text)
    return d


def test_example_infra_loads_with_dependency_order():
    infra = load_infra(EXAMPLE)
    assert infra.name == "demo" and infra.provider == "local"
    assert [s.hostname for s in infra.servers] == ["web-1", "web-2", "db-1"]
    assert infra.taskserv_plan("web-2") == ["kvstore", "web"]  # requires pulled in first
    assert infra.cluster("demo").servers == ("web-1", "web-2", "db-1")


def test_found_by_name_path_env_and_parent_dirs(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    d = make_infra(ws, GOOD)
    deep = ws / "sub" / "deeper"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_workspace() == ws.resolve()
    assert resolve_infra("t") == d.resolve()
    assert resolve_infra(str(d / "settings.toml")) == d.resolve()
    assert resolve_infra(None) == d.resolve()  # the only infra of the workspace
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROVISIONING_WORKSPACE", str(ws))
    assert resolve_infra("t") == d.resolve()
    with pytest.raises(UsageError, match="unknown infra 'nope'.*") as e:
        resolve_infra("nope")
    assert "t" in (e.value.hint or "")


@pytest.mark.parametrize("text, message", [
    ("[[servers]]\nhostname = 'a'\n", r"\[infra\] provider is missing"),
    ("[infra]\nprovider = 'nocloud'\n", r"unknown provider 'nocloud'"),
    ("[infra]\nprovider = 'local'\n[[servers]]\nhostname = 'a'\ntaskservs = ['nosuch']\n",
     r"servers\[0\]\.taskservs: unknown taskserv 'nosuch'"),
    ("[infra]\nprovider = 'local'\n[[servers]]\nhostname = 'a'\n[[servers]]\nhostname = 'a'\n",
     r"servers\[1\]\.hostname: duplicate hostname 'a' \(also servers\[0\]\)"),
    ("[infra]\nprovider = 'local'\n[[servers]]\nhostname = 'a'\ncolour = 'red'\n",
     r"servers\[0\]\.colour: unknown key"),
    ("[infra]\nprovider = 'local'\n[[servers]]\nhostname = 'a'\ntaskservs = 'web'\n",
     r"servers\[0\]\.taskservs must be a list"),
    ("[infra]\nprovider = 'local'\n[[servers]]\nhostname = 'not_valid!'\n",
     r"not a valid hostname"),
    ("[infra]\nprovider = 'local'\n[provider]\nloopback = 'sometimes'\n",
     r"\[provider\] loopback must be one of"),
    ("[infra]\nprovider = 'local'\n[clusters.c]\nservers = ['ghost']\n",
     r"clusters\.c\.servers: unknown server 'ghost'"),
    ("extra = 1\n[infra]\nprovider = 'local'\n", r"unknown top-level key 'extra'"),
    ("[infra]\nprovider = 'local'\nextra = 1\n", r"\[infra\]\.extra: unknown key"),
    ("[infra\n", r"invalid TOML"),
])
def test_bad_infra_files_name_file_and_key(tmp_path, text, message):
    d = make_infra(tmp_path / "ws", text)
    with pytest.raises(ValidationError, match=message) as e:
        load_infra(d)
    assert str(d / "settings.toml") in e.value.message
    assert e.value.exit_code == 2


def test_taskserv_dependency_cycle_is_printed(tmp_path):
    ws = tmp_path / "ws"
    for name, req in (("alpha", "beta"), ("beta", "gamma"), ("gamma", "alpha")):
        (ws / "taskservs" / name).mkdir(parents=True)
        (ws / "taskservs" / name / "taskserv.toml").write_text(
            f"[taskserv]\nrequires = ['{req}']\n")
    d = make_infra(ws, "[infra]\nprovider='local'\n[[servers]]\nhostname='a'\n"
                       "taskservs=['alpha']\n")
    with pytest.raises(ValidationError, match="taskserv dependency cycle: "
                                              "alpha -> beta -> gamma -> alpha"):
        load_infra(d)


@pytest.mark.parametrize("text, message", [
    ("[[servers]]\nhostname = 'a'\n", "provider is missing"),
    ("[infra]\nprovider = 'local'\n[[servers]]\nhostname = 'a'\ntaskservs = ['nosuch']\n",
     "unknown taskserv 'nosuch'"),
    ("[infra]\nprovider = 'local'\n[[servers]]\nhostname = 'a'\n[[servers]]\nhostname = 'a'\n",
     "duplicate hostname 'a'"),
])
def test_cli_exits_2_and_creates_nothing(tmp_path, isolated, text, message):
    d = make_infra(tmp_path / "ws", text)
    for args in (["cluster", "create", "t"], ["server", "create"]):
        r = run_cli("--direct", *args, "--infra", str(d))
        assert r.returncode == 2, r.stderr
        assert message in r.stderr and str(d / "settings.toml") in r.stderr
        assert "Traceback" not in r.stderr
    assert not (Path(isolated["PROVISIONING_STORAGE_DATA_DIR"]) / "state").exists()


def test_cluster_workflow_is_a_dag_with_absolute_infra(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    shutil.copytree(EXAMPLE, ws / "infra" / "demo")
    monkeypatch.chdir(ws)
    spec = build_workflow("cluster.create", "demo", {"cluster": "demo"})
    tasks = {t.id: t for t in spec.tasks}
    assert tasks["create-web-1"].depends_on == ()
    assert set(tasks["install-web-2-web"].depends_on) == {"create-web-2",
                                                          "install-web-2-kvstore"}
    assert tasks["install-web-2-kvstore"].depends_on == ("create-web-2",)
    assert set(tasks["check-demo"].depends_on) == set(tasks) - {"check-demo"}
    assert all(Path(t.params["infra"]).is_absolute() for t in spec.tasks)
    assert tasks["create-db-1"].params["infra"] == str((ws / "infra" / "demo").resolve())

    servers = build_workflow("server.create", "demo", {})
    assert [t.id for t in servers.tasks] == ["create-web-1", "create-web-2", "create-db-1"]
    assert all(t.depends_on == () for t in servers.tasks)  # parallel
    assert len(build_workflow("server.create", "demo", {"server": "db-1"}).tasks) == 1
    with pytest.raises(ValidationError, match="server 'ghost' is not defined"):
        build_workflow("server.create", "demo", {"server": "ghost"})
    with pytest.raises(ValidationError, match="cluster 'nope' is not defined"):
        build_workflow("cluster.create", "demo", {"cluster": "nope"})

    ts = build_workflow("taskserv.create", "demo", {"taskserv": "web"})
    assert [t.id for t in ts.tasks] == ["install-web-1-kvstore", "install-web-1-web",
                                        "install-web-2-kvstore", "install-web-2-web"]
    delete = build_workflow("cluster.delete", "demo", {"cluster": "demo"})
    assert set(tasks_of(delete)["forget-demo"].depends_on) == {
        "delete-web-1", "delete-web-2", "delete-db-1"}


def tasks_of(spec):
    return {t.id: t for t in spec.tasks}
