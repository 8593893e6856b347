// Facilities: par-level shortfalls and the waste dashboard — the waste store now (its loggers' temperature against
// the limit, the bags it holds and their age against the storage limit, its open alerts; refreshed every 10 s and
// on demand), today's weight reconciliation per bag and custody point, weights by department, today's handovers,
// and the live waste alerts. Every flag is written (✓, ◷, ⚠ and words), never colour alone.
import { api } from "../api.js";
import { h, priorityBadge, table, time } from "../dom.js";
import { alertList } from "./alerts.js";

const REFRESH_MS = 10000;
const POINTS = ["ward", "collector", "storage", "disposer"];
const HANDOVERS_SHOWN = 50;

const kg = (grams) => `${(grams / 1000).toFixed(3)} kg`;
const pct = (value) => `${value > 0 ? "+" : ""}${value.toFixed(1)} %`;
const count = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
const when = (ms) => new Date(ms).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });

export function age(hours) {
  const minutes = Math.floor(hours * 60);
  if (minutes < 1) return "under 1 min";
  return minutes < 60 ? `${minutes} min` : `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

// A bag against the storage limit: ok, near (from near_hours) or over (max_hours).
function limitCell(bag, store) {
  const due = `due out by ${when(bag.due_at)}`;
  if (bag.limit === "over") return h("strong", { class: "error" }, `⚠ Over ${store.max_hours} h: ${due}`);
  if (bag.limit === "near") return h("span", { class: "flag" }, `◷ Near ${store.max_hours} h: ${due}`);
  return `✓ Within ${store.max_hours} h: ${due}`;
}

const check = (verdict, difference) => (verdict === "flagged"
  ? h("strong", { class: "error" }, `⚠ ${pct(difference)} flagged`) : `✓ ${pct(difference)}`);

function storeSection(store) {
  const loggers = table([
    { label: "Logger", cell: (l) => l.device },
    { label: "Temperature", cell: (l) => (l.temperature_c === null ? "— no reading" : `${l.temperature_c.toFixed(1)} °C`) },
    { label: "Limit", cell: () => `${store.limit_c} °C while waste is held` },
    { label: "State", cell: (l) => (l.temperature_c === null ? "—" : l.above_limit
      ? h("strong", { class: "error" }, `⚠ Above ${store.limit_c} °C`) : `✓ At or below ${store.limit_c} °C`) },
    { label: "Read at", cell: (l) => time(l.ts) }],
  store.loggers, { caption: "Store temperature (warmest probe of each logger)",
    rowAttrs: (l) => ({ dataset: { device: l.device, above: String(l.above_limit), ts: String(l.ts ?? "") } }) });
  const bags = table([
    { label: "Bag", cell: (b) => b.bag }, { label: "Category", cell: (b) => b.category },
    { label: "Department", cell: (b) => b.department || "—" }, { label: "Weight", cell: (b) => kg(b.weight_g) },
    { label: "Intake vs collected", cell: (b) => check(b.weight_check, b.difference_pct) },
    { label: "In storage since", cell: (b) => when(b.since) }, { label: "Age", cell: (b) => age(b.age_h) },
    { label: `Storage limit (${store.max_hours} h)`, cell: (b) => limitCell(b, store) }],
  store.bags, { caption: `${count(store.bags_held, "bag")} held; each must leave within ${store.max_hours} h `
      + `(◷ near from ${store.near_hours} h)`,
  rowAttrs: (b) => ({ dataset: { bag: b.bag, limit: b.limit } }) });
  const alerts = store.alerts.length
    ? h("ul", { class: "alerts", id: "store-alerts" }, store.alerts.map((a) => h("li", { class: `alert alert-${a.priority}`,
      dataset: { type: a.type, source: a.source } }, h("div", { class: "alert-head" }, priorityBadge(a.priority),
      h("strong", {}, a.source), h("span", { class: "alert-type" }, a.type)), h("p", {}, a.message, ` — since ${time(a.onset)}`))))
    : h("p", { id: "store-alerts" }, "✓ No open store alert.");
  return [loggers, bags, h("h3", {}, "Open store alerts"), alerts];
}

function reconciliationSection(report) {
  const point = (name) => ({ label: name[0].toUpperCase() + name.slice(1), cell: (r) => {
    const p = r.points.find((x) => x.point === name);
    if (!p) return "—";
    return p.difference_pct === null ? kg(p.weight_g) : h("span", {}, kg(p.weight_g), " ", check(p.weight_check, p.difference_pct));
  } });
  return table([
    { label: "Bag", cell: (r) => r.bag }, { label: "Department", cell: (r) => r.department || "—" },
    { label: "Category", cell: (r) => r.category }, ...POINTS.map(point),
    { label: "Result", cell: (r) => (r.flagged ? h("strong", { class: "error" }, `⚠ Beyond ±${report.tolerance_pct} %`)
      : `✓ Within ±${report.tolerance_pct} %`) }],
  report.rows, { caption: `${count(report.total, "bag")} sealed or handed over ${report.start}: ${report.flagged} flagged beyond `
      + `±${report.tolerance_pct} % (each point against the one before)`
      + (report.rows.length < report.total ? `; ${report.rows.length} shown, flagged first` : ""),
  rowAttrs: (r) => ({ dataset: { bag: r.bag, flagged: String(r.flagged), at: r.at } }) });
}

function registerTable(lines, day) {
  const newest = lines.slice(-HANDOVERS_SHOWN).reverse();
  return table([
    { label: "Time", cell: (r) => r.time.slice(11, 19) }, { label: "Bag", cell: (r) => r.bag },
    { label: "Department", cell: (r) => r.department || "—" }, { label: "Category", cell: (r) => r.category },
    { label: "From → to", cell: (r) => `${r.from} → ${r.to}` }, { label: "Weight", cell: (r) => `${r.weight_kg.toFixed(3)} kg` },
    { label: "Handed over by", cell: (r) => r.handed_over_by }, { label: "Received by", cell: (r) => r.received_by },
    { label: "Manifest", cell: (r) => r.manifest || "—" },
    { label: "Check", cell: (r) => (r.weight_check === "flagged" ? h("strong", { class: "error" }, "⚠ flagged")
      : r.weight_check === "ok" ? "✓ ok" : "—") }],
  newest, { caption: `${count(lines.length, "handover")} on ${day}`
      + (lines.length > newest.length ? `; the newest ${newest.length} shown` : ""),
  rowAttrs: (r) => ({ dataset: { bag: r.bag, to: r.to } }) });
}

export async function render(main, ctx) {
  const [par, weights, store, report] = await Promise.all([api("/api/v1/facilities/par"),
    api("/api/v1/waste/reports/weights", { query: { period: "day" } }), api("/api/v1/waste/storage"),
    api("/api/v1/waste/reconciliation")]);
  const day = report.start;  // the hospital's local day, as the API counts it
  const register = await api("/api/v1/waste/register", { query: { start: day, end: day } });
  const storeBody = h("div", { id: "store" }, storeSection(store));
  // Not a live region: a screen reader would read the time out every 10 s.
  const status = h("span", { class: "updated" }, `Updated ${time(store.now)}`);
  const refreshButton = h("button", { type: "button", id: "store-refresh" }, "Refresh now");
  const live = alertList(ctx, { id: "waste-alerts", only: (a) => a.type.startsWith("waste.") });
  main.append(h("h1", {}, "Par levels and waste"),
    h("section", { id: "par" }, h("h2", {}, "Par levels below minimum"),
      table([{ label: "Unit", cell: (p) => p.unit }, { label: "Type", cell: (p) => p.type },
        { label: "Minimum", cell: (p) => p.minimum }, { label: "Available", cell: (p) => p.available },
        { label: "Missing", cell: (p) => h("strong", {}, `⚠ ${p.missing}`) }], par)),
    h("section", { id: "waste-store" }, h("h2", {}, "Waste store now"),
      h("p", { class: "inline" }, status, refreshButton), storeBody),
    h("section", { id: "reconciliation" }, h("h2", {}, `Weight reconciliation (${day})`), reconciliationSection(report)),
    h("section", { id: "waste-alerts-section" }, h("h2", {}, "Open waste alerts (live)"), live.el),
    h("section", { id: "waste" }, h("h2", {}, `Waste sealed ${weights.start} – ${weights.end}: ${weights.total_kg} kg`),
      table([{ label: "Day", cell: (r) => r.period }, { label: "Department", cell: (r) => r.department || "—" },
        { label: "Category", cell: (r) => r.category }, { label: "Bags", cell: (r) => r.bags },
        { label: "Weight", cell: (r) => `${r.weight_kg} kg` }], weights.rows,
      { caption: "Bags and kilograms by day, department and category" })),
    h("section", { id: "handovers" }, h("h2", {}, `Today's handovers (${day})`), registerTable(register, day)));
  async function refresh() {
    try {
      const now = await api("/api/v1/waste/storage");
      storeBody.replaceChildren(...storeSection(now));
      status.textContent = `Updated ${time(now.now)}`;
    } catch (err) { status.textContent = `Could not refresh the store: ${err.message}`; }
  }
  refreshButton.addEventListener("click", refresh);
  const timer = setInterval(refresh, REFRESH_MS);
  return () => { clearInterval(timer); live.off(); };
}
