"""`--plan` for the ssh provider: read from the hosts, nothing changed, no daemon.

Three namespaced ssh hosts (tests/test_ssh_taskservs.py's infra): all adopted,
nginx installed on lb-1, redis installed on db-1 and then its redis-server
killed (state still says installed), pyhttp never installed on web-1. The
plan must say what the hosts say; an unreachable host shows with the reason;
the hosts' file trees and the master connections are as before.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from provisioning.transport import control_dir
from tests.conftest import run_cli
from tests.hosts import ssh_hosts  # noqa: F401 - the fixture
from tests.test_ssh_taskservs import pytestmark as needs_nginx_redis
from tests.test_ssh_taskservs import write_workspace

pytestmark = needs_nginx_redis


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_dir()}


def masters(cm: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(f"ControlPath={cm}" in a for a in p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            pass
    return found


def plan(infra: Path, *args: str) -> dict:
    r = run_cli("--json", *args, "--infra", str(infra), "--plan", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return {t["id"]: t for t in json.loads(r.stdout)["tasks"]}


def ok(*args: str) -> None:
    r = run_cli("--direct", *args, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_plan_reads_the_hosts(ssh_hosts, tmp_path, isolated):  # noqa: F811
    hosts = ssh_hosts(3)
    web, lb, db = hosts
    infra = write_workspace(tmp_path / "ws", hosts)
    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    try:
        db.pause()  # not adopted yet: the plan asks whether each host answers
        before = plan(infra, "cluster", "create", "rack")
        db.resume()
        assert {k: t["action"] for k, t in before.items()} == {
            "create-web-1": "create", "create-lb-1": "create", "create-db-1": "unreachable",
            "install-web-1-pyhttp": "install", "install-lb-1-nginx": "install",
            "install-db-1-redis": "unreachable", "check-rack": "check"}
        assert "no answer within" in before["create-db-1"]["detail"], before["create-db-1"]
        assert [h.accepted() for h in (web, lb)] == [1, 1]
        assert not (data / "ssh" / "known_hosts").exists() or \
            (data / "ssh" / "known_hosts").read_text().strip() == ""  # a throwaway one

        ok("server", "create", "--infra", str(infra))
        ok("taskserv", "create", "nginx", "--infra", str(infra), "--server", "lb-1")
        ok("taskserv", "create", "redis", "--infra", str(infra), "--server", "db-1")
        pid = int((db.root / "run/provisioning-redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)  # state still says installed; the host says not
        trees = [tree(h.root) for h in hosts]

        p = plan(infra, "cluster", "create", "rack")
        assert {k: t["action"] for k, t in p.items()} == {
            "create-web-1": "exists", "create-lb-1": "exists", "create-db-1": "exists",
            "install-web-1-pyhttp": "install", "install-lb-1-nginx": "installed",
            "install-db-1-redis": "install", "check-rack": "check"}
        assert "no " in p["install-web-1-pyhttp"]["detail"]
        assert "nginx running" in p["install-lb-1-nginx"]["detail"]
        assert "check fails" in p["install-db-1-redis"]["detail"]
        d = plan(infra, "taskserv", "delete", "nginx", "--server", "lb-1")
        assert [t["action"] for t in d.values()] == ["delete"]
        d = plan(infra, "taskserv", "delete", "pyhttp", "--server", "web-1")
        assert [t["action"] for t in d.values()] == ["absent"]

        db.pause()
        p = plan(infra, "cluster", "create", "rack")
        db.resume()
        assert p["create-db-1"]["action"] == "unreachable"
        assert p["install-db-1-redis"]["action"] == "unreachable"
        assert "unreachable" in p["install-db-1-redis"]["detail"]
        assert p["install-lb-1-nginx"]["action"] == "installed"  # the others still read
        db.pause()  # a delete must reach the host to remove our files: it would fail
        (gone,) = plan(infra, "server", "delete", "db-1").values()
        db.resume()
        assert gone["action"] == "unreachable" and "no answer" in gone["detail"], gone
        (kept,) = plan(infra, "server", "delete", "web-1").values()
        assert kept["action"] == "forget" and "the host itself is kept" in kept["detail"], kept
        r = run_cli("cluster", "create", "rack", "--infra", str(infra), "--plan", timeout=120)
        assert r.returncode == 0 and "nothing was submitted" in r.stdout, r.stderr
        assert "installed  nginx is installed on lb-1" in r.stdout, r.stdout

        assert [tree(h.root) for h in hosts] == trees  # nothing changed on the hosts
        cm = control_dir(data)  # the plan closed the masters it opened (lock files stay)
        assert [s for s in cm.iterdir() if s.suffix != ".lock"] == []
        assert masters(cm) == []
        assert not (data / "orchestrator.pid").exists() and not list(data.glob("*.sock"))
    finally:
        for h in hosts:
            h.resume()
        run_cli("--direct", "cluster", "delete", "rack", "--infra", str(infra), timeout=180)
