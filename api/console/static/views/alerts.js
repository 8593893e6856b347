// The live alert list: priority by text, icon and colour; acknowledge and silence (with a reason) for nurses.
import { api } from "../api.js";
import { h, priorityBadge, time, toast } from "../dom.js";

const CLINICAL = ["nurse", "charge_nurse"];
const REASONS = ["Patient being repositioned", "Clinician at the bedside", "Procedure in progress",
  "Sensor being replaced"];

function silenceForm(alert, stream) {
  const reason = h("select", { id: `reason-${alert.id}`, class: "silence-reason" },
    REASONS.map((r) => h("option", {}, r)));
  const minutes = h("select", { id: `minutes-${alert.id}` }, [1, 2, 5, 10].map((m) => h("option", { value: m * 60 },
    `${m} min`)));
  return h("form", { class: "silence", onsubmit: async (event) => {
    event.preventDefault();
    try {
      stream.update(await api(`/api/v1/alerts/${encodeURIComponent(alert.id)}/silence`, { method: "POST",
        body: { reason: reason.value, timeout_s: Number(minutes.value) } }));
      toast(`Silenced ${alert.bed || alert.source}: ${reason.value}`);
    } catch (err) { toast(`Silence failed: ${err.message}`); }
  } },
  h("label", { for: `reason-${alert.id}` }, "Reason"), reason,
  h("label", { for: `minutes-${alert.id}` }, "For"), minutes,
  h("button", { type: "submit", class: "silence-button" }, "Silence"));
}

function alertItem(alert, ctx) {
  const clinical = CLINICAL.includes(ctx.me.role);
  const acked = alert.state === "acknowledged";
  const silenced = alert.silenced_until && alert.silenced_until > Date.now();
  return h("li", { class: `alert alert-${alert.priority}${acked ? " acked" : ""}`,
    dataset: { alertId: alert.id, bed: alert.bed || "", type: alert.type, state: alert.state } },
  h("div", { class: "alert-head" }, priorityBadge(alert.priority),
    h("strong", {}, alert.bed ? h("a", { href: `#/bed/${encodeURIComponent(alert.bed)}` }, alert.bed) : alert.source),
    h("span", { class: "alert-type" }, alert.type), h("span", { class: "alert-state" }, acked
      ? `✓ Acknowledged by ${alert.acknowledged_by} ${time(alert.acknowledged_at)}` : "Active")),
  h("p", {}, alert.message, ` — since ${time(alert.onset)}`),
  silenced ? h("p", { class: "silenced" }, `🔕 Silenced until ${time(alert.silenced_until)}: ${alert.silence_reason}`)
    : null,
  clinical && !acked ? h("div", { class: "alert-actions" },
    h("button", { type: "button", class: "ack", onclick: async () => {
      try {
        const done = await api(`/api/v1/alerts/${encodeURIComponent(alert.id)}/acknowledge`, { method: "POST" });
        ctx.stream.update(done.alert);
        toast(`Acknowledged ${alert.bed || alert.source} ${alert.type}`);
      } catch (err) { toast(`Acknowledge failed: ${err.message}`); }
    } }, "Acknowledge"), silenceForm(alert, ctx.stream)) : null);
}

export function alertList(ctx, { bed } = {}) {
  const list = h("ul", { class: "alerts", id: "alert-list", "aria-live": "polite" });
  const off = ctx.stream.on((stream) => {
    const shown = stream.list().filter((a) => !bed || a.bed === bed);
    list.replaceChildren(...(shown.length ? shown.map((a) => alertItem(a, ctx))
      : [h("li", { class: "empty" }, stream.state === "live" ? "No open alerts." : "Connecting…")]));
  });
  return { el: list, off };
}

export async function render(main, ctx) {
  const { el, off } = alertList(ctx);
  main.append(h("h1", {}, "Alerts"), el);
  return off;
}
