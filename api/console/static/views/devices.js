// Biomedical engineering: the device fleet with filters — link state, kind, gateway, firmware version, search,
// and the upkeep flags (offline, battery low, maintenance due, firmware behind or unknown, recall) from the
// fleet routes (health, maintenance due, firmware drift, recalls).
import { api } from "../api.js";
import { h, table } from "../dom.js";

export const BATTERY_LOW_PCT = 20;  // below this a battery is low (the infusion pumps' own low-battery alarm)
export const DUE_DAYS = 30;  // maintenance or calibration due within this many days (or overdue)

const FLAGS = [
  ["offline", "Offline", (d) => d.state !== "connected"],
  ["battery", `Battery low (< ${BATTERY_LOW_PCT} %)`, (d) => d.battery_pct != null && d.battery_pct < BATTERY_LOW_PCT],
  ["maintenance", `Maintenance due (${DUE_DAYS} days)`, (d) => d.due.length > 0],
  ["recall", "Recall affected", (d) => d.recalls.length > 0],
];
const KINDS = { pm: "planned maintenance", calibration: "calibration" };
const FIRMWARE = { behind: "behind the newest", unknown: "version unknown" };

// Each device of GET /api/v1/devices with its battery, what is due, its firmware status and the recalls on it.
async function fleet() {
  const [devices, health, due, firmware, recalls] = await Promise.all([api("/api/v1/devices"),
    api("/api/v1/fleet/health"), api("/api/v1/fleet/maintenance/due", { query: { within_days: DUE_DAYS } }),
    api("/api/v1/fleet/firmware"), api("/api/v1/fleet/recalls")]);
  const battery = new Map(health.map((x) => [x.device, x.battery_pct]));
  const status = new Map(firmware.flatMap((m) => [...m.behind.map((d) => [d, "behind"]),
    ...m.unknown.map((d) => [d, "unknown"])]));
  return devices.map((d) => ({ ...d, battery_pct: battery.get(d.id) ?? null,
    due: due.filter((x) => x.device === d.id), firmware_status: status.get(d.id) || "current",
    recalls: recalls.filter((r) => r.affected.some((a) => a.device === d.id)).map((r) => r.id) }));
}

const when = (ms) => new Date(ms).toLocaleDateString();

export async function render(main) {
  const devices = await fleet();
  const pick = (id, label, values) => h("select", { id }, h("option", { value: "" }, `any ${label}`),
    [...new Set(values)].filter(Boolean).sort().map((v) => h("option", {}, v)));
  const search = h("input", { id: "device-search", type: "search", placeholder: "id, model, serial, bed" });
  const state = pick("device-state", "state", devices.map((d) => d.state));
  const kind = pick("device-kind", "kind", devices.map((d) => d.kind));
  const gateway = pick("device-gateway", "gateway", devices.map((d) => d.gateway));
  const firmware = pick("device-firmware", "firmware", devices.map((d) => d.firmware));
  const fwStatus = h("select", { id: "device-fw-status" }, h("option", { value: "" }, "any firmware status"),
    h("option", { value: "behind" }, "behind the newest"), h("option", { value: "unknown" }, "version unknown"),
    h("option", { value: "behind,unknown" }, "behind or unknown"));
  const flags = FLAGS.map(([id, label, test]) => ({ test, box: h("input", { type: "checkbox", id: `flag-${id}` }), label, id }));
  const out = h("div", { id: "device-table" });
  const columns = [
    { label: "Device", cell: (d) => h("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.id) },
    { label: "Kind", cell: (d) => d.kind }, { label: "Model", cell: (d) => `${d.manufacturer} ${d.model}`.trim() },
    { label: "Serial", cell: (d) => d.serial_number || "—" },
    { label: "Firmware", cell: (d) => [d.firmware || "—", d.firmware_status !== "current"
      ? h("span", { class: "flag" }, ` ⚠ ${FIRMWARE[d.firmware_status]}`) : null] },
    { label: "Bed", cell: (d) => d.bed || "—" }, { label: "Gateway", cell: (d) => d.gateway },
    { label: "Link", cell: (d) => h("span", { class: `link link-${d.state}` },
      d.state === "connected" ? "✓ connected" : `✗ ${d.state || "unknown"}`) },
    { label: "Battery", cell: (d) => (d.battery_pct == null ? "—" : d.battery_pct < BATTERY_LOW_PCT
      ? h("span", { class: "flag" }, `⚠ ${Math.round(d.battery_pct)} % low`) : `${Math.round(d.battery_pct)} %`) },
    { label: "Maintenance", cell: (d) => (d.due.length ? d.due.map((x) => h("span", { class: "flag" },
      `${x.overdue ? "⚠" : "◷"} ${KINDS[x.kind] || x.kind} ${x.overdue ? "overdue since" : "due"} ${when(x.due_at)} `)) : "—") },
    { label: "Recall", cell: (d) => (d.recalls.length ? h("span", { class: "flag" }, `⚠ ${d.recalls.join(", ")}`) : "—") },
    { label: "Frames ok / bad", cell: (d) => `${d.frames_ok ?? 0} / ${d.frames_bad ?? 0}` }];
  function filter() {
    const q = search.value.trim().toLowerCase();
    const wanted = fwStatus.value ? fwStatus.value.split(",") : null;
    const shown = devices.filter((d) => (!state.value || d.state === state.value) && (!kind.value || d.kind === kind.value)
      && (!gateway.value || d.gateway === gateway.value) && (!firmware.value || d.firmware === firmware.value)
      && (!wanted || wanted.includes(d.firmware_status)) && flags.every((f) => !f.box.checked || f.test(d))
      && (!q || [d.id, d.model, d.serial_number, d.bed || ""].some((x) => (x || "").toLowerCase().includes(q))));
    const active = flags.filter((f) => f.box.checked).map((f) => f.label.toLowerCase());
    out.replaceChildren(table(columns, shown, { caption: `${shown.length} of ${devices.length} devices`
      + (active.length ? ` (${active.join(", ")})` : ""), rowAttrs: (d) => ({ dataset: { device: d.id } }) }));
  }
  search.addEventListener("input", filter);
  for (const el of [state, kind, gateway, firmware, fwStatus, ...flags.map((f) => f.box)]) {
    el.addEventListener("change", filter);
  }
  main.append(h("h1", {}, "Devices"), h("form", { class: "inline", role: "search", onsubmit: (e) => e.preventDefault() },
    h("label", { for: "device-search" }, "Search"), search, h("label", { for: "device-state" }, "Link"), state,
    h("label", { for: "device-kind" }, "Kind"), kind, h("label", { for: "device-gateway" }, "Gateway"), gateway,
    h("label", { for: "device-firmware" }, "Firmware"), firmware,
    h("label", { for: "device-fw-status" }, "Firmware status"), fwStatus,
    h("fieldset", { class: "flags" }, h("legend", {}, "Show only"),
      flags.map((f) => h("label", { for: `flag-${f.id}` }, f.box, ` ${f.label}`)))), out);
  filter();
}
