// A workflow's DAG drawn in SVG, no library: layered left to right by
// dependency depth (a task's column is 1 + the deepest of its dependencies),
// rows ordered by a few barycenter sweeps (fewer crossings), nodes coloured
// by state with a progress bar while they run, edges as curves with arrows.
// Updating one task touches only its node, so live events stay cheap.

import {svg} from "./util.js";

const W = 176, H = 40, GAP_X = 56, GAP_Y = 10, PAD = 16, LABEL_CHARS = 22;
const SWEEPS = 4;

// tasks: [{id, depends_on}] -> {col[], row[], cols, rows} (indexes as in tasks)
export function layout(tasks) {
  const n = tasks.length;
  const index = new Map(tasks.map((t, i) => [t.id, i]));
  const parents = tasks.map((t) => t.depends_on.map((d) => index.get(d))
    .filter((j) => j !== undefined));
  const children = tasks.map(() => []);
  const indegree = new Int32Array(n);
  parents.forEach((ps, i) => { for (const p of ps) { children[p].push(i); indegree[i]++; } });
  const col = new Int32Array(n);
  const queue = [];
  for (let i = 0; i < n; i++) if (indegree[i] === 0) queue.push(i);
  for (let head = 0; head < queue.length; head++) {  // Kahn: parents before children
    const u = queue[head];
    for (const c of children[u]) {
      if (col[u] + 1 > col[c]) col[c] = col[u] + 1;
      if (--indegree[c] === 0) queue.push(c);
    }
  }
  const layers = [];
  for (let i = 0; i < n; i++) (layers[col[i]] ||= []).push(i);
  for (let c = 0; c < layers.length; c++) layers[c] ||= [];
  const row = new Float64Array(n);
  layers.forEach((layer) => layer.forEach((i, r) => { row[i] = r; }));
  const order = (layer, neighbours) => {
    const key = new Float64Array(layer.length);
    layer.forEach((i, k) => {
      const ns = neighbours[i];
      key[k] = ns.length ? ns.reduce((s, j) => s + row[j], 0) / ns.length : row[i];
    });
    const idx = layer.map((_, k) => k).sort((a, b) => key[a] - key[b] || a - b);
    const sorted = idx.map((k) => layer[k]);
    sorted.forEach((i, r) => { row[i] = r; });
    return sorted;
  };
  for (let s = 0; s < SWEEPS; s++) {
    if (s % 2 === 0) for (let c = 1; c < layers.length; c++) layers[c] = order(layers[c], parents);
    else for (let c = layers.length - 2; c >= 0; c--) layers[c] = order(layers[c], children);
  }
  const rows = Math.max(1, ...layers.map((l) => l.length));
  layers.forEach((layer) => {  // centre each column against the tallest one
    const shift = (rows - layer.length) / 2;
    layer.forEach((i) => { row[i] += shift; });
  });
  return {col, row, cols: Math.max(1, layers.length), rows, parents};
}

function label(id) {
  return id.length > LABEL_CHARS ? id.slice(0, LABEL_CHARS - 1) + "…" : id;
}

function subline(task) {
  if (task.status === "running") return `running ${task.progress || 0}%`;
  if (task.status === "queued" && task.attempts) return `queued (attempt ${task.attempts + 1})`;
  return task.status;
}

// Draw `tasks` into `host` (replacing what was there). onSelect(taskId) on
// click or Enter. Returns {update(task), select(id), focus(id), zoom(factor|"fit"), size}.
export function drawDag(host, tasks, onSelect) {
  performance.mark("dag-start");
  const {col, row, cols, rows, parents} = layout(tasks);
  const width = PAD * 2 + cols * W + (cols - 1) * GAP_X;
  const height = PAD * 2 + rows * H + (rows - 1) * GAP_Y;
  const x = (i) => PAD + col[i] * (W + GAP_X);
  const y = (i) => PAD + row[i] * (H + GAP_Y);
  const root = svg("svg", {class: "dag", viewBox: `0 0 ${width} ${height}`, width, height,
                           role: "img", "aria-label": `task graph, ${tasks.length} tasks`});
  root.append(svg("defs", {}, svg("marker", {id: "arrow", viewBox: "0 0 8 8", refX: 8, refY: 4,
                                              markerWidth: 7, markerHeight: 7,
                                              markerUnits: "userSpaceOnUse", orient: "auto"},
                                        svg("path", {d: "M0,0 L8,4 L0,8 z", class: "arrow"}))));
  const edgeLayer = svg("g", {class: "edges"});
  const nodeLayer = svg("g", {class: "nodes"});
  const edgesOf = new Map();  // task id -> its edge paths (in and out)
  const nodes = new Map();  // task id -> {g, sub, bar, title}
  tasks.forEach((t, i) => {
    for (const p of parents[i]) {
      const x1 = x(p) + W, y1 = y(p) + H / 2, x2 = x(i) - 2, y2 = y(i) + H / 2;
      const mx = (x1 + x2) / 2;
      const path = svg("path", {class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`,
                                "marker-end": "url(#arrow)"});
      edgeLayer.append(path);
      for (const id of [t.id, tasks[p].id]) (edgesOf.get(id) || edgesOf.set(id, []).get(id)).push(path);
    }
    const sub = svg("text", {class: "sub", x: 10, y: 32});
    const bar = svg("rect", {class: "bar", x: 0, y: H - 4, height: 4, width: 0, rx: 2});
    const title = svg("title");
    const g = svg("g", {class: "node", transform: `translate(${x(i)},${y(i)})`, tabindex: 0,
                        "data-id": t.id, role: "button"},
                  title, svg("rect", {class: "box", width: W, height: H, rx: 6}),
                  svg("text", {class: "label", x: 10, y: 16, text: label(t.id)}), sub, bar);
    nodes.set(t.id, {g, sub, bar, title});
    nodeLayer.append(g);
  });
  const pick = (event) => {
    const g = event.target.closest?.("g.node");
    if (g && (event.type === "click" || event.key === "Enter")) onSelect(g.dataset.id);
  };
  nodeLayer.addEventListener("click", pick);
  nodeLayer.addEventListener("keydown", pick);
  root.append(edgeLayer, nodeLayer);

  function update(task) {
    const node = nodes.get(task.id);
    if (!node) return;
    node.g.setAttribute("class", `node st-${task.status}${node.selected ? " selected" : ""}`);
    node.g.dataset.status = task.status;
    node.sub.textContent = subline(task);
    const shown = task.status === "running" ? Math.max(0, Math.min(100, task.progress || 0)) : 0;
    node.bar.setAttribute("width", String((W * shown) / 100));
    node.title.textContent = `${task.id} (${task.op}): ${subline(task)}` +
      (task.message ? ` — ${task.message}` : "");
  }
  function select(id) {
    for (const [tid, node] of nodes) {
      if (node.selected && tid !== id) { node.selected = false; node.g.classList.remove("selected"); }
    }
    for (const path of nodeLayer.ownerDocument.querySelectorAll("path.edge.lit")) path.classList.remove("lit");
    const node = nodes.get(id);
    if (!node) return;
    node.selected = true;
    node.g.classList.add("selected");
    for (const path of edgesOf.get(id) || []) path.classList.add("lit");
  }
  const place = new Map(tasks.map((t, i) => [t.id, i]));
  let scale = 1;
  function focus(id) {  // scroll the node into the middle of the view
    const i = place.get(id);
    if (i === undefined) return;
    host.scrollTo({left: (x(i) + W / 2) * scale - host.clientWidth / 2,
                   top: (y(i) + H / 2) * scale - host.clientHeight / 2});
  }
  function zoom(factor) {
    const box = host.getBoundingClientRect();
    scale = factor === "fit"
      ? Math.min(1, (box.width - 4) / width, (Math.max(box.height, 240) - 4) / height) : factor;
    root.setAttribute("width", String(Math.round(width * scale)));
    root.setAttribute("height", String(Math.round(height * scale)));
    return scale;
  }
  tasks.forEach(update);
  host.replaceChildren(root);
  performance.measure("dag-draw", "dag-start");
  return {update, select, focus, zoom, size: {width, height}};
}
