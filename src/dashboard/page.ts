/**
 * The dashboard's single page: one status row per run (state, step x of N, ETA, latest
 * figures, the error of a failed run), then charts built from whatever numeric fields the
 * metrics carry, every run overlaid. Every value is set as text, never as markup.
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tessera</title>
<link rel="stylesheet" href="/uplot.css">
<script src="/uplot.js"></script>
<style>
  body { font: 14px system-ui, sans-serif; margin: 20px; background: #fafafa; color: #222; }
  h1 { font-size: 20px; margin: 0 0 8px; }
  #controls { display: flex; gap: 24px; align-items: center; margin: 0 0 14px; color: #444; }
  #controls input[type=range] { vertical-align: middle; width: 160px; }
  .run { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; margin-bottom: 10px; }
  .run-head { display: flex; gap: 10px; align-items: baseline; flex-wrap: wrap; }
  .run-name { font-weight: 600; font-size: 16px; }
  .badge { border-radius: 10px; padding: 1px 9px; font-size: 12px; color: #fff; background: #888; }
  .badge.running { background: #1f77b4; } .badge.finished { background: #2ca02c; }
  .badge.failed { background: #d62728; } .badge.stopped { background: #ff7f0e; }
  .progress { color: #444; }
  .note { color: #666; font-size: 12px; }
  .cards { display: flex; gap: 10px; flex-wrap: wrap; margin-top: 6px; }
  .card { border: 1px solid #eee; border-radius: 6px; padding: 4px 10px; min-width: 110px; }
  .card span { display: block; color: #666; font-size: 12px; }
  .card b { font-size: 18px; }
  .error { white-space: pre-wrap; background: #fff0f0; border: 1px solid #f3c0c0; border-radius: 4px;
           padding: 6px 8px; margin: 6px 0 0; font: 12px ui-monospace, monospace; color: #900; }
  .config { color: #555; font-size: 12px; margin-top: 4px; }
  #charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 12px; margin-top: 14px; }
  .chart { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
  .chart h2 { font-size: 14px; margin: 0 0 4px; }
  .legend { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 12px; margin-top: 4px; }
  .legend i { display: inline-block; width: 14px; height: 3px; margin: 0 5px 3px 0; vertical-align: middle; }
  .legend b { font-weight: 600; margin-left: 4px; }
  .legend .smoothed { color: #777; }
</style>
</head>
<body>
<h1>tessera</h1>
<div id="controls">
  <label>Smoothing <input type="range" id="smoothing" min="0" max="0.99" step="0.01" value="0.6">
    <span id="smoothing-value">0.60</span></label>
  <label><input type="checkbox" id="logscale"> Log scale (loss)</label>
</div>
<div id="runs"></div>
<div id="charts"></div>
<script>
// Plain names and units of the metric keys; anything else gets its key with spaces.
const NAMES = {
  loss: "Training loss", eval_loss: "Held-out loss", lr: "Learning rate", grad_norm: "Gradient norm",
  tokens_per_s_per_gpu: "Throughput", tokens_per_s: "Throughput", samples_per_s: "Samples per second",
  step_time: "Step time", data_wait: "Waiting for data", peak_memory_gib: "Peak memory",
  pack_fill: "Pack fill", tokens: "Tokens per step", eval_exact_match: "Held-out exact match",
};
const UNITS = {
  tokens_per_s_per_gpu: "tokens/s per GPU", tokens_per_s: "tokens/s", samples_per_s: "samples/s",
  step_time: "s", data_wait: "s", peak_memory_gib: "GiB", pack_fill: "%", eval_exact_match: "%", tokens: "tokens",
};
const PERCENT = new Set(["pack_fill", "eval_exact_match"]);
// Charts grouped by meaning, in this order; any other numeric field gets a chart of its own.
const GROUPS = [
  { id: "loss", title: "Loss", loss: true, match: (k) => k === "loss" || k === "eval_loss" },
  { id: "dataset", title: "Loss per dataset", loss: true,
    match: (k) => k.startsWith("loss_by_dataset.") || k.startsWith("eval_loss_by_dataset.") },
  { id: "exact", title: "Held-out exact match (%)", match: (k) => k === "eval_exact_match" },
  { id: "lr", title: "Learning rate", match: (k) => k === "lr" },
  { id: "throughput", title: "Throughput (tokens/s per GPU)", match: (k) => k === "tokens_per_s_per_gpu" || k === "tokens_per_s" },
  { id: "fill", title: "Pack fill (%)", match: (k) => k === "pack_fill" },
  { id: "time", title: "Time per step (s)", match: (k) => k === "step_time" || k === "data_wait" },
  { id: "grad", title: "Gradient norm", match: (k) => k === "grad_norm" },
  { id: "memory", title: "Peak memory (GiB)", match: (k) => k === "peak_memory_gib" },
  { id: "samples", title: "Samples per second", match: (k) => k === "samples_per_s" },
  { id: "tokens", title: "Tokens per step", match: (k) => k === "tokens" },
  // preference runs (--method dpo|mpo)
  { id: "rewards", title: "Rewards", match: (k) => ["rewards_chosen", "rewards_rejected", "reward_margin"].includes(k) },
  { id: "reward-accuracy", title: "Reward accuracy", match: (k) => k === "reward_accuracy" },
  { id: "preference-terms", title: "Preference loss terms",
    match: (k) => ["loss_sigmoid", "loss_bco_pair", "loss_ipo", "loss_hinge", "nll_loss"].includes(k) },
];
const SKIP = new Set(["step", "total", "time", "rank", "epoch", "event", "peak_memory", "eval_time", "eval_tokens"]);
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

function plain(k) {
  if (NAMES[k]) return NAMES[k];
  const dot = k.indexOf(".");
  if (dot >= 0) return (k.startsWith("eval_") ? "held-out: " : "training: ") + k.slice(dot + 1);
  const s = k.replace(/_/g, " ");
  return s.charAt(0).toUpperCase() + s.slice(1);
}
function fmt(v) {
  if (v == null || !Number.isFinite(v)) return "--";
  if (v !== 0 && Math.abs(v) < 0.01) return v.toExponential(1);
  if (Math.abs(v) >= 10000) return Math.round(v).toLocaleString("en-US");
  return String(+v.toPrecision(4));
}
function fmtValue(k, v) {
  if (v == null) return "--";
  const base = k.indexOf(".") >= 0 ? k.slice(0, k.indexOf(".")) : k;
  if (PERCENT.has(base)) return (v * 100).toFixed(1) + " %";
  const unit = UNITS[base];
  return fmt(v) + (unit && unit !== "%" ? " " + unit : "");
}
function duration(s) {
  if (!Number.isFinite(s) || s < 0) return "--";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = String(s % 60).padStart(2, "0");
  return h ? h + ":" + String(m).padStart(2, "0") + ":" + r : m + ":" + r;
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// ------------------------------------------------------------------ state
const runs = [];
const charts = new Map();
let smoothing = 0.6;
let logScale = false;
window.__tessera = { runs, charts };

function flatten(r) {
  const out = {};
  for (const [k, v] of Object.entries(r)) {
    if (typeof v === "number") out[k] = v;
    else if (v && typeof v === "object" && !Array.isArray(v))
      for (const [dk, dv] of Object.entries(v)) if (typeof dv === "number") out[k + "." + dk] = dv;
  }
  if (typeof out.peak_memory === "number") out.peak_memory_gib = out.peak_memory / 2 ** 30; // bytes on the wire
  return out;
}

function addLine(run, r) {
  const flat = flatten(r);
  if (typeof flat.step !== "number") return;
  // A resumed run logs again from its checkpoint's step (and a reconnect replays the file):
  // a line replaces the lines of the same or later steps.
  const isEval = r.event === "eval";
  const list = isEval ? run.evals : run.metrics;
  while (list.length && list[list.length - 1].step >= flat.step) list.pop();
  if (!isEval) while (run.evals.length && run.evals[run.evals.length - 1].step >= flat.step) run.evals.pop();
  list.push(flat);
  schedule();
}

let scheduled = false;
function schedule() {
  if (!scheduled) { scheduled = true; requestAnimationFrame(() => { scheduled = false; render(); }); }
}

// ------------------------------------------------------------------ run rows
function eta(run) {
  const m = run.metrics;
  if (m.length < 2) return NaN;
  const last = m[m.length - 1], first = m[Math.max(0, m.length - 21)];
  if (!(last.time > first.time) || last.step <= first.step) return NaN;
  return ((last.time - first.time) / (last.step - first.step)) * (last.total - last.step);
}

function renderRun(run) {
  const last = run.metrics[run.metrics.length - 1] || {};
  const lastEval = run.evals[run.evals.length - 1] || {};
  const st = run.status || {};
  const state = st.status || (run.metrics.length ? "running" : "waiting");
  const box = run.el;
  const head = el("div", "run-head");
  head.append(el("span", "run-name", run.name), el("span", "badge " + state, state));
  const step = st.status && st.status !== "running" && typeof st.step === "number" ? st.step : last.step;
  const ended = st.status && st.status !== "running";
  const total = ended && typeof st.total === "number" ? st.total : last.total;
  if (typeof step === "number") {
    let text = "step " + step + (typeof total === "number" ? " of " + total : "");
    if (typeof total === "number" && total > 0) text += " (" + ((100 * step) / total).toFixed(1) + " %)";
    if (state === "running") text += " · ETA " + duration(eta(run));
    else if (st.ended && st.started) text += " · took " + duration(st.ended - st.started);
    head.append(el("span", "progress", text));
  }
  if (!run.connected && state === "running")
    head.append(el("span", "note", "connection to the dashboard server lost; showing what arrived"));
  const cards = el("div", "cards");
  const card = (label, value) => {
    const c = el("div", "card");
    c.append(el("span", "", label), el("b", "", value));
    cards.append(c);
  };
  const finalLoss = st.status && st.status !== "running" && typeof st.loss === "number" ? st.loss : last.loss;
  if (typeof finalLoss === "number") card(state === "finished" ? "Final training loss" : "Training loss", fmt(finalLoss));
  if (typeof lastEval.eval_loss === "number") card("Held-out loss (step " + lastEval.step + ")", fmt(lastEval.eval_loss));
  if (typeof lastEval.eval_exact_match === "number") card("Held-out exact match", fmtValue("eval_exact_match", lastEval.eval_exact_match));
  if (st.best && typeof st.best.value === "number") card("Best " + plain(st.best.metric), fmt(st.best.value));
  for (const k of ["lr", "tokens_per_s_per_gpu", "pack_fill", "peak_memory_gib"])
    if (typeof last[k] === "number") card(plain(k), fmtValue(k, last[k]));
  const parts = [head, cards];
  if (state === "failed" && st.error) parts.push(el("pre", "error", st.error));
  if (run.config) parts.push(el("div", "config", run.config));
  box.replaceChildren(...parts);
}

// ------------------------------------------------------------------ charts
function seriesKeys() {
  // keys per group, in first-seen order over all runs
  const keys = [];
  const seen = new Set();
  for (const run of runs)
    for (const rows of [run.metrics, run.evals])
      for (const r of rows) for (const k in r) if (!SKIP.has(k) && !seen.has(k)) { seen.add(k); keys.push(k); }
  const groups = [];
  const used = new Set();
  for (const g of GROUPS) {
    const ks = keys.filter((k) => g.match(k));
    ks.forEach((k) => used.add(k));
    if (ks.length) groups.push({ ...g, keys: ks });
  }
  for (const k of keys) if (!used.has(k)) groups.push({ id: "key:" + k, title: plain(k) + (UNITS[k] ? " (" + UNITS[k] + ")" : ""), keys: [k] });
  return groups;
}

function smooth(values, a) {
  if (!(a > 0)) return values;
  const out = new Array(values.length).fill(null);
  let acc = 0, n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null) continue;
    acc = acc * a + (1 - a) * v;
    n++;
    out[i] = acc / (1 - Math.pow(a, n)); // debiased, as TensorBoard does
  }
  return out;
}

function chartData(g) {
  const series = [];
  for (const [ri, run] of runs.entries())
    for (const k of g.keys) {
      const isEval = k.startsWith("eval_");
      const rows = isEval ? run.evals : run.metrics;
      if (!rows.some((r) => typeof r[k] === "number")) continue;
      series.push({ run: ri, key: k, isEval, rows,
        label: (runs.length > 1 ? run.name + ": " : "") + plain(k) + (isEval ? "" : "") });
    }
  const steps = new Set();
  for (const s of series) for (const r of s.rows) if (typeof r[s.key] === "number") steps.add(r.step);
  const xs = [...steps].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const data = [xs];
  const raw = [];
  for (const s of series) {
    let col = new Array(xs.length).fill(null);
    for (const r of s.rows) if (typeof r[s.key] === "number") col[at.get(r.step)] = PERCENT.has(s.key) ? 100 * r[s.key] : r[s.key];
    raw.push(col);
    if (!s.isEval) col = smooth(col, smoothing);
    if (g.loss && logScale) col = col.map((v) => (v != null && v > 0 ? v : null));
    data.push(col);
  }
  return { series, data, raw };
}

function legendUpdate(c, idx) {
  if (!c.plot) return;
  c.legend.replaceChildren(...c.series.map((s, i) => {
    // the value itself (at the cursor, else the latest), and the smoothed curve's beside it
    const col = c.raw[i];
    let j = idx;
    if (j == null) for (j = col.length - 1; j > 0 && col[j] == null; j--);
    const v = j != null && j >= 0 ? col[j] : null;
    const sm = c.plot.data[i + 1][j];
    const item = el("span", "");
    const sw = el("i", "");
    sw.style.background = s.color;
    if (s.dash) sw.style.background = "repeating-linear-gradient(90deg," + s.color + " 0 4px,transparent 4px 6px)";
    const show = (x) => (x == null ? "--" : PERCENT.has(s.key) ? x.toFixed(1) + " %" : fmt(x));
    item.append(sw, s.label, el("b", "", show(v)));
    if (!s.isEval && smoothing > 0 && v != null && sm != null && show(sm) !== show(v))
      item.append(el("span", "smoothed", " (smoothed " + show(sm) + ")"));
    return item;
  }));
}

function render() {
  for (const run of runs) renderRun(run);
  const groups = seriesKeys();
  const wanted = new Set(groups.map((g) => g.id));
  for (const [id, c] of charts) if (!wanted.has(id)) { c.plot.destroy(); c.el.remove(); charts.delete(id); }
  const root = document.getElementById("charts");
  for (const g of groups) {
    const { series, data, raw } = chartData(g);
    const sig = series.map((s) => s.run + "/" + s.key).join() + "|" + (g.loss && logScale);
    let c = charts.get(g.id);
    if (c && c.sig !== sig) { c.plot.destroy(); c.el.remove(); charts.delete(g.id); c = undefined; }
    if (!c) {
      const box = el("div", "chart");
      box.dataset.chart = g.id;
      box.append(el("h2", "", g.title));
      root.appendChild(box);
      const legend = el("div", "legend");
      // One colour per run when runs are overlaid (its second key dotted), else one per series;
      // evaluation curves dashed, with their points.
      series.forEach((s, i) => {
        s.color = COLORS[(runs.length > 1 ? s.run : i) % COLORS.length];
        s.dash = s.isEval ? [6, 4] : runs.length > 1 && g.keys.indexOf(s.key) > 0 ? [2, 3] : undefined;
      });
      c = { el: box, legend, series, sig, plot: null, raw };
      const opts = {
        width: Math.max(300, box.clientWidth - 16), height: 220,
        legend: { show: false },
        scales: { x: { time: false }, y: g.loss && logScale ? { distr: 3 } : {} },
        axes: [{ label: "step", labelSize: 18, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6] }, { size: 64, values: (u, vals) => vals.map(fmt) }],
        series: [{ label: "step" }, ...series.map((s) => ({
          label: s.label, stroke: s.color, width: s.isEval ? 2 : 1.5, spanGaps: true,
          dash: s.dash, points: { show: s.isEval, size: 6 } }))],
        hooks: { setCursor: [(u) => legendUpdate(c, u.cursor.idx)] },
      };
      c.plot = new uPlot(opts, data, box);
      box.appendChild(legend);
      charts.set(g.id, c);
    } else {
      c.series.forEach((s, i) => { s.rows = series[i].rows; });
      c.raw = raw;
      c.plot.setData(data);
    }
    legendUpdate(c, c.plot.cursor.idx);
  }
}

// ------------------------------------------------------------------ controls
document.getElementById("smoothing").addEventListener("input", (e) => {
  smoothing = Number(e.target.value);
  document.getElementById("smoothing-value").textContent = smoothing.toFixed(2);
  schedule();
});
document.getElementById("logscale").addEventListener("change", (e) => { logScale = e.target.checked; schedule(); });

// ------------------------------------------------------------------ streams
function follow(info) {
  const run = { name: info.name, metrics: [], evals: [], status: null, connected: true, config: "", el: el("div", "run") };
  runs.push(run);
  document.getElementById("runs").appendChild(run.el);
  const es = new EventSource("/api/metrics?run=" + info.run);
  es.onopen = () => { run.connected = true; schedule(); };
  es.onmessage = (m) => {
    let r;
    try { r = JSON.parse(m.data); } catch { return; }
    addLine(run, r);
  };
  es.addEventListener("status", (m) => {
    try { run.status = JSON.parse(m.data); } catch { return; }
    schedule();
  });
  es.onerror = () => { run.connected = false; schedule(); };
  fetch("/api/summary?run=" + info.run).then((r) => r.json()).then((s) => {
    const c = s.config;
    if (c) {
      const parts = [["model", c.model], ["packing", c.packing], ["pack_max_length", c.pack_max_length],
        ["sampler", c.sampler], ["global batch", c.global_batch_size], ["lr", c.lr]].filter(([, v]) => v !== undefined);
      run.config = parts.map(([k, v]) => k + " " + v).join(" · ");
    }
    if (s.status && !run.status) run.status = s.status;
    schedule();
  });
}
fetch("/api/runs").then((r) => r.json()).then((list) => {
  document.title = "tessera: " + list.map((r) => r.name).join(", ");
  for (const info of list) follow(info);
  schedule();
});
</script>
</body>
</html>
`;
