// One workflow: its header and buttons, the DAG, the selected task's detail
// with a live log tail. Live from the events API (long-poll): each event
// updates the one node it is about; no reload.

import {api, enc} from "./api.js";
import {drawDag} from "./dag.js";
import {
  FINISHED, TASK_STATES, badge, countStates, el, fmtDuration, fmtTime, pause,
} from "./util.js";

const EVENTS_WAIT_S = 25;  // the API waits at most 30 s
const FINISHED_RECHECK_MS = 5000;  // a finished workflow may be retried from elsewhere
const LOG_POLL_MS = 1000;  // log lines make no events: a running task's log is polled
const LOG_KEEP_CHARS = 200_000;
const LOG_TAIL_BYTES = 65_536;
const TASK_DONE = new Set(["succeeded", "failed", "cancelled", "skipped"]);

export function workflowView(root, {id, task: initialTask}, ui) {
  const ctrl = new AbortController();
  const signal = ctrl.signal;
  const tasks = new Map();
  let wf = null, dag = null, last = 0, selected = null;
  let nap = null;  // the pause between re-checks of a finished workflow; wake() ends it
  const wake = () => nap?.abort();
  signal.addEventListener("abort", wake);
  const log = {tid: null, offset: null, busy: false, again: false, timer: null};

  const title = el("h1", {class: "wf-title", text: "…"});
  const meta = el("dl", {class: "meta"});
  const counts = el("div", {class: "counts"});
  const cancelBtn = el("button", {class: "danger", id: "cancel", text: "Cancel",
                                  onclick: () => act("cancel")});
  const retryBtn = el("button", {id: "retry", text: "Retry", onclick: () => act("retry")});
  const graph = el("div", {class: "graph", id: "graph"});
  const panel = el("aside", {class: "panel", id: "task-panel"},
                   el("p", {class: "hint", text: "Select a task to see its detail and log."}));
  const legend = el("div", {class: "legend"},
                    ...TASK_STATES.map((s) => el("span", {class: `key st-${s}`, text: s})));
  const zoomBar = el("div", {class: "zoom"},
                     ...[["−", 0.5], ["1:1", 1], ["+", 1.5], ["fit", "fit"]].map(([t, f]) =>
                       el("button", {text: t, title: `zoom ${t}`, onclick: () => zoomBy(f)})));
  let scale = 1;
  root.replaceChildren(
    el("nav", {class: "crumbs"}, el("a", {href: "#/", text: "Workflows"}), " / ",
       el("span", {text: id})),
    el("section", {class: "wf-head"}, el("div", {}, title, meta, counts),
       el("div", {class: "actions"}, cancelBtn, retryBtn)),
    el("div", {class: "wf-body"},
       el("section", {class: "graph-wrap"}, el("div", {class: "graph-bar"}, legend, zoomBar), graph),
       panel));

  function zoomBy(f) {
    if (!dag) return;
    scale = f === "fit" ? dag.zoom("fit") : dag.zoom(f === 1 ? 1 : Math.min(2, scale * f));
  }

  function renderHead() {
    title.replaceChildren(el("span", {text: wf.name}), " ", badge(wf.status));
    title.dataset.status = wf.status;
    const rows = [["id", wf.workflow_id], ["kind", wf.kind], ["created", fmtTime(wf.created_at)],
                  ["started", fmtTime(wf.started_at)], ["finished", fmtTime(wf.finished_at)],
                  ["duration", fmtDuration(wf.duration_s)]];
    meta.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: v})]));
    const c = countStates(tasks.values());
    counts.replaceChildren(...TASK_STATES.filter((s) => c[s]).map((s) =>
      el("span", {class: `count st-${s}`, "data-state": s, text: `${c[s]} ${s}`})));
    cancelBtn.disabled = FINISHED.has(wf.status);
    retryBtn.disabled = !(wf.status === "failed" || wf.status === "cancelled");
  }

  async function load() {
    wf = await api(`/workflows/${enc(id)}`, {signal});
    const first = !dag;
    for (const t of wf.tasks) tasks.set(t.id, t);
    if (first) {
      dag = drawDag(graph, wf.tasks, (tid) => { location.hash = `#/workflows/${enc(id)}/${enc(tid)}`; });
      const fitted = dag.zoom("fit");
      scale = fitted >= 0.6 ? fitted : dag.zoom(1);
      const running = wf.tasks.find((t) => t.status === "running");
      dag.focus(initialTask || running?.id || wf.tasks[0]?.id);  // too big to fit: start there
    } else {
      wf.tasks.forEach(dag.update);
    }
    renderHead();
  }

  function applyEvent(e) {
    if (e.type === "workflow") return true;  // timings changed: the caller reloads
    const t = tasks.get(e.task);
    if (!t) return false;
    t.status = e.status ?? t.status;
    if (e.progress !== null && e.progress !== undefined) t.progress = e.progress;
    if (e.message !== null && e.message !== undefined) t.message = e.message;
    dag.update(t);
    if (selected === t.id && e.type === "task") {  // attempts, timings, exit code changed
      showTask(t.id, false);
      tailLog();  // and read what it printed last
    } else if (selected === t.id) {
      renderPanel(t, false);
    }
    return false;
  }

  async function follow() {
    while (!signal.aborted) {
      const done = FINISHED.has(wf.status);
      try {
        const doc = await api(`/workflows/${enc(id)}/events?after=${last}&timeout=` +
                              (done ? 0 : EVENTS_WAIT_S), {signal});
        ui.live(true);
        let reload = doc.status !== wf.status;
        for (const e of doc.events) reload = applyEvent(e) || reload;
        last = doc.last;
        if (doc.events.length) renderHead();
        if (reload) await load();
        if (done && !doc.events.length) {
          nap = new AbortController();
          await pause(FINISHED_RECHECK_MS, nap.signal);
        }
      } catch (error) {
        if (signal.aborted || error.signedOut) return;
        ui.live(false, error.message);
        await pause(2000, signal);
      }
    }
  }

  async function act(what) {
    if (what === "cancel" && !confirm(`Cancel workflow ${wf.name}? Running tasks are killed.`)) return;
    try {
      wf = {...wf, ...(await api(`/workflows/${enc(id)}/${what}`, {method: "POST", signal}))};
      ui.notice(what === "cancel" ? "Cancel requested." : "Retry requested.");
      await load();
      wake();  // a retried workflow runs again: follow it now, not after the pause
    } catch (error) {
      if (!signal.aborted) ui.error(`${what} failed: ${error.message}`);
    }
  }

  async function showTask(tid, fresh = true) {
    if (fresh) {
      selected = tid;
      Object.assign(log, {tid, offset: null});
      dag.select(tid);
    }
    let t;
    try {
      t = await api(`/tasks/${enc(id)}.${enc(tid)}`, {signal});
    } catch (error) {
      if (!signal.aborted) ui.error(error.message);
      return;
    }
    if (selected !== tid) return;
    tasks.set(tid, {...tasks.get(tid), ...t});
    renderPanel(t, fresh);
    if (fresh) tailLog();
  }

  function renderPanel(t, fresh) {
    const rows = [["status", badge(t.status)], ["op", t.op], ["progress", `${t.progress}%`],
                  ["message", t.message || "—"],
                  ["attempts", `${t.attempts} (retries allowed: ${t.retries})`],
                  ["started", fmtTime(t.started_at)], ["finished", fmtTime(t.finished_at)],
                  ["duration", fmtDuration(t.duration_s)],
                  ["exit code", t.exit_code ?? "—"], ["signal", t.signal ?? "—"],
                  ["error", t.error || "—"], ["depends on", t.depends_on.join(", ") || "—"],
                  ["pid", t.pid ?? "—"]];
    const dl = el("dl", {class: "meta task-meta"}, ...rows.flatMap(([k, v]) =>
      [el("dt", {text: k}), el("dd", {"data-field": k}, typeof v === "object" ? v : String(v))]));
    const log = fresh ? el("pre", {class: "log", id: "task-log", text: ""})
                      : panel.querySelector("#task-log");
    panel.replaceChildren(el("h2", {text: t.id}), dl, el("h3", {text: "Log"}), log);
  }

  // Follows the selected task's log. One read at a time (two would append the
  // same bytes twice); a read asked for meanwhile runs right after.
  async function tailLog() {
    if (log.busy) {
      log.again = true;
      return;
    }
    const tid = log.tid;
    if (!tid || signal.aborted) return;
    log.busy = true;
    clearTimeout(log.timer);
    const key = `${enc(id)}.${enc(tid)}`;
    try {
      if (log.offset === null) {  // start near the end of a long log
        const probe = await api(`/tasks/${key}/log?offset=${Number.MAX_SAFE_INTEGER}`,
                                {signal, log: true});
        if (log.tid === tid) log.offset = Math.max(0, probe.size - LOG_TAIL_BYTES);
      }
      const chunk = log.tid === tid &&
        await api(`/tasks/${key}/log?offset=${log.offset}`, {signal, log: true});
      if (chunk && log.tid === tid) {
        log.offset = chunk.offset;
        showLog(chunk.text, tasks.get(tid)?.status);
      }
    } catch {
      // shown by the next read or the events loop; a log is not worth a banner
    } finally {
      log.busy = false;
    }
    const again = log.again;
    log.again = false;
    const t = tasks.get(log.tid);
    if (again) tailLog();
    else if (!signal.aborted && t && !TASK_DONE.has(t.status)) {
      log.timer = setTimeout(tailLog, LOG_POLL_MS);
    }
  }

  function showLog(text, status) {
    const pre = panel.querySelector("#task-log");
    if (!pre) return;
    if (text) {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      const before = pre.dataset.empty ? "" : pre.textContent;
      delete pre.dataset.empty;
      pre.textContent = (before + text).slice(-LOG_KEEP_CHARS);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    } else if (!pre.textContent || pre.dataset.empty) {
      pre.dataset.empty = "1";
      pre.textContent = status === "queued" ? "(not started yet)"
        : TASK_DONE.has(status) ? "(no output)" : "(no output yet)";
    }
  }

  (async () => {
    try {
      await load();
    } catch (error) {
      if (!signal.aborted && !error.signedOut) ui.error(error.message);
      return;
    }
    if (initialTask) showTask(initialTask);
    follow();
  })();

  return {
    route({task}) {  // same workflow, another task selected
      if (task && dag && task !== selected) showTask(task);
      return true;
    },
    unmount() { ctrl.abort(); clearTimeout(log.timer); },
  };
}
