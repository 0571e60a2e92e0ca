"""`--plan` on the business commands with the local provider: the workflow and
each task's action from a read of the provider and the taskserv records; no
change, no daemon. (The aws provider's plans: tests/test_aws_provider.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "infra" / "demo"


def actions(*args: str) -> dict[str, str]:
    r = run_cli("--json", *args, "--plan")
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads(r.stdout)
    assert plan["provider"] == "local"
    return {t["id"]: t["action"] for t in plan["tasks"]}


def test_plans_of_every_command_before_and_after(tmp_path, isolated):
    infra = tmp_path / "ws" / "infra" / "demo"
    shutil.copytree(EXAMPLE, infra)
    data = Path(isolated["PROVISIONING_STORAGE_DATA_DIR"])
    before = actions("cluster", "create", "demo", "--infra", str(infra))
    assert before["create-web-1"] == "create" and before["install-web-1-web"] == "install"
    assert before["check-demo"] == "check"
    assert set(actions("taskserv", "create", "web", "--infra", str(infra)).values()) == {
        "install"}
    assert actions("server", "delete", "web-1", "--infra", str(infra)) == {
        "delete-web-1": "absent"}
    assert not (data / "state").exists()  # nothing was made, not even a record
    text = run_cli("server", "create", "--infra", str(infra), "--plan").stdout
    assert text.startswith("Plan for workflow server-create-demo-all (infra demo, provider "
                           "local): 3 task(s), 3 change(s); nothing was submitted")

    r = run_cli("--direct", "taskserv", "create", "kvstore", "--server", "web-1", "--infra",
                str(infra), timeout=120)
    assert r.returncode != 0  # web-1 does not exist yet: the install fails
    r = run_cli("--direct", "server", "create", "web-1", "--infra", str(infra), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("--direct", "taskserv", "create", "kvstore", "--server", "web-1", "--infra",
                str(infra), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        after = actions("cluster", "create", "demo", "--infra", str(infra))
        assert after["create-web-1"] == "exists" and after["create-web-2"] == "create"
        assert after["install-web-1-kvstore"] == "installed"
        assert after["install-web-1-web"] == "install"
        assert actions("taskserv", "delete", "kvstore", "--infra", str(infra)) == {
            "remove-web-1-kvstore": "delete"}
        gone = actions("cluster", "delete", "demo", "--infra", str(infra))
        assert gone == {"delete-web-1": "delete", "delete-web-2": "absent",
                        "delete-db-1": "absent", "forget-demo": "forget"}
        views = json.loads(run_cli("--json", "server", "list").stdout)
        assert [(v["hostname"], v["drift"]) for v in views] == [("web-1", None)]
    finally:
        r = run_cli("--direct", "server", "delete", "web-1", "--infra", str(infra),
                    timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
