// Biomedical engineering: the device fleet with filters (link state, kind, gateway, firmware, search).
import { api } from "../api.js";
import { h, table } from "../dom.js";

export async function render(main) {
  const devices = await api("/api/v1/devices");
  const pick = (id, label, values) => h("select", { id }, h("option", { value: "" }, `any ${label}`),
    [...new Set(values)].filter(Boolean).sort().map((v) => h("option", {}, v)));
  const search = h("input", { id: "device-search", type: "search", placeholder: "id, model, serial, bed" });
  const state = pick("device-state", "state", devices.map((d) => d.state));
  const kind = pick("device-kind", "kind", devices.map((d) => d.kind));
  const gateway = pick("device-gateway", "gateway", devices.map((d) => d.gateway));
  const firmware = pick("device-firmware", "firmware", devices.map((d) => d.firmware));
  const out = h("div", { id: "device-table" });
  const columns = [
    { label: "Device", cell: (d) => h("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.id) },
    { label: "Kind", cell: (d) => d.kind }, { label: "Model", cell: (d) => `${d.manufacturer} ${d.model}`.trim() },
    { label: "Serial", cell: (d) => d.serial_number || "—" }, { label: "Firmware", cell: (d) => d.firmware || "—" },
    { label: "Bed", cell: (d) => d.bed || "—" }, { label: "Gateway", cell: (d) => d.gateway },
    { label: "Link", cell: (d) => h("span", { class: `link link-${d.state}` },
      d.state === "connected" ? "✓ connected" : `✗ ${d.state || "unknown"}`) },
    { label: "Frames ok / bad", cell: (d) => `${d.frames_ok ?? 0} / ${d.frames_bad ?? 0}` }];
  function filter() {
    const q = search.value.trim().toLowerCase();
    const shown = devices.filter((d) => (!state.value || d.state === state.value) && (!kind.value || d.kind === kind.value)
      && (!gateway.value || d.gateway === gateway.value) && (!firmware.value || d.firmware === firmware.value)
      && (!q || [d.id, d.model, d.serial_number, d.bed || ""].some((x) => (x || "").toLowerCase().includes(q))));
    out.replaceChildren(table(columns, shown, { caption: `${shown.length} of ${devices.length} devices` }));
  }
  for (const el of [search, state, kind, gateway, firmware]) el.addEventListener("input", filter);
  main.append(h("h1", {}, "Devices"), h("form", { class: "inline", role: "search", onsubmit: (e) => e.preventDefault() },
    h("label", { for: "device-search" }, "Search"), search, h("label", { for: "device-state" }, "Link"), state,
    h("label", { for: "device-kind" }, "Kind"), kind, h("label", { for: "device-gateway" }, "Gateway"), gateway,
    h("label", { for: "device-firmware" }, "Firmware"), firmware), out);
  filter();
}
