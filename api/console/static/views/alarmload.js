// Alarm load of the caller's units over the last days: the report's summary and tables, with a bar chart
// of alarms per bed per day.
import { api } from "../api.js";
import { h, table } from "../dom.js";

function tableOf(rows, caption) {
  if (!Array.isArray(rows) || rows.length === 0) return h("p", {}, `${caption}: nothing in this window.`);
  const keys = Object.keys(rows[0]).filter((k) => typeof rows[0][k] !== "object" || rows[0][k] === null);
  return table(keys.map((k) => ({ label: k.replaceAll("_", " "), cell: (r) => r[k] ?? "—" })), rows, { caption });
}

function bars(rows) {
  const top = rows.slice(0, 12);
  const max = Math.max(1, ...top.map((r) => r.alerts ?? r.count ?? 0));
  return h("ul", { class: "bars", "aria-label": "Alarms per bed" }, top.map((r) => {
    const n = r.alerts ?? r.count ?? 0;
    const bar = h("span", { class: "bar-fill" });
    bar.style.setProperty("--w", `${(100 * n) / max}%`);  // CSSOM, not a style attribute: the CSP forbids those
    return h("li", {}, h("span", { class: "bar-label" }, r.bed || r.rule || "—"), bar, h("span", {}, String(n)));
  }));
}

export async function render(main) {
  const days = h("select", { id: "load-days" }, [1, 7, 30].map((d) => h("option", { value: d, selected: d === 7 },
    `${d} day${d > 1 ? "s" : ""}`)));
  const out = h("div", { id: "alarm-load" });
  async function load() {
    const end = new Date();
    const start = new Date(end.getTime() - Number(days.value) * 86_400_000);
    const report = await api("/api/v1/reports/alarm-load", { query: { start: start.toISOString(), end: end.toISOString() } });
    const parts = [];
    for (const [key, value] of Object.entries(report)) {
      if (Array.isArray(value)) {
        if (key === "top_beds" && value.length) parts.push(h("h2", {}, "Busiest beds"), bars(value));
        parts.push(tableOf(value, key.replaceAll("_", " ")));
      } else if (value && typeof value === "object") {
        parts.push(h("h2", {}, key.replaceAll("_", " ")), h("dl", { class: "facts" },
          Object.entries(value).filter(([, v]) => typeof v !== "object" || v === null)
            .map(([k, v]) => [h("dt", {}, k.replaceAll("_", " ")), h("dd", {}, String(v ?? "—"))])));
      }
    }
    out.replaceChildren(...parts);
  }
  days.addEventListener("change", load);
  main.append(h("h1", {}, "Alarm load"), h("label", { for: "load-days" }, "Window "), days, out);
  await load();
}
