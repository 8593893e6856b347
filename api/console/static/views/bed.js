// A bed: latest vitals, trend charts of the last hours (downsampled) with the alarm limits, the limits in
// force and their changes, and the bed's open alerts.
import { api } from "../api.js";
import { h, table, vitalText } from "../dom.js";
import { trendChart } from "../chart.js";
import { alertList } from "./alerts.js";

const TRENDS = [["hr", "Heart rate"], ["spo2", "SpO₂"], ["rr", "Respiration rate"], ["nibp_sys", "NIBP systolic"]];
const WINDOWS = [[1, "1 h"], [4, "4 h"], [12, "12 h"]];

export async function render(main, ctx, [bed]) {
  const charts = h("div", { class: "charts" });
  const current = h("div", { id: "bed-vitals" });
  let hours = 1;

  async function drawCharts(settings) {
    const end = Date.now();
    const step = `${Math.max(5, Math.round((hours * 3600) / 120))}s`;
    const drawn = await Promise.all(TRENDS.map(async ([metric, label]) => {
      const history = await api(`/api/v1/beds/${encodeURIComponent(bed)}/vitals/${metric}`,
        { query: { start: end - hours * 3_600_000, end, step } });
      const limits = Object.entries(settings.rules).filter(([, r]) => r.metric === metric && r.limit !== undefined)
        .map(([name, r]) => ({ label: name, value: r.limit }));
      return h("figure", { class: "trend", dataset: { metric } },
        h("figcaption", {}, `${label} (${history.unit || ""}) — last ${hours} h, mean and min–max per ${step}`),
        trendChart(history, { title: label, limits }));
    }));
    charts.replaceChildren(...drawn);
  }

  async function drawCurrent() {
    const vitals = await api(`/api/v1/beds/${encodeURIComponent(bed)}/vitals`);
    current.replaceChildren(table([{ label: "Parameter", cell: (v) => v.label }, { label: "Value", cell: vitalText },
      { label: "Device", cell: (v) => v.device }, { label: "Time", cell: (v) => new Date(v.ts).toLocaleTimeString() }],
    vitals, { caption: "Latest values" }));
  }

  const settings = await api(`/api/v1/beds/${encodeURIComponent(bed)}/alarm-settings`);
  const picker = h("div", { class: "window", role: "group", "aria-label": "Time window" }, WINDOWS.map(([n, label]) =>
    h("button", { type: "button", "aria-pressed": String(n === hours), onclick: async (event) => {
      hours = n;
      for (const b of picker.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === event.target));
      await drawCharts(settings);
    } }, label)));
  const rules = Object.entries(settings.rules).map(([name, r]) => ({ name, ...r }));
  const { el, off } = alertList(ctx, { bed });
  main.append(h("h1", {}, `Bed ${bed}`), h("p", {}, h("a", { href: "#/unit" }, "← Unit")),
    h("section", { "aria-label": "Open alerts of this bed" }, h("h2", {}, "Open alerts"), el),
    h("section", {}, h("h2", {}, "Trends"), picker, charts),
    h("section", {}, h("h2", {}, "Now"), current),
    h("section", { id: "alarm-limits" }, h("h2", {}, `Alarm limits (rule set ${settings.ruleset})`),
      table([{ label: "Rule", cell: (r) => r.name }, { label: "Parameter", cell: (r) => r.metric || "—" },
        { label: "Alarm when", cell: (r) => (r.limit !== undefined ? `${r.direction} ${r.limit}` : "—") },
        { label: "Priority", cell: (r) => r.priority || "—" },
        { label: "Delay", cell: (r) => (r.delay_s !== undefined ? `${r.delay_s} s` : "—") }], rules),
      h("h3", {}, "Changes in force (unit and bed overrides)"),
      table([{ label: "Scope", cell: (o) => (o.bed ? `bed ${o.bed}` : "unit") }, { label: "Rule", cell: (o) => o.rule },
        { label: "Settings", cell: (o) => JSON.stringify(o.settings) },
        { label: "By", cell: (o) => o.changed_by || o.by || "—" }], settings.overrides)));
  await Promise.all([drawCharts(settings), drawCurrent()]);
  const timer = setInterval(() => drawCurrent().catch(() => {}), 5000);
  return () => { clearInterval(timer); off(); };
}
