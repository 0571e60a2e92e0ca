// The workflows list: live counts by status (also the filters), one page of
// PAGE_SIZE rows at a time (GET /workflows?limit=&offset=), newest first.
// There is no event stream across workflows, so the page re-reads its one
// page every REFRESH_MS while the tab is visible; a workflow's own page is
// the one that follows events.

import {api} from "./api.js";
import {WORKFLOW_STATES, badge, el, fmtAgo, fmtDuration, pause} from "./util.js";

export const PAGE_SIZE = 50;
const REFRESH_MS = 2000;

function progressOf(wf) {
  const c = wf.counts || {};
  const total = Object.values(c).reduce((a, b) => a + b, 0);
  const done = (c.succeeded || 0) + (c.failed || 0) + (c.cancelled || 0) + (c.skipped || 0);
  return {total, done};
}

function row(wf, now) {
  const {total, done} = progressOf(wf);
  const c = wf.counts || {};
  const bar = el("div", {class: "minibar", title: `${done} of ${total} tasks finished`},
                 ...["succeeded", "failed", "cancelled", "skipped", "running"].filter((s) => c[s])
                   .map((s) => {
                     const seg = el("span", {class: `seg st-${s}`});
                     seg.style.width = `${(100 * c[s]) / Math.max(1, total)}%`;  // CSSOM: CSP-safe
                     return seg;
                   }));
  const notes = ["running", "failed", "skipped", "cancelled"].filter((s) => c[s])
    .map((s) => `${c[s]} ${s}`).join(", ");
  return el("tr", {"data-id": wf.workflow_id, "data-status": wf.status},
            el("td", {}, el("a", {href: `#/workflows/${encodeURIComponent(wf.workflow_id)}`,
                                  class: "wf-link", text: wf.name})),
            el("td", {}, badge(wf.status)),
            el("td", {class: "progress"}, bar,
               el("span", {class: "small", text: `${done}/${total}${notes ? ` · ${notes}` : ""}`})),
            el("td", {class: "small mono", text: wf.workflow_id.slice(0, 8)}),
            el("td", {class: "small", title: new Date(wf.created_at * 1000).toLocaleString(),
                      text: fmtAgo(wf.created_at, now)}),
            el("td", {class: "small", text: fmtDuration(wf.duration_s)}));
}

export function listView(root, params, ui) {
  const ctrl = new AbortController();
  const signal = ctrl.signal;
  const status = WORKFLOW_STATES.includes(params.status) ? params.status : "";
  const offset = Math.max(0, Number.parseInt(params.offset || "0", 10) || 0);
  const filters = el("div", {class: "filters", role: "toolbar", "aria-label": "filter by status"});
  const body = el("tbody", {id: "workflow-rows"});
  const pager = el("div", {class: "pager"});
  const empty = el("p", {class: "hint", hidden: true});
  root.replaceChildren(
    el("h1", {text: "Workflows"}), filters,
    el("table", {class: "workflows", id: "workflows"},
       el("thead", {}, el("tr", {}, ...["name", "status", "tasks", "id", "created", "duration"]
         .map((h) => el("th", {text: h})))), body),
    empty, pager);

  const link = (s, o) => {
    const q = new URLSearchParams();
    if (s) q.set("status", s);
    if (o) q.set("offset", String(o));
    const qs = q.toString();
    return `#/${qs ? `?${qs}` : ""}`;
  };

  function render(doc) {
    const all = Object.values(doc.counts).reduce((a, b) => a + b, 0);
    filters.replaceChildren(
      el("a", {href: link("", 0), class: `chip${status ? "" : " on"}`, "data-filter": "all",
               text: `all ${all}`}),
      ...WORKFLOW_STATES.map((s) => el("a", {href: link(s, 0), "data-filter": s,
                                             class: `chip st-${s}${status === s ? " on" : ""}`,
                                             text: `${s} ${doc.counts[s] || 0}`})));
    const now = Date.now() / 1000;
    body.replaceChildren(...doc.workflows.map((wf) => row(wf, now)));
    empty.hidden = doc.workflows.length > 0;
    empty.textContent = doc.total ? "No workflows on this page." :
      status ? `No ${status} workflows.` : "No workflows yet: `provisioning workflow submit FILE`.";
    const first = doc.total ? offset + 1 : 0;
    const lastShown = Math.min(doc.total, offset + doc.workflows.length);
    const lastPage = Math.max(0, Math.floor((doc.total - 1) / PAGE_SIZE) * PAGE_SIZE);
    const nav = (text, target, enabled, name) => enabled
      ? el("a", {class: "button", href: link(status, target), "data-page": name, text})
      : el("span", {class: "button disabled", "data-page": name, text});
    pager.replaceChildren(
      nav("« first", 0, offset > 0, "first"),
      nav("‹ newer", Math.max(0, offset - PAGE_SIZE), offset > 0, "prev"),
      el("span", {class: "range", id: "range", text: `${first}–${lastShown} of ${doc.total}`}),
      nav("older ›", offset + PAGE_SIZE, offset + PAGE_SIZE < doc.total, "next"),
      nav("last »", lastPage, offset < lastPage, "last"));
  }

  (async () => {
    while (!signal.aborted) {
      const q = new URLSearchParams({limit: String(PAGE_SIZE), offset: String(offset)});
      if (status) q.set("status", status);
      try {
        performance.mark("list-start");
        render(await api(`/workflows?${q}`, {signal}));
        performance.measure("list-draw", "list-start");
        ui.live(true);
      } catch (error) {
        if (signal.aborted || error.signedOut) return;
        ui.live(false, error.message);
      }
      await pause(REFRESH_MS, signal);
      while (document.hidden && !signal.aborted) await pause(REFRESH_MS, signal);
    }
  })();

  return {unmount() { ctrl.abort(); }};
}
