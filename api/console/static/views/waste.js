// Facilities: par-level shortfalls, today's waste by department, and the handover register.
import { api } from "../api.js";
import { h, table } from "../dom.js";

function columnsOf(rows) {
  const keys = rows.length ? Object.keys(rows[0]).filter((k) => typeof rows[0][k] !== "object" || rows[0][k] === null) : [];
  return keys.map((k) => ({ label: k.replaceAll("_", " "), cell: (r) => (r[k] === null ? "—" : String(r[k])) }));
}

export async function render(main) {
  const [par, weights, register] = await Promise.all([api("/api/v1/facilities/par"),
    api("/api/v1/waste/reports/weights", { query: { period: "day" } }), api("/api/v1/waste/register")]);
  main.append(h("h1", {}, "Par levels and waste"),
    h("section", { id: "par" }, h("h2", {}, "Par levels below minimum"),
      table([{ label: "Unit", cell: (p) => p.unit }, { label: "Type", cell: (p) => p.type },
        { label: "Minimum", cell: (p) => p.minimum }, { label: "Available", cell: (p) => p.available },
        { label: "Missing", cell: (p) => h("strong", {}, `⚠ ${p.missing}`) }], par)),
    h("section", { id: "waste" }, h("h2", {}, `Waste sealed ${weights.start} – ${weights.end}: ${weights.total_kg} kg`),
      table(columnsOf(weights.rows), weights.rows, { caption: "Bags and kilograms by department and category" }),
      h("h2", {}, "Handover register (today)"),
      table(columnsOf(register), register, { caption: `${register.length} handovers` })));
}
