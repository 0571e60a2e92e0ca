"""GET /workflows in pages: limit, offset, total and counts (what the dashboard's
list of 1,000 workflows reads, one page at a time)."""

from __future__ import annotations

import pytest

from tests.daemon_fixture import start_daemon

N = 120


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    """A daemon with N workflows: one running (it blocks the only task slot),
    the rest queued behind it, newest first."""
    import os

    base = tmp_path_factory.mktemp("pages")
    env = {k: None for k in os.environ if k.startswith("PROVISIONING_")}
    env.update({"PROVISIONING_SHARE_DIR": str(base / "share"),
                "PROVISIONING_ETC_DIR": str(base / "etc"),
                "PROVISIONING_USER_CONFIG_DIR": str(base / "userconfig")})
    d = start_daemon(base, env=env, storage={"data_dir": str(base / "data")},
                     executor={"max_concurrent_tasks": 1, "shutdown_grace_seconds": 1})
    ids = []
    for i in range(N):
        task = ({"id": "t", "op": "shell.run", "params": {"argv": ["sleep", "300"]}} if i == 0
                else {"id": "t", "op": "noop"})
        status, body = d.request("POST", "/workflows", {"workflow": {"name": f"wf-{i}"},
                                                        "tasks": [task]})
        assert status == 202
        ids.append(body["workflow_id"])
    d.wait_workflow(ids[0], ("running",))
    yield d, ids[::-1]  # newest first, as listed
    d.stop()


def test_pages_cover_the_list_once_in_order(listed):
    d, newest_first = listed
    seen = []
    for offset in range(0, N, 50):
        status, page = d.request("GET", f"/workflows?limit=50&offset={offset}")
        assert status == 200
        assert page["total"] == N and page["offset"] == offset and page["limit"] == 50
        assert len(page["workflows"]) == min(50, N - offset)
        assert "tasks" not in page["workflows"][0]  # summaries only
        seen += [w["workflow_id"] for w in page["workflows"]]
    assert seen == newest_first
    status, page = d.request("GET", f"/workflows?limit=50&offset={N + 5}")
    assert status == 200 and page["workflows"] == [] and page["total"] == N


def test_counts_cover_every_workflow_whatever_the_filter(listed):
    d, newest_first = listed
    status, page = d.request("GET", "/workflows?status=queued&limit=10&offset=5")
    assert status == 200
    assert page["counts"] == {"queued": N - 1, "running": 1, "succeeded": 0, "failed": 0,
                              "cancelled": 0}
    assert page["total"] == N - 1
    assert [w["workflow_id"] for w in page["workflows"]] == newest_first[5:15]
    assert {w["status"] for w in page["workflows"]} == {"queued"}
    status, page = d.request("GET", "/workflows?status=running&limit=10")
    assert page["total"] == 1 and page["workflows"][0]["workflow_id"] == newest_first[-1]


def test_without_limit_the_whole_list_comes_back(listed):
    d, newest_first = listed
    status, page = d.request("GET", "/workflows")
    assert status == 200 and page["limit"] is None and page["total"] == N
    assert [w["workflow_id"] for w in page["workflows"]] == newest_first
    status, page = d.request("GET", "/workflows?offset=100")
    assert [w["workflow_id"] for w in page["workflows"]] == newest_first[100:]


@pytest.mark.parametrize("query, message", [
    ("limit=0", "'limit' must be an integer >= 1"),
    ("limit=1001", "'limit' must be at most 1000"),
    ("limit=-1", "'limit' must be an integer >= 1"),
    ("limit=ten", "'limit' must be an integer >= 1"),
    ("offset=-5", "'offset' must be an integer >= 0"),
    ("limit=5&limit=6", "given more than once"),
    ("page=2", "unknown query parameter 'page'"),
])
def test_bad_page_parameters_are_400_naming_the_parameter(listed, query, message):
    d, _ = listed
    status, body = d.request("GET", f"/workflows?{query}")
    assert status == 400 and message in body["error"], body
