// Gateway and service health (GET /api/v1/health), refreshed every few seconds.
import { api } from "../api.js";
import { h, table } from "../dom.js";

const MARK = { ok: "✓", online: "✓", stale: "⚠", degraded: "⚠", offline: "✗", down: "✗" };
const badge = (state) => h("span", { class: `health health-${state}` }, `${MARK[state] || "?"} ${state}`);

export async function render(main) {
  const out = h("div", { id: "health" });
  async function load() {
    const hl = await api("/api/v1/health");
    out.replaceChildren(h("p", {}, "Overall: ", badge(hl.status), ` — ${hl.open_alerts} open alerts, ${hl.live_clients} live clients`),
      h("dl", { class: "facts" }, h("dt", {}, "Broker"), h("dd", {}, badge(hl.broker.state)),
        h("dt", {}, "Store"), h("dd", {}, badge(hl.store.state))),
      table([{ label: "Gateway", cell: ([id]) => id }, { label: "State", cell: ([, g]) => badge(g.state) },
        { label: "Last heard", cell: ([, g]) => g.detail.last_heard }, { label: "Outbox", cell: ([, g]) => g.detail.outbox_depth },
        { label: "Devices", cell: ([, g]) => Object.entries(g.detail.devices).map(([d, s]) => `${d}: ${s}`).join(", ") }],
      Object.entries(hl.gateways), { caption: "Gateways" }),
      table([{ label: "Service", cell: ([id]) => id }, { label: "State", cell: ([, c]) => badge(c.state) },
        { label: "Lag", cell: ([, c]) => (c.detail.lag_ms != null ? `${c.detail.lag_ms} ms` : "—") }],
      Object.entries(hl.services), { caption: "Services" }));
  }
  main.append(h("h1", {}, "Health"), out);
  await load();
  const timer = setInterval(() => load().catch(() => {}), 5000);
  return () => clearInterval(timer);
}
