"""The dashboard's pages under /ui/ (DESIGN.md 16), served by the daemon.

Everything comes from the package (ui_assets/ beside this file: plain HTML,
CSS and JavaScript, no third-party code), so the dashboard works air-gapped.
Files are read from disk when asked for, never kept in memory: an idle
daemon pays nothing for the dashboard.

Paths: `/ui/` the page (a shell: the data comes from the JSON API, fetched
by the page with the session cookie and CSRF token, see sessions.py),
`/ui/assets/<name>` its files, `/ui/login?code=` the sign-in exchange,
`POST /ui/logout` sign-out. Every answer forbids framing (the cancel button
must not be clickjacked), sends no Referer, and scripts may only come from
this origin.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from provisioning.orchestrator import sessions

ASSET_DIR = Path(__file__).resolve().parent / "ui_assets"
ASSET_TYPES = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dag.js": "text/javascript; charset=utf-8",
    "list.js": "text/javascript; charset=utf-8",
    "workflow.js": "text/javascript; charset=utf-8",
    "util.js": "text/javascript; charset=utf-8",
}
HTML = "text/html; charset=utf-8"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

SIGN_IN_FAILED = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign-in failed - provisioning</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/assets/app.css"></head>
<body><main class="signin"><h1>This sign-in link does not work</h1>
<p>It was used already, it expired (links last 2 minutes), or the orchestrator restarted.</p>
<p>Get a new one on the orchestrator's host, as the user that runs it:</p>
<pre>provisioning orchestrator ui --open</pre></main></body></html>
"""


@dataclass(frozen=True)
class UiRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    port: int  # ours: names the session cookie


@dataclass
class Page:
    status: int
    body: bytes
    content_type: str = HTML
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.headers = {**SECURITY_HEADERS, **self.headers}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Page:
    return Page(status, json.dumps({"error": message}).encode(), "application/json",
                headers or {})


def serve(request: UiRequest, store: sessions.SessionStore) -> Page:
    """Answer one request for a path under /ui."""
    path, method = request.path, request.method
    if path == "/ui":
        return Page(308, b"", headers={"Location": "/ui/"})
    if path in ("/ui/", "/ui/index.html"):
        return _read_only(method) or _file("index.html", HTML)
    if path.startswith("/ui/assets/"):
        name = path[len("/ui/assets/"):]
        if name not in ASSET_TYPES:
            return _error(404, f"no such dashboard file: {name[:100]}")
        return _read_only(method) or _file(name, ASSET_TYPES[name])
    if path == "/ui/login":
        return (_read_only(method, allow="GET")
                or _sign_in(request.query, store, request.port))
    if path == "/ui/logout":
        if method != "POST":
            return _error(405, f"method {method} not allowed here", {"Allow": "POST"})
        return _sign_out(request, store)
    return _error(404, f"no such dashboard page: {path[:200]}")


def _read_only(method: str, allow: str = "GET, HEAD") -> Page | None:
    if method in allow.split(", "):
        return None
    return _error(405, f"method {method} not allowed here", {"Allow": allow})


def _file(name: str, content_type: str) -> Page:
    try:
        body = (ASSET_DIR / name).read_bytes()
    except FileNotFoundError:
        return _error(404, f"dashboard file {name} is missing from this installation")
    return Page(200, body, content_type)


def _sign_in(query: str, store: sessions.SessionStore, port: int) -> Page:
    try:
        codes = parse_qs(query, max_num_fields=5, errors="strict").get("code", [])
    except ValueError:
        codes = []
    if len(codes) != 1 or not CODE_RE.match(codes[0]):
        return Page(400, SIGN_IN_FAILED)
    granted = store.exchange(codes[0])
    if granted is None:
        return Page(403, SIGN_IN_FAILED)
    session_id, csrf = granted
    cookie = f"{sessions.cookie_name(port)}={session_id}; HttpOnly; SameSite=Strict; Path=/"
    # The CSRF token rides in the fragment: never sent to a server, not in a
    # Referer; the page moves it into localStorage and clears the address bar.
    return Page(303, b"", headers={"Location": f"/ui/#csrf={csrf}", "Set-Cookie": cookie})


def _sign_out(request: UiRequest, store: sessions.SessionStore) -> Page:
    name = sessions.cookie_name(request.port)
    session_id = sessions.cookie_value(request.headers.get("Cookie"), name)
    cleared = {"Set-Cookie": f"{name}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"}
    if session_id is None:
        return Page(200, b'{"signed_out":true}', "application/json", cleared)
    # a live session is ended only by its own page, never by another site's form
    refusal = sessions.cross_site_refusal(request.headers)
    verdict = refusal or store.check(session_id, request.headers.get(sessions.CSRF_HEADER))
    if verdict.status == 403:
        return _error(403, verdict.reason)
    store.end(session_id)
    return Page(200, b'{"signed_out":true}', "application/json", cleared)
