// Facilities: find an asset (search, type, status), the nearest available of a type, and the walking route
// to it — the steps and, when the site map has plan coordinates, the route drawn on the floor plan.
import { api } from "../api.js";
import { h, table, time, toast } from "../dom.js";

const NS = "http://www.w3.org/2000/svg";
function s(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text) el.textContent = text;
  return el;
}

// One SVG per floor the route passes: rooms as labelled squares, the route as a line, start and end marked.
export function floorPlans(plan, route) {
  const nodes = new Map([...plan.rooms, ...plan.junctions].map((n) => [n.id, n]));
  const path = route.path.map((id) => nodes.get(id)).filter(Boolean);
  return route.floors.map((floorId) => {
    const rooms = plan.rooms.filter((r) => r.floor === floorId);
    const own = [...rooms, ...plan.junctions.filter((j) => j.floor === floorId)];
    const xs = own.map((n) => n.x), ys = own.map((n) => n.y);
    const [x0, x1, y0, y1] = [Math.min(...xs) - 4, Math.max(...xs) + 4, Math.min(...ys) - 4, Math.max(...ys) + 4];
    const w = 640, scale = w / Math.max(1, x1 - x0), ht = Math.max(120, (y1 - y0) * scale);
    const X = (x) => (x - x0) * scale, Y = (y) => ht - (y - y0) * scale;  // north up
    const floor = plan.floors.find((f) => f.id === floorId);
    const svg = s("svg", { viewBox: `0 0 ${w} ${ht}`, class: "plan", role: "img",
      "aria-label": `Floor plan of ${floor ? floor.name : floorId} with the route` });
    for (const r of rooms) {
      svg.append(s("rect", { x: X(r.x) - 5, y: Y(r.y) - 5, width: 10, height: 10, class: `room room-${r.kind}` }));
      svg.append(s("text", { x: X(r.x), y: Y(r.y) - 8, "text-anchor": "middle", class: "plan-label" }, r.id));
    }
    const here = path.filter((n) => n.floor === floorId);
    if (here.length) {
      svg.append(s("polyline", { points: here.map((n) => `${X(n.x)},${Y(n.y)}`).join(" "), class: "route-line" }));
      const first = here[0], last = here[here.length - 1];
      svg.append(s("circle", { cx: X(first.x), cy: Y(first.y), r: 7, class: "route-start" }));
      svg.append(s("text", { x: X(first.x) + 9, y: Y(first.y) + 14, class: "plan-mark" }, "Start"));
      svg.append(s("circle", { cx: X(last.x), cy: Y(last.y), r: 7, class: "route-end" }));
      svg.append(s("text", { x: X(last.x) + 9, y: Y(last.y) + 14, class: "plan-mark" }, "Here"));
    }
    return h("figure", { class: "floor" }, h("figcaption", {}, floor ? floor.name : floorId), svg);
  });
}

export async function render(main) {
  let [assets, plan] = await Promise.all([api("/api/v1/facilities/assets"),
    api("/console/plan.json").catch(() => null)]);
  const rooms = plan ? plan.rooms.map((r) => r.id) : [...new Set(assets.map((a) => a.room).filter(Boolean))].sort();
  const search = h("input", { id: "asset-search", type: "search", placeholder: "id, tag or room" });
  const type = h("select", { id: "asset-type" });
  function fillTypes() {  // keeps the choice; types appear as tags are first read
    const chosen = type.value;
    type.replaceChildren(h("option", { value: "" }, "any type"),
      ...[...new Set(assets.map((a) => a.type))].sort().map((t) => h("option", { selected: t === chosen }, t)));
  }
  fillTypes();
  const status = h("select", { id: "asset-status" }, ["", "clean", "dirty", "in_use", "in_repair"]
    .map((v) => h("option", { value: v }, v || "any status")));
  const from = h("select", { id: "route-from" }, rooms.map((r) => h("option", {}, r)));
  const results = h("div", { id: "asset-results" });
  const routeOut = h("section", { id: "route", "aria-live": "polite" });

  async function showRoute(asset) {
    try {
      const route = await api("/api/v1/navigation/route", { query: { from: from.value, to: asset.id } });
      routeOut.replaceChildren(h("h2", {}, `Route from ${from.value} to ${asset.id}${asset.room ? ` (${asset.room})` : ""}`),
        h("p", { class: "route-summary" }, `${Math.round(route.length_m)} m, about ${Math.ceil(route.time_s / 60)} min` +
          (route.floors_crossed ? `, ${route.floors_crossed} floor(s) up or down` : "")),
        h("ol", { class: "steps" }, route.steps.map((st) => h("li", {}, st.instruction))),
        plan ? h("div", { class: "plans" }, floorPlans(plan, route)) : null);
      routeOut.querySelector("h2").focus?.();
    } catch (err) { toast(`No route: ${err.message}`); }
  }

  const assetColumns = [
    { label: "Asset", cell: (a) => a.id }, { label: "Type", cell: (a) => a.type },
    { label: "Status", cell: (a) => a.status.replace("_", " ") },
    { label: "Where", cell: (a) => (a.room ? `${a.room}${a.lost ? " (lost)" : ""}` : "not seen") },
    { label: "Seen", cell: (a) => time(a.last_seen) },
    { label: "Distance", cell: (a) => (a.distance_m != null ? `${Math.round(a.distance_m)} m` : "") },
    { label: "", cell: (a) => (a.room ? h("button", { type: "button", class: "show-route",
      onclick: () => showRoute(a) }, `Route to ${a.id}`) : "") }];

  function filter() {
    const q = search.value.trim().toLowerCase();
    const shown = assets.filter((a) => (!type.value || a.type === type.value) && (!status.value || a.status === status.value)
      && (!q || [a.id, a.tag, a.room || ""].some((x) => x.toLowerCase().includes(q))));
    results.replaceChildren(table(assetColumns, shown, { caption: `${shown.length} of ${assets.length} assets` }));
  }
  for (const el of [search, type, status]) el.addEventListener("input", filter);

  const nearest = h("form", { class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    if (!type.value) { toast("Choose a type to find the nearest available one"); type.focus(); return; }
    const found = await api("/api/v1/facilities/assets/nearest", { query: { type: type.value, from: from.value } });
    results.replaceChildren(table(assetColumns, found, { caption: `Nearest clean ${type.value} from ${from.value}` }));
  } }, h("button", { type: "submit", id: "find-nearest" }, "Nearest available of this type"));

  const to = h("select", { id: "route-to" }, rooms.map((r) => h("option", {}, r)));
  const goTo = h("form", { class: "inline", onsubmit: (event) => { event.preventDefault(); showRoute({ id: to.value }); } },
    h("label", { for: "route-to" }, "Or go to room"), to, h("button", { type: "submit", id: "route-room" }, "Show route"));
  main.append(h("h1", {}, "Asset finder"), h("form", { class: "inline", role: "search", onsubmit: (e) => e.preventDefault() },
    h("label", { for: "asset-search" }, "Search"), search, h("label", { for: "asset-type" }, "Type"), type,
    h("label", { for: "asset-status" }, "Status"), status, h("label", { for: "route-from" }, "I am in"), from),
  nearest, goTo, results, routeOut);
  filter();
  let showingNearest = false;
  nearest.addEventListener("submit", () => { showingNearest = true; });
  for (const el of [search, type, status]) el.addEventListener("input", () => { showingNearest = false; });
  // Assets move: refresh the list every few seconds (not while the nearest-available answer is shown).
  const timer = setInterval(async () => {
    try {
      assets = await api("/api/v1/facilities/assets");
      fillTypes();
      if (!showingNearest && !results.contains(document.activeElement)) filter();
    } catch { /* the next round tries again */ }
  }, 5000);
  return () => clearInterval(timer);
}
