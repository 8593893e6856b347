// One device: its registry record and its latest value per metric (refreshed every few seconds).
import { api } from "../api.js";
import { h, table, vitalText } from "../dom.js";

export async function render(main, ctx, [id]) {
  const all = await api("/api/v1/devices");
  const device = all.find((d) => d.id === id);
  if (!device) { main.append(h("h1", {}, "Device not found"), h("p", {}, h("a", { href: "#/devices" }, "← Devices"))); return; }
  const values = h("div", { id: "device-values" });
  async function load() {
    const latest = await api(`/api/v1/devices/${encodeURIComponent(id)}/vitals`);
    values.replaceChildren(table([{ label: "Metric", cell: (v) => v.label }, { label: "Value", cell: vitalText },
      { label: "MDC code", cell: (v) => v.code ?? "—" }, { label: "Time", cell: (v) => new Date(v.ts).toLocaleTimeString() }],
    latest, { caption: "Latest values" }));
  }
  main.append(h("h1", {}, `Device ${id}`), h("p", {}, h("a", { href: "#/devices" }, "← Devices")),
    h("dl", { class: "facts", id: "device-facts" }, [["Kind", device.kind], ["Manufacturer", device.manufacturer],
      ["Model", device.model], ["Serial", device.serial_number], ["Firmware", device.firmware || "—"],
      ["Bed", device.bed || "—"], ["Gateway", device.gateway], ["Link", device.state || "unknown"],
      ["Last seen", device.last_seen || "—"], ...Object.entries(device.identifiers || {})]
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])), values);
  await load();
  const timer = setInterval(() => load().catch(() => {}), 5000);
  return () => clearInterval(timer);
}
