"""Dashboard sign-in and sessions over plain HTTP (DESIGN.md 16): one-time
codes, the session cookie, the CSRF token, what a session may do, and the
pages and files under /ui/. The browser tests are in test_dashboard_browser.py."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioning.orchestrator import sessions, ui
from provisioning.orchestrator.sessions import CODE_TTL_S, SessionStore
from tests.daemon_fixture import start_daemon, write_config
from tests.test_packaging import build_dist_once, zipapp_env


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the session store on its own (a clock we move, not a sleep) -------------------


def test_a_code_works_once_and_only_before_it_expires():
    clock = Clock()
    store = SessionStore(3600, clock=clock)
    first = store.mint_code()
    assert first["expires_in"] == CODE_TTL_S and first["path"] == f"/ui/login?code={first['code']}"
    assert store.exchange(first["code"]) is not None
    assert store.exchange(first["code"]) is None  # forgotten at the first use
    late = store.mint_code()["code"]
    clock.now += CODE_TTL_S + 1
    assert store.exchange(late) is None
    assert store.exchange("never-minted") is None
    assert store.counts() == {"codes": 0, "sessions": 1}


def test_a_session_needs_its_own_csrf_token_and_ends_after_the_idle_timeout():
    clock = Clock()
    store = SessionStore(60, clock=clock)
    session_id, csrf = store.exchange(store.mint_code()["code"])
    other_id, other_csrf = store.exchange(store.mint_code()["code"])
    assert store.check(session_id, csrf).ok
    assert store.check(session_id, None).status == 403
    assert store.check(session_id, other_csrf).status == 403  # tokens are per session
    assert store.check("forged", csrf).status == 401
    clock.now += 59
    assert store.check(session_id, csrf).ok  # activity restarts the idle clock
    clock.now += 59
    assert store.check(session_id, csrf).ok
    assert store.check(other_id, other_csrf).status == 401  # idle 118 s: gone
    clock.now += 61
    verdict = store.check(session_id, csrf)
    assert verdict.status == 401 and "provisioning orchestrator ui" in verdict.reason
    store.end(session_id)
    assert store.counts()["sessions"] == 0


def test_codes_and_sessions_are_bounded():
    store = SessionStore(3600)
    codes = [store.mint_code()["code"] for _ in range(sessions.MAX_CODES + 5)]
    assert store.counts()["codes"] == sessions.MAX_CODES
    assert store.exchange(codes[0]) is None  # the oldest were dropped
    assert store.exchange(codes[-1]) is not None
    for _ in range(sessions.MAX_SESSIONS + 3):
        store.exchange(store.mint_code()["code"])
    assert store.counts()["sessions"] == sessions.MAX_SESSIONS


def test_cookie_header_parsing_is_lenient_and_exact_about_the_name():
    name = sessions.cookie_name(9090)
    assert sessions.cookie_value(f"a=1; {name}=abc; b", name) == "abc"
    assert sessions.cookie_value(f"{name}_x=1; x{name}=2", name) is None
    assert sessions.cookie_value(None, name) is None
    assert sessions.cookie_value(f"{name}=", name) is None
    assert sessions.cookie_name(9090) != sessions.cookie_name(9091)


# -- against the real daemon ------------------------------------------------------


def sign_in(d) -> tuple[str, str, dict[str, str]]:
    """Mint a code with the token and spend it: (Cookie header, CSRF token, headers)."""
    status, grant = d.request("POST", "/auth/codes", {})
    assert status == 201, grant
    status, _ = d.request("GET", grant["path"], token=None)
    assert status == 303
    headers = dict(d.last_headers)
    cookie = headers["Set-Cookie"].split(";")[0]
    csrf = re.fullmatch(r"/ui/#csrf=([A-Za-z0-9_-]+)", headers["Location"]).group(1)
    return cookie, csrf, headers


def as_browser(d, method, path, cookie=None, csrf=None, body=None, **extra):
    headers = {"Origin": d.url} if method == "POST" else {}
    if cookie:
        headers["Cookie"] = cookie
    if csrf:
        headers["X-CSRF-Token"] = csrf
    headers.update(extra)
    return d.request(method, path, body, token=None, headers=headers)


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path, args=("-v",))
    yield d
    d.stop()


BLOCKER = {"workflow": {"name": "blocker"},
           "tasks": [{"id": "wait", "op": "shell.run", "params": {"argv": ["sleep", "300"]}}]}


def test_sign_in_sets_a_strict_httponly_cookie_and_the_code_never_works_twice(daemon):
    status, grant = daemon.request("POST", "/auth/codes", None)  # no body is fine too
    assert status == 201 and re.fullmatch(r"[A-Za-z0-9_-]{20,}", grant["code"])
    status, _ = daemon.request("GET", grant["path"], token=None)
    headers = daemon.last_headers
    assert status == 303
    assert headers["Location"].startswith("/ui/#csrf=") and grant["code"] not in headers["Location"]
    parts = [p.strip() for p in headers["Set-Cookie"].split(";")]
    name, _, value = parts[0].partition("=")
    assert name == f"provisioning_session_{daemon.port}" and len(value) >= 40
    # no Expires / Max-Age: the cookie ends with the browser
    assert set(parts[1:]) == {"HttpOnly", "SameSite=Strict", "Path=/"}
    assert headers["Referrer-Policy"] == "no-referrer"
    status, page = daemon.request("GET", grant["path"], token=None)
    assert status == 403 and "does not work" in page
    assert "Set-Cookie" not in daemon.last_headers
    for bad in ("/ui/login", "/ui/login?code=", "/ui/login?code=a&code=b", "/ui/login?code=%00"):
        status, _ = daemon.request("GET", bad, token=None)
        assert status == 400, bad
    log = (daemon.data_dir / "orchestrator.log").read_text()
    assert "GET /ui/login?code=<redacted>" in log  # -v logs requests, never the code
    assert grant["code"] not in log


def test_minting_a_code_needs_the_api_token(daemon):
    assert daemon.request("POST", "/auth/codes", {}, token=None)[0] == 401
    assert daemon.request("POST", "/auth/codes", {}, token="wrong")[0] == 401
    cookie, csrf, _ = sign_in(daemon)
    status, body = as_browser(daemon, "POST", "/auth/codes", cookie, csrf, {})
    assert status == 403 and "not open to dashboard sessions" in body["error"]


def test_cookie_and_csrf_token_together_and_only_together_authorize(daemon):
    status, accepted = daemon.request("POST", "/workflows", BLOCKER)
    wf = accepted["workflow_id"]
    cookie, csrf, _ = sign_in(daemon)
    status, body = as_browser(daemon, "GET", "/workflows", cookie, csrf)
    assert status == 200 and [w["workflow_id"] for w in body["workflows"]] == [wf]
    assert as_browser(daemon, "GET", f"/workflows/{wf}", cookie, csrf)[0] == 200
    status, body = as_browser(daemon, "GET", "/workflows", cookie)  # the cookie alone
    assert status == 403 and "X-CSRF-Token" in body["error"]
    assert as_browser(daemon, "GET", "/workflows", None, csrf)[0] == 401  # the token alone
    assert as_browser(daemon, "GET", "/workflows", cookie, "x" + csrf)[0] == 403
    forged = cookie.split("=")[0] + "=forged"
    assert as_browser(daemon, "GET", "/workflows", forged, csrf)[0] == 401
    # A state change without the CSRF token is refused and changes nothing.
    status, body = as_browser(daemon, "POST", f"/workflows/{wf}/cancel", cookie, None, {})
    assert status == 403
    assert daemon.request("GET", f"/workflows/{wf}")[1]["status"] in ("queued", "running")
    # Another site's request is refused even with both halves; so is a foreign Origin.
    for site in ("cross-site", "same-site", "none"):
        status, body = as_browser(daemon, "GET", "/workflows", cookie, csrf,
                                  **{"Sec-Fetch-Site": site})
        assert status == 403 and "cross-site request refused" in body["error"], site
    status, _ = as_browser(daemon, "POST", f"/workflows/{wf}/cancel", cookie, csrf, {},
                           Origin="http://127.0.0.1:1")
    assert status == 403
    status, body = as_browser(daemon, "POST", f"/workflows/{wf}/cancel", cookie, csrf, {},
                              **{"Sec-Fetch-Site": "same-origin"})
    assert status == 200
    assert daemon.wait_workflow(wf)["status"] == "cancelled"


def test_a_session_may_read_cancel_and_retry_but_nothing_else(daemon):
    cookie, csrf, _ = sign_in(daemon)
    wf = daemon.request("POST", "/workflows", {"tasks": [{"id": "a", "op": "noop"}]})[1]
    done = daemon.wait_workflow(wf["workflow_id"])
    key = done["tasks"][0]["key"]
    for path in ("/workflows", f"/workflows/{wf['workflow_id']}", f"/tasks/{key}",
                 f"/tasks/{key}/log", f"/workflows/{wf['workflow_id']}/events?after=0"):
        assert as_browser(daemon, "GET", path, cookie, csrf)[0] == 200, path
    assert as_browser(daemon, "POST", f"/workflows/{wf['workflow_id']}/retry", cookie, csrf,
                      {})[0] in (200, 409)
    for method, path, body in (("POST", "/workflows", BLOCKER), ("GET", "/openapi.json", None),
                               ("POST", "/workflows/servers/create", {"infra": "x"}),
                               ("POST", f"/tasks/{key}/progress", {"progress": 5})):
        status, answer = as_browser(daemon, method, path, cookie, csrf, body)
        assert status == 403 and "not open to dashboard sessions" in answer["error"], path
    assert len(daemon.request("GET", "/workflows")[1]["workflows"]) == 1  # nothing submitted


def test_sign_out_ends_the_session_only_with_its_csrf_token(daemon):
    cookie, csrf, _ = sign_in(daemon)
    assert as_browser(daemon, "POST", "/ui/logout", cookie, None)[0] == 403
    assert as_browser(daemon, "GET", "/workflows", cookie, csrf)[0] == 200  # still signed in
    status, body = as_browser(daemon, "POST", "/ui/logout", cookie, csrf)
    assert status == 200 and body == {"signed_out": True}
    assert "Max-Age=0" in daemon.last_headers["Set-Cookie"]
    assert as_browser(daemon, "GET", "/workflows", cookie, csrf)[0] == 401


def test_sessions_end_with_the_daemon(tmp_path):
    from tests.conftest import free_port

    port = free_port()
    d = start_daemon(tmp_path, server={"port": port})
    cookie, csrf, _ = sign_in(d)
    assert as_browser(d, "GET", "/workflows", cookie, csrf)[0] == 200
    d.stop()
    d = start_daemon(tmp_path, server={"port": port})
    status, body = as_browser(d, "GET", "/workflows", cookie, csrf)
    assert status == 401 and "sign in again" in body["error"]
    d.stop()


def test_the_dashboard_can_be_turned_off(tmp_path):
    d = start_daemon(tmp_path, server={"ui": False})
    status, body = d.request("GET", "/ui/", token=None)
    assert status == 404 and "server.ui = false" in body["error"]
    assert d.request("POST", "/auth/codes", {})[0] == 404
    d.stop()


def test_every_shipped_file_is_served_with_its_type_and_the_page_headers(daemon):
    shipped = {p.name for p in ui.ASSET_DIR.iterdir()}
    assert shipped == set(ui.ASSET_TYPES) | {"index.html"}  # nothing unserved, nothing missing
    status, page = daemon.request("GET", "/ui/", token=None)
    assert status == 200 and daemon.last_headers["Content-Type"] == "text/html; charset=utf-8"
    headers = daemon.last_headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    for src in re.findall(r'(?:src|href)="(/ui/assets/[^"]+)"', page):
        assert daemon.request("GET", src, token=None)[0] == 200, src
    for name, ctype in ui.ASSET_TYPES.items():
        status, body = daemon.request("GET", f"/ui/assets/{name}", token=None)
        assert status == 200 and daemon.last_headers["Content-Type"] == ctype, name
        assert body == (ui.ASSET_DIR / name).read_text(), name
        outside = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}",
                             body.replace("http://www.w3.org/2000/svg", ""))  # a namespace
        assert not outside, f"{name} refers outside the package: {outside}"
    assert daemon.request("GET", "/ui", token=None)[0] == 308
    assert daemon.last_headers["Location"] == "/ui/"
    for bad in ("/ui/assets/../token", "/ui/assets/%2e%2e%2ftoken", "/ui/assets/",
                "/ui/nothing", "/ui/assets/index.html.bak"):
        status, body = daemon.request("GET", bad, token=None)
        assert status == 404 and daemon.token not in str(body), bad
    assert daemon.request("POST", "/ui/", {}, token=None)[0] == 405
    assert daemon.request("HEAD", "/ui/assets/app.js", token=None)[0] == 200


def test_the_page_carries_no_data_and_no_token(daemon):
    daemon.request("POST", "/workflows", {"workflow": {"name": "secret-name"},
                                          "tasks": [{"id": "a", "op": "noop"}]})
    served = "".join(str(daemon.request("GET", p, token=None)[1])
                     for p in ["/ui/", *(f"/ui/assets/{n}" for n in ui.ASSET_TYPES)])
    assert "secret-name" not in served and daemon.token not in served


def test_assets_are_package_data():
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"orchestrator/ui_assets/*"' in text


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    return build_dist_once(tmp_path_factory)  # one build per session, shared with packaging


@pytest.mark.slow
def test_the_zipapp_serves_the_dashboard(built, tmp_path):
    """The one-file build carries the page: its daemon serves every file."""
    pyz = tmp_path / "provisioning"
    shutil.copy2(built["dist"] / "provisioning", pyz)
    config = write_config(tmp_path / "zipapp.toml", {
        "server": {"port": 0}, "storage": {"data_dir": str(tmp_path / "zdata")}})
    env = zipapp_env(tmp_path / "shiv", PROVISIONING_ENTRY="orchestrator",
                     PROVISIONING_USER_CONFIG_DIR=str(tmp_path / "userconfig"),
                     PROVISIONING_ETC_DIR=str(tmp_path / "etc"),
                     PROVISIONING_SHARE_DIR=str(tmp_path / "share"))
    argv = [str(pyz), "--config", str(config)]
    started = subprocess.run([*argv, "--daemon"], capture_output=True, text=True, env=env,
                             timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        port = json.loads((tmp_path / "zdata" / "orchestrator.pid").read_text())["port"]
        for name in ["index.html", *ui.ASSET_TYPES]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/ui/" if name == "index.html" else f"/ui/assets/{name}",
                         headers={"Host": f"127.0.0.1:{port}"})
            resp = conn.getresponse()
            assert resp.status == 200, name
            assert resp.read() == (ui.ASSET_DIR / name).read_bytes(), name
            conn.close()
    finally:
        stopped = subprocess.run([*argv, "--stop"], capture_output=True, text=True, env=env,
                                 timeout=120)
        assert stopped.returncode == 0, stopped.stderr
