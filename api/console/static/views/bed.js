// A bed: latest vitals, trend charts of the last hours (downsampled) with the alarm limits, the limits in
// force and their changes, and the bed's open alerts.
import { api } from "../api.js";
import { h, PRIORITY, priorityBadge, table, toast, vitalText } from "../dom.js";
import { trends } from "../chart.js";
import { alertList } from "./alerts.js";

const TRENDS = [["hr", "Heart rate"], ["spo2", "SpO₂"], ["rr", "Respiration rate"], ["nibp_sys", "NIBP systolic"]];

export async function render(main, ctx, [bed]) {
  const current = h("div", { id: "bed-vitals" });
  const trend = trends({ metrics: () => TRENDS, path: (metric) => `/api/v1/beds/${encodeURIComponent(bed)}/vitals/${metric}`,
    limits: (metric) => Object.entries(settings.rules).filter(([, r]) => r.metric === metric && r.limit !== undefined)
      .map(([name, r]) => ({ label: name, value: r.limit })) });

  async function drawCurrent() {
    const vitals = await api(`/api/v1/beds/${encodeURIComponent(bed)}/vitals`);
    current.replaceChildren(table([{ label: "Parameter", cell: (v) => v.label }, { label: "Value", cell: vitalText },
      { label: "Device", cell: (v) => v.device }, { label: "Time", cell: (v) => new Date(v.ts).toLocaleTimeString() }],
    vitals, { caption: "Latest values" }));
  }

  let settings = await api(`/api/v1/beds/${encodeURIComponent(bed)}/alarm-settings`);
  const limits = h("div", { id: "limits-in-force" });
  const changes = h("div", { id: "limit-changes" });

  async function reload() {
    settings = await api(`/api/v1/beds/${encodeURIComponent(bed)}/alarm-settings`);
    await Promise.all([drawLimits(), trend.draw()]);
  }

  async function drawLimits() {
    const where = (name) => {
      const o = settings.overrides.filter((x) => x.rule === name);
      return o.some((x) => x.bed) ? "this bed" : o.length ? "unit" : "rule set";
    };
    const rules = Object.entries(settings.rules).map(([name, r]) => ({ name, ...r }));
    const history = await api(`/api/v1/beds/${encodeURIComponent(bed)}/alarm-settings/changes`);
    limits.replaceChildren(table([{ label: "Rule", cell: (r) => r.name }, { label: "Parameter", cell: (r) => r.metric || "—" },
      { label: "Alarm when", cell: (r) => (r.limit !== undefined ? `${r.direction} ${r.limit}` : "—") },
      { label: "Priority", cell: (r) => (r.priority ? priorityBadge(r.priority) : "—") },
      { label: "Delay", cell: (r) => (r.delay_s !== undefined ? `${r.delay_s} s` : "—") },
      { label: "Set by", cell: (r) => where(r.name) }], rules,
    { caption: `In force at ${bed}`, rowAttrs: (r) => ({ dataset: { rule: r.name } }) }),
    table([{ label: "Scope", cell: (o) => (o.bed ? `bed ${o.bed}` : "unit") }, { label: "Rule", cell: (o) => o.rule },
      { label: "Settings", cell: (o) => settingsText(o.settings) },
      { label: "By", cell: (o) => `${o.updated_by} ${new Date(o.updated).toLocaleString()}` },
      { label: "", cell: (o) => (o.bed ? h("button", { type: "button", class: "reset-limit", onclick: () =>
        change(o.rule, null) }, `Reset ${o.rule} to the unit's setting`) : "") }], settings.overrides,
    { caption: "Changes in force (unit and bed overrides)" }));
    changes.replaceChildren(table([{ label: "When", cell: (c) => new Date(c.at).toLocaleString() },
      { label: "By", cell: (c) => `${c.by} (${c.role.replace("_", " ")})` },
      { label: "What", cell: (c) => (c.action === "alarm.ruleset.change" ? "unit rule set"
        : `${c.rule} at ${c.bed ? `bed ${c.bed}` : "the whole unit"}`) },
      { label: "From", cell: (c) => settingsText(c.old) }, { label: "To", cell: (c) => settingsText(c.new) }],
    history, { caption: `Last ${history.length} changes of the limits at ${bed} (audit trail)` }));
  }

  async function change(rule, values) {
    try {
      const path = `/api/v1/beds/${encodeURIComponent(bed)}/alarm-settings/rules/${encodeURIComponent(rule)}`;
      await api(path, values ? { method: "PUT", body: { settings: values } } : { method: "DELETE" });
      toast(values ? `Saved ${rule} at ${bed}: ${settingsText(values)}` : `${rule} at ${bed} follows the unit again`);
      await reload();
    } catch (err) { toast(`Not saved: ${err.message}`); }
  }

  const { el, off } = alertList(ctx, { bed });
  main.append(h("h1", {}, `Bed ${bed}`), h("p", {}, h("a", { href: "#/unit" }, "← Unit")),
    h("section", { "aria-label": "Open alerts of this bed" }, h("h2", {}, "Open alerts"), el),
    h("section", {}, h("h2", {}, "Trends"), trend.el),
    h("section", {}, h("h2", {}, "Now"), current),
    h("section", { id: "alarm-limits" }, h("h2", {}, `Alarm limits (rule set ${settings.ruleset})`), limits,
      limitForm(() => settings, change), h("h3", {}, "Change history"), changes));
  await Promise.all([trend.draw(), drawCurrent(), drawLimits()]);
  const timer = setInterval(() => drawCurrent().catch(() => {}), 5000);
  return () => { clearInterval(timer); off(); };
}

function settingsText(values) {
  if (!values) return "—";
  return Object.entries(values).map(([k, v]) => `${k.replace("_s", " (s)").replaceAll("_", " ")} ${v}`).join(", ");
}

// Change one rule at this bed: limit, priority, delay; only what differs from the setting in force is sent.
function limitForm(current, change) {
  const rules = Object.keys(current().rules);
  const rule = h("select", { id: "limit-rule" }, rules.map((r) => h("option", {}, r)));
  const limit = h("input", { id: "limit-value", type: "number", step: "any" });
  const priority = h("select", { id: "limit-priority" }, ["high", "medium", "low"].map((p) =>
    h("option", { value: p }, `${PRIORITY[p].icon} ${PRIORITY[p].text}`)));
  const delay = h("input", { id: "limit-delay", type: "number", min: 0, step: 1 });
  function fill() {
    const r = current().rules[rule.value];
    limit.value = r.limit ?? "";
    limit.disabled = r.limit === undefined;
    priority.value = r.priority || "high";
    delay.value = r.delay_s ?? "";
  }
  rule.addEventListener("change", fill);
  fill();
  return h("form", { class: "inline", id: "limit-form", "aria-label": "Change a limit at this bed", onsubmit: (event) => {
    event.preventDefault();
    const r = current().rules[rule.value];
    const values = {};
    if (!limit.disabled && limit.value !== "" && Number(limit.value) !== r.limit) values.limit = Number(limit.value);
    if (priority.value !== r.priority) values.priority = priority.value;
    if (delay.value !== "" && Number(delay.value) !== r.delay_s) values.delay_s = Number(delay.value);
    if (Object.keys(values).length === 0) { toast("Nothing changed"); return; }
    change(rule.value, values);
  } }, h("label", { for: "limit-rule" }, "Rule"), rule, h("label", { for: "limit-value" }, "Limit"), limit,
  h("label", { for: "limit-priority" }, "Priority"), priority, h("label", { for: "limit-delay" }, "Delay (s)"), delay,
  h("button", { type: "submit", id: "limit-save" }, "Save for this bed"));
}
