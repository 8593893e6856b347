// Trend charts in SVG: the mean line with its min-max band per bucket and the alarm limits as dashed lines, and
// the window picker with one chart per metric that the bed page and the device page share.
import { api } from "./api.js";
import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

export function trendChart(history, { title, limits = [], width = 640, height = 160 } = {}) {
  const pts = history.points.filter((p) => (p.mean ?? p.value) !== null && (p.mean ?? p.value) !== undefined);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": `${title}: ${pts.length} points` });
  const pad = { l: 44, r: 8, t: 8, b: 22 };
  if (pts.length === 0) {
    const t = s("text", { x: width / 2, y: height / 2, "text-anchor": "middle" });
    t.textContent = "No readings in this window";
    svg.append(t);
    return svg;
  }
  const t0 = Date.parse(history.start), t1 = Date.parse(history.end);
  const values = pts.flatMap((p) => [p.min ?? p.value, p.max ?? p.value]).concat(limits.map((l) => l.value));
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1) { lo -= 1; hi += 1; }
  const x = (ts) => pad.l + ((ts - t0) / (t1 - t0)) * (width - pad.l - pad.r);
  const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (height - pad.t - pad.b);
  for (const v of [lo, (lo + hi) / 2, hi]) {
    svg.append(s("line", { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v), class: "grid" }));
    const label = s("text", { x: pad.l - 4, y: y(v) + 4, "text-anchor": "end", class: "axis" });
    label.textContent = Math.round(v * 10) / 10;
    svg.append(label);
  }
  for (const ts of [t0, (t0 + t1) / 2, t1]) {
    const label = s("text", { x: x(ts), y: height - 6, "text-anchor": "middle", class: "axis" });
    label.textContent = new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    svg.append(label);
  }
  if (pts[0].min !== undefined && pts[0].min !== null) {
    const top = pts.map((p) => `${x(p.ts)},${y(p.max)}`);
    const bottom = pts.map((p) => `${x(p.ts)},${y(p.min)}`).reverse();
    svg.append(s("polygon", { points: top.concat(bottom).join(" "), class: "band" }));
  }
  svg.append(s("polyline", { points: pts.map((p) => `${x(p.ts)},${y(p.mean ?? p.value)}`).join(" "), class: "line" }));
  for (const l of limits) {
    svg.append(s("line", { x1: pad.l, x2: width - pad.r, y1: y(l.value), y2: y(l.value), class: "limit" }));
    const label = s("text", { x: width - pad.r - 2, y: y(l.value) - 3, "text-anchor": "end", class: "axis" });
    label.textContent = `${l.label} ${l.value}`;
    svg.append(label);
  }
  return svg;
}

const WINDOWS = [[1, "1 h"], [4, "4 h"], [12, "12 h"]];
const BUCKETS = 120;  // points per chart whatever the window: the store downsamples (mean, min, max per bucket)

// A window picker and a chart per metric: ``metrics()`` gives [metric, label] pairs, ``path(metric)`` the history
// route, ``limits(metric)`` the lines to draw. ``draw()`` (re)draws with the current window.
export function trends({ metrics, path, limits = () => [] }) {
  const charts = h("div", { class: "charts" });
  let hours = 1;
  async function draw() {
    const end = Date.now();
    const step = `${Math.max(5, Math.round((hours * 3600) / BUCKETS))}s`;
    const drawn = await Promise.all(metrics().map(async ([metric, label]) => {
      const history = await api(path(metric), { query: { start: end - hours * 3_600_000, end, step } });
      return h("figure", { class: "trend", dataset: { metric } },
        h("figcaption", {}, `${label} (${history.unit || ""}) — last ${hours} h, mean and min–max per ${step}`),
        trendChart(history, { title: label, limits: limits(metric) }));
    }));
    charts.replaceChildren(...(drawn.length ? drawn : [h("p", {}, "No telemetry to chart.")]));
  }
  const picker = h("div", { class: "window", role: "group", "aria-label": "Time window" }, WINDOWS.map(([n, label]) =>
    h("button", { type: "button", "aria-pressed": String(n === hours), onclick: async (event) => {
      hours = n;
      for (const b of picker.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === event.target));
      await draw();
    } }, label)));
  return { el: h("div", { class: "trends" }, picker, charts), draw };
}
