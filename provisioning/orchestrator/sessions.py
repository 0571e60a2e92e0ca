"""Dashboard sign-in: one-time codes, browser sessions and their CSRF tokens.

The API token never reaches a browser (DESIGN.md 16):

1. `provisioning orchestrator ui` asks the daemon, with the token, for a
   one-time code (`POST /auth/codes`); the code is good for CODE_TTL_S.
2. The browser opens `/ui/login?code=...`. The daemon forgets the code
   whatever happens; if it was good it creates a session, sets the session
   cookie (`HttpOnly; SameSite=Strict; Path=/`, no expiry: it ends with the
   browser) and answers 303 to `/ui/#csrf=<token>`. The page moves the CSRF
   token into localStorage and drops it from the address bar.
3. An API request made by the page carries the cookie AND the CSRF token in
   `X-CSRF-Token`; one without the other is refused, GETs included.

Why both halves on every request: browsers send a host's cookies to all of
its ports (RFC 6265, section 8.5) and count other ports of 127.0.0.1 as the
same site, so neither the cookie's secrecy nor SameSite=Strict keeps another
local server from receiving the cookie or riding on it. The CSRF token lives
only in our origin's storage (an origin includes the port), and a custom
header cannot be sent cross-origin without a CORS preflight, which this
daemon never grants. A request that says it comes from another site
(`Sec-Fetch-Site`) is refused even when it carries both.

Sessions live in memory only: they end with the daemon, or after
server.ui_session_idle_seconds without a request, or at sign-out. Codes and
sessions are stored under a hash of their value and are bounded in number.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

CODE_TTL_S = 120  # long enough to paste a URL from a terminal, short enough to be useless later
MAX_CODES = 64  # outstanding codes; minting more drops the oldest
MAX_SESSIONS = 256  # live sessions; signing in once more ends the least recently used
CSRF_HEADER = "X-CSRF-Token"

# What a dashboard session may do: the reads and the two buttons. Submitting
# work, minting codes and reporting progress stay with the token.
SESSION_ROUTES = frozenset({
    ("GET", "/workflows"), ("GET", "/workflows/{workflow_id}"),
    ("GET", "/workflows/{workflow_id}/events"),
    ("POST", "/workflows/{workflow_id}/cancel"), ("POST", "/workflows/{workflow_id}/retry"),
    ("GET", "/tasks/{task_key}"), ("GET", "/tasks/{task_key}/log"),
})


@dataclass
class _Session:
    csrf: str
    last_seen: float


@dataclass(frozen=True)
class Verdict:
    """What a cookie-carrying request earned: ok, or the HTTP status and why not."""

    ok: bool
    status: int = 200
    reason: str = ""


def cookie_name(port: int) -> str:
    """The session cookie's name: cookies are shared by every port of a host,
    so two daemons on one host must not overwrite each other's."""
    return f"provisioning_session_{port}"


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header, else None (lenient:
    a browser may send other cookies of this host in any shape)."""
    for part in (header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name and value:
            return value.strip('"')
    return None


def cross_site_refusal(headers: Mapping[str, str]) -> Verdict | None:
    """A 403 for a request the browser says another site (or another port) made;
    None when it says it is ours, or says nothing (not a browser, or an old one)."""
    site = (headers.get("Sec-Fetch-Site") or "same-origin").strip().lower()
    if site == "same-origin":
        return None
    return Verdict(False, 403, f"cross-site request refused (Sec-Fetch-Site: {site[:40]})")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class SessionStore:
    """One-time codes and browser sessions of one daemon (thread-safe)."""

    def __init__(self, idle_seconds: float, *, clock: Callable[[], float] = time.monotonic):
        self.idle_seconds = float(idle_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._codes: dict[str, float] = {}  # digest of code -> expiry
        self._sessions: dict[str, _Session] = {}  # digest of session id -> session

    def mint_code(self) -> dict[str, object]:
        """A new one-time sign-in code: {"code", "expires_in", "path"}."""
        code = secrets.token_urlsafe(24)
        now = self._clock()
        with self._lock:
            self._drop_expired_codes(now)
            while len(self._codes) >= MAX_CODES:
                self._codes.pop(next(iter(self._codes)))
            self._codes[_digest(code)] = now + CODE_TTL_S
        return {"code": code, "expires_in": CODE_TTL_S, "path": f"/ui/login?code={code}"}

    def exchange(self, code: str) -> tuple[str, str] | None:
        """Spend a code: (session id, CSRF token) if it was good, else None.
        The code is forgotten either way, so it never works twice."""
        now = self._clock()
        with self._lock:
            expiry = self._codes.pop(_digest(code), None)
            self._drop_expired_codes(now)
            if expiry is None or expiry < now:
                return None
            self._drop_idle_sessions(now)
            while len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].last_seen)
                del self._sessions[oldest]
            session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            self._sessions[_digest(session_id)] = _Session(csrf=csrf, last_seen=now)
        return session_id, csrf

    def check(self, session_id: str, csrf: str | None) -> Verdict:
        """Is this a live session, and is `csrf` its token? A good request
        counts as activity (the idle clock restarts)."""
        now = self._clock()
        with self._lock:
            key = _digest(session_id)
            session = self._sessions.get(key)
            if session is not None and now - session.last_seen > self.idle_seconds:
                del self._sessions[key]
                session = None
            if session is None:
                return Verdict(False, 401, "dashboard session expired or unknown: run "
                               "`provisioning orchestrator ui` to sign in again")
            if not csrf or not hmac.compare_digest(csrf.encode(), session.csrf.encode()):
                return Verdict(False, 403, f"missing or wrong {CSRF_HEADER} header "
                               "(the dashboard sends it; a cookie alone is not enough)")
            session.last_seen = now
        return Verdict(True)

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(_digest(session_id), None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"codes": len(self._codes), "sessions": len(self._sessions)}

    def _drop_expired_codes(self, now: float) -> None:
        for key in [k for k, expiry in self._codes.items() if expiry < now]:
            del self._codes[key]

    def _drop_idle_sessions(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items()
                    if now - s.last_seen > self.idle_seconds]:
            del self._sessions[key]


def authorize_request(store: SessionStore, *, port: int, method: str, route_path: str,
                      headers: Mapping[str, str]) -> Verdict | None:
    """The verdict on a request that carries no bearer token: None when it
    carries no session cookie either (the caller answers 401 as usual)."""
    session_id = cookie_value(headers.get("Cookie"), cookie_name(port))
    if session_id is None:
        return None
    refusal = cross_site_refusal(headers)
    if refusal is not None:
        return refusal
    verdict = store.check(session_id, headers.get(CSRF_HEADER))
    if verdict.ok and (method, route_path) not in SESSION_ROUTES:
        return Verdict(False, 403, f"{method} {route_path} is not open to dashboard sessions; "
                       "use the CLI or the API token")
    return verdict
