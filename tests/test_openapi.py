"""GET /openapi.json stays true: every route is described, every described route exists."""

from __future__ import annotations

import pytest

from provisioning.orchestrator.endpoints import ROUTES
from provisioning.orchestrator.openapi import openapi_document
from tests.daemon_fixture import start_daemon

DESIGN_ROUTES = {  # DESIGN.md section 5, verbatim
    ("GET", "/health"), ("POST", "/workflows/servers/create"),
    ("POST", "/workflows/servers/delete"), ("POST", "/workflows/taskserv/create"),
    ("POST", "/workflows/cluster/create"), ("POST", "/workflows"), ("GET", "/workflows"),
    ("GET", "/workflows/{id}"), ("POST", "/workflows/{id}/cancel"),
    ("POST", "/workflows/{id}/retry"), ("GET", "/workflows/{id}/events"),
    ("GET", "/tasks/{id}"), ("GET", "/tasks/{id}/log"), ("POST", "/tasks/{id}/progress"),
    ("GET", "/openapi.json"),
    ("POST", "/auth/codes"),  # section 16: the dashboard's one-time sign-in codes
}


def described() -> set[tuple[str, str]]:
    doc = openapi_document()
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


def generic(path: str) -> str:
    return path.replace("{workflow_id}", "{id}").replace("{task_key}", "{id}")


def test_document_is_openapi_3_with_components():
    doc = openapi_document(1234)
    assert doc["openapi"].startswith("3.")
    assert doc["servers"][0]["url"] == "http://127.0.0.1:1234"
    assert "bearer" in doc["components"]["securitySchemes"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and op["responses"], (method, path)
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    assert "{" + param["name"] + "}" in path
    refs = {v.rsplit("/", 1)[1] for v in _find_refs(doc)}
    assert refs <= set(doc["components"]["schemas"]) | set(doc["components"]["responses"])


def _find_refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _find_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _find_refs(v)


def test_every_route_is_described_and_every_description_is_a_route():
    routed = {(r.method, r.path) for r in ROUTES}
    assert routed == described()


def test_the_routes_are_the_ones_design_md_promises():
    assert {(m, generic(p)) for m, p in described()} == DESIGN_ROUTES


def test_only_health_is_public():
    doc = openapi_document()
    public = {(m.upper(), p) for p, ops in doc["paths"].items() for m, op in ops.items()
              if op.get("security") == []}
    assert public == {("GET", "/health")}
    assert {(r.method, r.path) for r in ROUTES if r.auth == "none"} == public


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import os

    base = tmp_path_factory.mktemp("openapi")
    env = {k: None for k in os.environ if k.startswith("PROVISIONING_")}
    env.update({"PROVISIONING_SHARE_DIR": str(base / "share"),
                "PROVISIONING_ETC_DIR": str(base / "etc"),
                "PROVISIONING_USER_CONFIG_DIR": str(base / "userconfig")})
    d = start_daemon(base, env=env, storage={"data_dir": str(base / "data")})
    yield d
    d.stop()


def test_live_document_matches_and_every_described_route_answers(live):
    status, doc = live.request("GET", "/openapi.json")
    assert status == 200 and doc == openapi_document(live.port)
    for method, path in sorted(described()):
        url = (path.replace("{workflow_id}", "00000000-0000-0000-0000-000000000000")
                   .replace("{task_key}", "00000000-0000-0000-0000-000000000000.t"))
        status, body = live.request(method, url, {} if method == "POST" else None)
        # served by a handler: not "no such endpoint" (404 from the router) and not 405
        assert status != 405, (method, path, body)
        if status == 404:
            assert not body["error"].startswith("no such endpoint"), (method, path)
        assert status < 500, (method, path, status, body)
    # and something undescribed does not answer
    status, body = live.request("GET", "/workflows/x/unknown")
    assert status == 404 and body["error"].startswith("no such endpoint")
