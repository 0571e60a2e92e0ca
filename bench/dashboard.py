"""The dashboard in a real headless Chromium: how long a big DAG and a page of
a long list take to appear (issue 18: 500 tasks draw in under a second,
1,000 workflows list in pages).

Starts the real daemon (BenchDaemon: temp data dir, port 0, one task slot),
parks its one slot behind a `sleep` so nothing moves while measuring, submits
a 500-task DAG (bench/engine_dag.py's make_dag: 3 dependencies per task,
1,500 edges), a 1-task workflow, and 1,000 one-task workflows; signs a
browser in with a one-time code (the real sign-in path) and measures, in the
page with performance.now(), from the route change to the second animation
frame after the last node/row is in the document (fetch + JSON + layout +
SVG + style + paint):

  workflow page, 500 tasks        reference: the same page with 1 task
  list, one page (50) of 1,001    reference: the same GET /workflows page
                                             fetched and parsed in the page

plus the page's own User Timing measure of the DAG drawing alone ("dag-draw":
layout + SVG nodes, before paint). Each figure is the median of --runs.

Usage: python bench/dashboard.py [--runs 5] [--tasks 500] [--workflows 1000] [--json]
       python bench/dashboard.py --screenshot docs/dashboard.png   (the README's picture)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from engine_dag import make_dag  # noqa: E402
from submit import BenchDaemon, blocker_workflow  # noqa: E402

from tests.browser import running_chromium, unavailable_reason  # noqa: E402

# Route to `hash`, then resolve once `selector` matches `count` elements and two
# frames were drawn; answers the milliseconds taken.
TIME_ROUTE = """async ([hash, selector, count]) => {
  const t0 = performance.now();
  location.hash = hash;
  await new Promise((resolve) => {
    const done = () => document.querySelectorAll(selector).length >= count;
    if (done()) return resolve();
    const seen = new MutationObserver(() => { if (done()) { seen.disconnect(); resolve(); } });
    seen.observe(document.body, {childList: true, subtree: true});
  });
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0;
}"""

TIME_FETCH = """async (path) => {
  const csrf = localStorage.getItem("provisioning.csrf");
  const t0 = performance.now();
  const resp = await fetch(path, {headers: {"X-CSRF-Token": csrf}});
  await resp.json();
  return performance.now() - t0;
}"""


def _request(d: BenchDaemon, conn, method: str, path: str, body: dict | None = None) -> dict:
    conn.request(method, path, json.dumps(body).encode() if body is not None else None,
                 d.headers())
    resp = conn.getresponse()
    data = resp.read()
    if resp.status >= 300:
        raise SystemExit(f"{method} {path}: {resp.status} {data[:200]!r}")
    return json.loads(data)


def _park(d: BenchDaemon, conn) -> None:
    """Take the daemon's one task slot with a long sleep: what follows stays queued."""
    _request(d, conn, "POST", "/workflows", blocker_workflow(600))


def _signed_in_page(browser, d: BenchDaemon, conn, viewport=(1400, 800)):
    page = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}).new_page()
    grant = _request(d, conn, "POST", "/auth/codes", {})
    page.goto(f"http://127.0.0.1:{d.port}{grant['path']}")
    page.wait_for_selector("#workflow-rows")
    return page


def _median_ms(samples: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "max_ms": max(samples), "runs": len(samples)}


def measure(args: argparse.Namespace, browser, d: BenchDaemon) -> dict:
    conn = d.connect()
    _park(d, conn)
    doc, edges = make_dag(args.tasks, 3)
    big = _request(d, conn, "POST", "/workflows", doc)["workflow_id"]
    small = _request(d, conn, "POST", "/workflows", {"workflow": {"name": "one"},
                                                     "tasks": [{"id": "t0", "op": "noop"}]})
    for i in range(args.workflows - 2):
        _request(d, conn, "POST", "/workflows", {"workflow": {"name": f"wf-{i}"},
                                                 "tasks": [{"id": "t", "op": "noop"}]})
    total = args.workflows + 1
    page = _signed_in_page(browser, d, conn)
    route = lambda h, sel, n: page.evaluate(TIME_ROUTE, [h, sel, n])  # noqa: E731
    dag, ref, draw, listed, fetched = [], [], [], [], []
    for _ in range(args.runs):
        route("#/", "#workflow-rows tr", 1)
        dag.append(route(f"#/workflows/{big}", "svg.dag g.node", args.tasks))
        draw.append(page.evaluate("performance.getEntriesByName('dag-draw').at(-1).duration"))
        route("#/", "#workflow-rows tr", 1)
        ref.append(route(f"#/workflows/{small['workflow_id']}", "svg.dag g.node", 1))
        route("#/", "#workflow-rows tr", 1)
        listed.append(route("#/?offset=500", "#workflow-rows tr[data-id]", 50))
        fetched.append(page.evaluate(TIME_FETCH, "/workflows?limit=50&offset=500"))
    shown = page.inner_text("#range")
    if shown != f"501–550 of {total}":
        raise SystemExit(f"the list page shows {shown!r}, expected 501–550 of {total}")
    conn.close()
    return {"tasks": args.tasks, "edges": edges, "workflows": total, "runs": args.runs,
            "browser": browser.version,
            "workflow_page": {**_median_ms(dag), "reference": _median_ms(ref),
                              "ratio": statistics.median(dag) / statistics.median(ref),
                              "dag_draw": _median_ms(draw), "target_ms": 1000},
            "list_page": {**_median_ms(listed), "reference": _median_ms(fetched),
                          "ratio": statistics.median(listed) / statistics.median(fetched)}}


def screenshot(path: Path, browser, d: BenchDaemon) -> None:
    """The README's picture: a cluster build half way, one task failed, one selected."""
    conn = d.connect()
    gate = d.base / "gate"
    script = d.base / "step.sh"
    script.write_text('echo "PROGRESS: $1 $2"\necho "$2"\n'
                      'for n in 1 2 3; do echo "  $n of 5 done"; done\n'
                      f'while [ ! -e {gate} ]; do sleep 0.2; done\n')
    step = ["sh", str(script)]
    tasks = [{"id": "network", "op": "noop"},
             *({"id": f"web-{i}", "op": "noop", "depends_on": ["network"]} for i in (1, 2, 3)),
             {"id": "db-primary", "op": "shell.run", "depends_on": ["network"],
              "params": {"argv": [*step, "60", "restoring base backup"]}},
             {"id": "db-replica", "op": "shell.run", "params": {"argv": ["false"]},
              "depends_on": ["network"]},
             {"id": "kubernetes", "op": "shell.run", "depends_on": ["web-1", "web-2", "web-3"],
              "params": {"argv": [*step, "35", "joining nodes"]}},
             {"id": "ingress", "op": "noop", "depends_on": ["kubernetes"]},
             {"id": "app", "op": "noop", "depends_on": ["ingress", "db-primary"]},
             {"id": "backups", "op": "noop", "depends_on": ["db-replica"]},
             {"id": "monitoring", "op": "noop", "depends_on": ["kubernetes"]}]
    wf = _request(d, conn, "POST", "/workflows", {"workflow": {"name": "cluster-build",
                                                               "max_parallel": 4},
                                                  "tasks": tasks})["workflow_id"]
    page = _signed_in_page(browser, d, conn, viewport=(1280, 640))
    page.goto(f"http://127.0.0.1:{d.port}/ui/#/workflows/{wf}/kubernetes")
    page.wait_for_selector("g.node[data-id=kubernetes][data-status=running]")
    page.wait_for_selector("g.node[data-id=backups][data-status=skipped]")
    page.wait_for_function("document.querySelector('#task-log')?.textContent"
                           ".includes('joining nodes')")
    page.screenshot(path=str(path))
    gate.touch()
    conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--workflows", type=int, default=1000)
    ap.add_argument("--screenshot", type=Path, help="only save the README's screenshot here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"dashboard bench unavailable: {reason}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="prov-dash-", dir="/var/tmp"))
    d = BenchDaemon(base, slots=4 if args.screenshot else 1).start()
    try:
        with running_chromium() as browser:
            if args.screenshot:
                screenshot(args.screenshot, browser, d)
                print(f"saved {args.screenshot}")
                return 0
            t0 = time.monotonic()
            result = measure(args, browser, d)
            result["seconds"] = time.monotonic() - t0
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    w, li = result["workflow_page"], result["list_page"]
    print(f"Chromium {result['browser']}, median of {result['runs']} runs")
    print(f"workflow page, {result['tasks']} tasks / {result['edges']} edges: "
          f"{w['median_ms']:.0f} ms (min {w['min_ms']:.0f}, max {w['max_ms']:.0f}); "
          f"1-task page {w['reference']['median_ms']:.0f} ms ({w['ratio']:.1f}x); "
          f"drawing alone {w['dag_draw']['median_ms']:.0f} ms; target < 1000 ms")
    print(f"list page 501-550 of {result['workflows']}: {li['median_ms']:.0f} ms "
          f"(min {li['min_ms']:.0f}, max {li['max_ms']:.0f}); the same API page fetched "
          f"{li['reference']['median_ms']:.0f} ms ({li['ratio']:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
