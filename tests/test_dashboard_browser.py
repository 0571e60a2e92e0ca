"""The dashboard in a real headless Chromium (Debian's chromium driven by
Playwright, tests/browser.py) against the real daemon: sign-in with a
one-time code, the list, live updates without a reload, cancel from the
button, CSRF and cross-site refusals, no data without a session.

Nothing here sleeps: Playwright's expect() polls the page until a deadline,
and a gated task waits for a file the test creates."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.browser import running_chromium, unavailable_reason
from tests.conftest import free_port, run_cli
from tests.daemon_fixture import start_daemon

pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=unavailable_reason() or "")


@pytest.fixture(scope="module")
def browser():
    with running_chromium() as b:
        yield b


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path, executor={"shutdown_grace_seconds": 2, "kill_grace_seconds": 1})
    yield d
    d.stop()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    ctx.on("weberror", lambda e: problems.append(f"uncaught: {e.error}"))
    ctx.on("console", lambda m: problems.append(m.text)
           if "Content Security Policy" in m.text else None)
    yield ctx
    ctx.close()
    assert not problems, problems  # no script error, nothing blocked by our own CSP


def expect(locator):
    from playwright.sync_api import expect as pw_expect  # optional test dependency

    return pw_expect(locator)


def submit(d, name, tasks, **head):
    status, body = d.request("POST", "/workflows", {"workflow": {"name": name, **head},
                                                    "tasks": tasks})
    assert status == 202, body
    return body["workflow_id"]


def signed_in(context, d):
    """A page signed in through a code minted with the token; on the list."""
    status, grant = d.request("POST", "/auth/codes", {})
    assert status == 201
    page = context.new_page()
    page.goto(d.url + grant["path"])
    expect(page.locator("#workflows")).to_be_visible()
    page.evaluate("window.sameDocument = true")  # gone if the page ever reloads
    return page


def open_workflow(page, wf):
    page.locator(f"#workflow-rows tr[data-id='{wf}'] a.wf-link").click()
    expect(page.locator("svg.dag")).to_be_visible()


SLEEPER = [{"id": "sleeper", "op": "shell.run", "params": {"argv": ["sleep", "300"]}}]


def test_sign_in_with_the_code_from_the_cli_sets_an_httponly_cookie_once(daemon, browser,
                                                                         context):
    done = run_cli("--endpoint", daemon.url, "orchestrator", "ui", "--json")
    assert done.returncode == 0, done.stderr
    url = json.loads(done.stdout)["url"]
    page = context.new_page()
    response = page.goto(url)
    assert response.status == 200 and response.request.redirected_from is not None
    expect(page.locator("#workflows")).to_be_visible()
    assert page.url == f"{daemon.url}/ui/#/"  # neither the code nor the CSRF token stays
    cookies = context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [
        (f"provisioning_session_{daemon.port}", True, "Strict", "/")]
    assert page.evaluate("document.cookie") == ""  # the page's scripts cannot read it
    assert daemon.token not in page.content()

    again = browser.new_context()
    try:
        second = again.new_page()
        response = second.goto(url)
        assert response.status == 403
        expect(second.locator("h1")).to_have_text("This sign-in link does not work")
        assert again.cookies() == []
    finally:
        again.close()
    assert page.reload().status == 200  # the first browser stays signed in
    expect(page.locator("#workflows")).to_be_visible()


def test_the_list_shows_a_submitted_workflow_without_a_reload(daemon, context):
    page = signed_in(context, daemon)
    expect(page.locator(".hint")).to_contain_text("No workflows yet")
    wf = submit(daemon, "shown-in-the-list", [{"id": "a", "op": "noop"}])
    row = page.locator(f"#workflow-rows tr[data-id='{wf}']")
    expect(row).to_contain_text("shown-in-the-list")
    expect(row).to_have_attribute("data-status", "succeeded")
    expect(page.locator("[data-filter=succeeded]")).to_have_text("succeeded 1")
    assert page.evaluate("window.sameDocument") is True


def test_a_running_task_turns_succeeded_on_screen_without_a_reload(daemon, context, tmp_path):
    gate = tmp_path / "gate"
    script = ('echo "PROGRESS: 50 waiting for the gate"; echo before-gate; '
              'while [ ! -e "$0" ]; do sleep 0.05; done; echo after-gate')
    wf = submit(daemon, "gated", [
        {"id": "first", "op": "noop"},
        {"id": "gated", "op": "shell.run", "params": {"argv": ["sh", "-c", script, str(gate)]},
         "depends_on": ["first"]},
        {"id": "after", "op": "noop", "depends_on": ["gated"]}])
    page = signed_in(context, daemon)
    open_workflow(page, wf)
    node = page.locator("g.node[data-id=gated]")
    expect(node).to_have_attribute("data-status", "running")
    expect(node.locator("text.sub")).to_have_text("running 50%")
    assert float(node.locator("rect.bar").get_attribute("width")) > 0  # progress drawn
    expect(page.locator("g.node[data-id=first]")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("g.node[data-id=after]")).to_have_attribute("data-status", "queued")
    node.click()
    expect(page.locator("#task-panel h2")).to_have_text("gated")
    expect(page.locator("#task-log")).to_contain_text("before-gate")

    gate.touch()
    expect(node).to_have_attribute("data-status", "succeeded")
    expect(page.locator("g.node[data-id=after]")).to_have_attribute("data-status", "succeeded")
    expect(page.locator(".wf-title")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#task-log")).to_contain_text("after-gate")  # the log tail is live
    expect(page.locator("#task-panel [data-field='exit code']")).to_have_text("0")
    expect(page.locator("#task-panel [data-field=attempts]")).to_contain_text("1")
    assert page.evaluate("window.sameDocument") is True
    assert daemon.request("GET", f"/workflows/{wf}")[1]["status"] == "succeeded"


def test_cancel_and_retry_from_the_buttons(daemon, context):
    wf = submit(daemon, "to-cancel", [*SLEEPER, {"id": "later", "op": "noop",
                                                 "depends_on": ["sleeper"]}])
    page = signed_in(context, daemon)
    open_workflow(page, wf)
    expect(page.locator("g.node[data-id=sleeper]")).to_have_attribute("data-status", "running")
    expect(page.locator("#retry")).to_be_disabled()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#cancel").click()
    assert daemon.wait_workflow(wf)["status"] == "cancelled"  # the API confirms
    expect(page.locator(".wf-title")).to_have_attribute("data-status", "cancelled")
    expect(page.locator("g.node[data-id=sleeper]")).to_have_attribute("data-status", "cancelled")
    expect(page.locator("#cancel")).to_be_disabled()
    page.locator("#retry").click()  # and the page follows the workflow again, live
    expect(page.locator("g.node[data-id=sleeper]")).to_have_attribute("data-status", "running")
    expect(page.locator(".wf-title")).to_have_attribute("data-status", "running")
    assert daemon.request("GET", f"/workflows/{wf}")[1]["status"] == "running"


# The page's own origin, but a request made without the CSRF token; then the
# same with it (so the refusal is the token's doing).
WITHOUT_CSRF = """async (wf) => {
  const post = await fetch(`/workflows/${wf}/cancel`, {method: "POST", body: "{}",
                           headers: {"Content-Type": "application/json"}});
  const get = await fetch(`/workflows/${wf}`);
  const csrf = localStorage.getItem("provisioning.csrf");
  const withToken = await fetch(`/workflows/${wf}`, {headers: {"X-CSRF-Token": csrf}});
  return [post.status, (await post.json()).error, get.status, withToken.status];
}"""


def test_a_post_without_the_csrf_token_is_refused(daemon, context):
    wf = submit(daemon, "kept", SLEEPER)
    daemon.wait_workflow(wf, ("running",))
    page = signed_in(context, daemon)
    post, error, get, with_token = page.evaluate(WITHOUT_CSRF, wf)
    assert (post, get, with_token) == (403, 403, 200)
    assert "X-CSRF-Token" in error
    assert daemon.request("GET", f"/workflows/{wf}")[1]["status"] == "running"


ATTACK = """<!doctype html><html><body>
<form id="f" method="POST" enctype="text/plain" action="{target}/cancel">
<input name='{{"a":"' value='"}}'></form>
<script>
fetch("{target}/cancel", {{method: "POST", mode: "no-cors", credentials: "include",
                          body: "{{}}", headers: {{"Content-Type": "text/plain"}}}})
  .then(() => {{ document.title = "fetched"; document.getElementById("f").submit(); }});
</script></body></html>"""


def test_another_local_site_cannot_ride_the_session(daemon, context):
    """Another server on 127.0.0.1 is the same *site* as the daemon (ports do not
    count) and gets its cookies: its page's requests must still get nowhere."""
    wf = submit(daemon, "attacked", SLEEPER)
    daemon.wait_workflow(wf, ("running",))
    page = signed_in(context, daemon)
    body = ATTACK.format(target=f"{daemon.url}/workflows/{wf}").encode()

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", free_port()), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        attacker = context.new_page()  # same browser, signed in to the dashboard
        with attacker.expect_navigation(url=f"{daemon.url}/workflows/{wf}/cancel") as nav:
            attacker.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        assert nav.value.status == 403  # the form post: foreign Origin
    finally:
        evil.shutdown()
        evil.server_close()
    assert daemon.request("GET", f"/workflows/{wf}")[1]["status"] == "running"
    expect(page.locator("#workflow-rows tr[data-id='" + wf + "']")).to_have_attribute(
        "data-status", "running")


def test_no_session_shows_how_to_sign_in_and_no_data(daemon, context):
    wf = submit(daemon, "very-private-name", [{"id": "a", "op": "noop"}])
    api_statuses = []
    page = context.new_page()
    page.on("response", lambda r: api_statuses.append(r.status)
            if "/workflows" in r.url else None)
    page.goto(f"{daemon.url}/ui/")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#signin pre")).to_have_text("provisioning orchestrator ui --open")
    expect(page.locator("#view")).to_be_empty()
    assert "very-private-name" not in page.content() and wf not in page.content()
    page.goto(f"{daemon.url}/ui/#/workflows/{wf}")  # a deep link shows nothing either
    expect(page.locator("#signin")).to_be_visible()
    assert wf not in page.locator("body").inner_text()
    assert all(status == 401 for status in api_statuses), api_statuses


def test_a_session_ends_with_the_daemon_and_with_sign_out(tmp_path, context):
    port = free_port()
    d = start_daemon(tmp_path, server={"port": port})
    try:
        submit(d, "before-restart", [{"id": "a", "op": "noop"}])
        page = signed_in(context, d)
        expect(page.locator("#workflow-rows tr")).to_have_count(1)
        d.stop()
        d = start_daemon(tmp_path, server={"port": port})
        page.reload()
        expect(page.locator("#signin")).to_be_visible()  # the API said 401
        expect(page.locator("#view")).to_be_empty()
        assert "before-restart" not in page.content()

        page = signed_in(context, d)
        cookie = next(c for c in context.cookies() if c["name"].endswith(str(port)))
        csrf = page.evaluate("localStorage.getItem('provisioning.csrf')")
        page.locator("#signout").click()
        expect(page.locator("#signin")).to_be_visible()
        assert page.evaluate("localStorage.getItem('provisioning.csrf')") is None
        assert context.cookies() == []
        status, _ = d.request("GET", "/workflows", token=None,  # the old halves, replayed
                              headers={"Cookie": f"{cookie['name']}={cookie['value']}",
                                       "X-CSRF-Token": csrf})
        assert status == 401
    finally:
        d.stop()


def test_a_thousand_workflows_list_in_pages(tmp_path, context):
    d = start_daemon(tmp_path, executor={"max_concurrent_tasks": 1, "shutdown_grace_seconds": 1})
    try:
        blocker = submit(d, "blocker", SLEEPER)
        d.wait_workflow(blocker, ("running",))
        with ThreadPoolExecutor(8) as pool:  # concurrent clients: the daemon batches fsyncs
            list(pool.map(lambda i: submit(d, f"wf-{i:03d}", [{"id": "t", "op": "noop"}]),
                          range(999)))
        page = signed_in(context, d)
        rows = page.locator("#workflow-rows tr")

        def shows(offset):  # the rows on screen are that page of the API's list, in order
            status, doc = d.request("GET", f"/workflows?limit=50&offset={offset}")
            want = [w["workflow_id"] for w in doc["workflows"]]
            expect(rows).to_have_count(len(want))
            assert [r.get_attribute("data-id") for r in rows.all()] == want
            return doc

        expect(page.locator("#range")).to_have_text("1–50 of 1000")
        shows(0)
        expect(page.locator("[data-filter=all]")).to_have_text("all 1000")
        expect(page.locator("[data-filter=queued]")).to_have_text("queued 999")
        page.locator("[data-page=next]").click()
        expect(page.locator("#range")).to_have_text("51–100 of 1000")
        shows(50)
        page.locator("[data-page=last]").click()
        expect(page.locator("#range")).to_have_text("951–1000 of 1000")
        shows(950)
        expect(rows.last).to_contain_text("blocker")  # the oldest
        page.locator("[data-filter=running]").click()
        expect(page.locator("#range")).to_have_text("1–1 of 1")
        page.locator("[data-filter=all]").click()
        submit(d, "one-more", [{"id": "t", "op": "noop"}])
        expect(page.locator("#range")).to_have_text("1–50 of 1001")  # live, no reload
        expect(rows.first).to_contain_text("one-more")
        assert page.evaluate("window.sameDocument") is True
    finally:
        d.stop()


# Each node's column (from its x), the edges drawn, and the fill of each state.
DAG_FACTS = """() => {
  const nodes = [...document.querySelectorAll("svg.dag g.node")];
  const xs = nodes.map((g) => g.transform.baseVal[0].matrix.e);
  const columns = [...new Set(xs)].sort((a, b) => a - b);
  const fill = {};
  for (const g of nodes) {
    fill[g.dataset.status] = getComputedStyle(g.querySelector("rect.box")).fill;
  }
  return {column: Object.fromEntries(nodes.map((g, i) => [g.dataset.id, columns.indexOf(xs[i])])),
          edges: document.querySelectorAll("svg.dag path.edge").length, fill};
}"""


def test_the_dag_is_layered_by_dependency_depth_and_coloured_by_state(daemon, context):
    wf = submit(daemon, "shape", [
        {"id": "a", "op": "noop"}, {"id": "b", "op": "noop", "depends_on": ["a"]},
        {"id": "c", "op": "noop", "depends_on": ["a"]},
        {"id": "d", "op": "noop", "depends_on": ["b", "c"]},
        {"id": "e", "op": "shell.run", "params": {"argv": ["false"]}, "depends_on": ["a"]},
        {"id": "f", "op": "noop", "depends_on": ["d", "e"]}, {"id": "g", "op": "noop"}])
    daemon.wait_workflow(wf)
    page = signed_in(context, daemon)
    open_workflow(page, wf)
    expect(page.locator("g.node[data-id=f]")).to_have_attribute("data-status", "skipped")
    facts = page.evaluate(DAG_FACTS)
    assert facts["column"] == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 1, "f": 3, "g": 0}
    assert facts["edges"] == 7  # one per dependency
    assert len({facts["fill"][s] for s in ("succeeded", "failed", "skipped")}) == 3
    expect(page.locator("g.node[data-id=e] text.sub")).to_have_text("failed")
    expect(page.locator(".counts")).to_contain_text("5 succeeded")
