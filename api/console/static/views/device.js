// One device: its registry record, its latest value per metric (refreshed every few seconds) and the history
// of each metric it reports (downsampled, the same charts as the bed page).
import { api } from "../api.js";
import { h, table, vitalText } from "../dom.js";
import { trends } from "../chart.js";

export async function render(main, ctx, [id]) {
  const all = await api("/api/v1/devices");
  const device = all.find((d) => d.id === id);
  if (!device) { main.append(h("h1", {}, "Device not found"), h("p", {}, h("a", { href: "#/devices" }, "← Devices"))); return; }
  const path = `/api/v1/devices/${encodeURIComponent(id)}/vitals`;
  const values = h("div", { id: "device-values" });
  let latest = [];
  const history = trends({ metrics: () => latest.map((v) => [v.metric, v.label]),
    path: (metric) => `${path}/${encodeURIComponent(metric)}` });
  async function load() {
    latest = await api(path);
    values.replaceChildren(table([{ label: "Metric", cell: (v) => v.label }, { label: "Value", cell: vitalText },
      { label: "MDC code", cell: (v) => v.code ?? "—" }, { label: "Time", cell: (v) => new Date(v.ts).toLocaleTimeString() }],
    latest, { caption: "Latest values" }));
  }
  main.append(h("h1", {}, `Device ${id}`), h("p", {}, h("a", { href: "#/devices" }, "← Devices")),
    h("dl", { class: "facts", id: "device-facts" }, [["Kind", device.kind], ["Manufacturer", device.manufacturer],
      ["Model", device.model], ["Serial", device.serial_number], ["Firmware", device.firmware || "—"],
      ["Bed", device.bed || "—"], ["Gateway", device.gateway], ["Link", device.state || "unknown"],
      ["Last seen", device.last_seen || "—"], ...Object.entries(device.identifiers || {})]
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])), values,
    h("section", { id: "device-history" }, h("h2", {}, "Telemetry history"), history.el));
  await load();
  await history.draw();
  const timer = setInterval(() => load().catch(() => {}), 5000);
  return () => clearInterval(timer);
}
