// The dashboard's only way to the daemon: the JSON API with the session
// cookie (sent by the browser, unreadable here) and the CSRF token (kept in
// this origin's localStorage). The API token is never seen by the page.

const CSRF_KEY = "provisioning.csrf";
const CSRF_HEADER = "X-CSRF-Token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
  // No session (or not ours any more): the page must sign in again.
  get signedOut() {
    return this.status === 401 || (this.status === 403 && this.message.includes(CSRF_HEADER));
  }
}

// After sign-in the daemon redirects to /ui/#csrf=<token>: keep the token,
// drop it from the address bar (and from this history entry).
export function takeCsrfFromUrl() {
  const match = location.hash.match(/^#csrf=([A-Za-z0-9_-]+)$/);
  if (!match) return;
  localStorage.setItem(CSRF_KEY, match[1]);
  history.replaceState(null, "", location.pathname + "#/");
}

export function forgetCsrf() {
  localStorage.removeItem(CSRF_KEY);
}

export function hasCsrf() {
  return Boolean(localStorage.getItem(CSRF_KEY));
}

async function errorOf(resp) {
  try {
    const doc = await resp.json();
    return new ApiError(resp.status, String(doc.error || resp.statusText));
  } catch {
    return new ApiError(resp.status, resp.statusText || `HTTP ${resp.status}`);
  }
}

// api("/workflows?limit=50") -> parsed JSON; {method: "POST"} sends {}.
// {log: true} -> {text, size, offset} of a /tasks/{key}/log answer.
export async function api(path, {method = "GET", signal, log = false} = {}) {
  const headers = {Accept: log ? "text/plain" : "application/json"};
  const csrf = localStorage.getItem(CSRF_KEY);
  if (csrf) headers[CSRF_HEADER] = csrf;
  const init = {method, headers, signal, credentials: "same-origin", cache: "no-store"};
  if (method === "POST") {
    headers["Content-Type"] = "application/json";
    init.body = "{}";
  }
  const resp = await fetch(path, init);
  if (!resp.ok) {
    const error = await errorOf(resp);
    if (error.signedOut) window.dispatchEvent(new CustomEvent("signed-out"));
    throw error;
  }
  if (log) {
    return {text: await resp.text(), size: Number(resp.headers.get("X-Log-Size") || 0),
            offset: Number(resp.headers.get("X-Log-Offset") || 0)};
  }
  return resp.json();
}

export async function signOut() {
  try {
    await api("/ui/logout", {method: "POST"});
  } finally {
    forgetCsrf();
  }
}

export const enc = encodeURIComponent;
