// The dashboard's entry point: the hash router (#/ the list, #/workflows/ID
// a workflow, #/workflows/ID/TASK a task of it), the banner, the live
// indicator, and the signed-out state, which shows how to sign in and no data.

import {forgetCsrf, hasCsrf, signOut, takeCsrfFromUrl} from "./api.js";
import {listView} from "./list.js";
import {el} from "./util.js";
import {workflowView} from "./workflow.js";

const view = document.getElementById("view");
const banner = document.getElementById("banner");
const signin = document.getElementById("signin");
const conn = document.getElementById("conn");
const signoutBtn = document.getElementById("signout");
let current = null;  // {key, view}
let bannerTimer = null;

const ui = {
  live(ok, why) {
    conn.textContent = ok ? "live" : "reconnecting…";
    conn.className = `conn ${ok ? "ok" : "bad"}`;
    conn.title = ok ? "following the orchestrator" : String(why || "");
  },
  error(message) { show(message, "error"); },
  notice(message) { show(message, "notice"); },
};

function show(message, kind) {
  banner.replaceChildren(el("span", {text: message}),
                         el("button", {class: "close", text: "×", title: "dismiss",
                                       onclick: () => { banner.hidden = true; }}));
  banner.className = `banner ${kind}`;
  banner.hidden = false;
  clearTimeout(bannerTimer);
  if (kind === "notice") bannerTimer = setTimeout(() => { banner.hidden = true; }, 4000);
}

function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const params = Object.fromEntries(new URLSearchParams(query));
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "workflows" && parts[1]) {
    return {key: `wf:${parts[1]}`, make: workflowView, params: {id: parts[1], task: parts[2]}};
  }
  return {key: `list:${query}`, make: listView, params};
}

function route() {
  if (!signin.hidden) return;
  const next = parseHash();
  if (current && current.key === next.key && current.view.route?.(next.params)) return;
  current?.view.unmount();
  banner.hidden = true;
  current = {key: next.key, view: next.make(view, next.params, ui)};
}

function signedOut() {
  current?.view.unmount();
  current = null;
  forgetCsrf();
  view.replaceChildren();  // no data without a session
  signoutBtn.hidden = true;
  conn.textContent = "";
  signin.hidden = false;
}

takeCsrfFromUrl();
window.addEventListener("hashchange", route);
window.addEventListener("signed-out", signedOut);
signoutBtn.addEventListener("click", async () => {
  try {
    await signOut();
  } finally {
    signedOut();
  }
});
if (hasCsrf()) {
  signoutBtn.hidden = false;
  route();
} else {
  signedOut();
}
