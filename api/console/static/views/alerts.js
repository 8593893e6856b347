// The live alert list: priority by text, icon and colour; acknowledge and silence (with a reason) for nurses.
import { api } from "../api.js";
import { h, priorityBadge, time, toast } from "../dom.js";

const CLINICAL = ["nurse", "charge_nurse"];
const REASONS = ["Patient being repositioned", "Clinician at the bedside", "Procedure in progress",
  "Sensor being replaced"];

function silenceForm(alert, stream) {
  const reason = h("select", { id: `reason-${alert.id}`, class: "silence-reason" },
    REASONS.map((r) => h("option", {}, r)));
  const minutes = h("select", { id: `minutes-${alert.id}`, class: "silence-minutes" }, [1, 2, 5, 10].map((m) => h("option", { value: m * 60 },
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

const TARGETS = { primary: "primary nurse", buddy: "buddy nurse", charge: "charge nurse", team: "unit team" };
const holder = (target, staff) => `${TARGETS[target] || target} ${(staff || []).join(", ")}`.trim();

export function countdown(nextAt, now = Date.now()) {
  const left = Math.ceil((nextAt - now) / 1000);
  if (left <= 0) return "now…";
  return `in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")} (${time(nextAt)})`;
}

// Where an open alert is in its escalation: who has it, and when it goes further and to whom (ticking).
function escalationLine(alert, e) {
  if (!e || alert.state !== "active") return null;
  const parts = [e.target ? `With ${holder(e.target, e.staff)}` : "Routed", " · "];
  if (alert.silenced_until && alert.silenced_until > Date.now()) {
    parts.push(`escalation paused until ${time(alert.silenced_until)} (silenced)`);
  } else if (e.state === "running" && e.next_at) {
    parts.push(e.next ? `escalates to ${holder(e.next.target, e.next.staff)} ` : "nobody further is assigned; this step's time ends ",
      h("span", { class: "countdown", "aria-live": "off", dataset: { nextAt: e.next_at } }, countdown(e.next_at)));
  } else {
    parts.push(e.state === "accepted" ? "accepted: escalation stopped" : "last step: no further escalation");
  }
  return h("p", { class: "escalation", dataset: { step: e.step, state: e.state, target: e.target || "",
    next: e.next ? e.next.target : "" } }, "◷ ", ...parts);
}

function alertItem(alert, ctx, escalation) {
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
  escalationLine(alert, escalation),
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

// ``bed`` or ``only`` (a test of the alert) narrow the list; ``id`` names it when a page shows more than one.
// Items are kept while their alert and escalation are unchanged and only moved when the order changes, so
// a keyboard user's focus survives the live updates (a rebuilt item gets the focus back on the same control).
export function alertList(ctx, { bed, only, id = "alert-list" } = {}) {
  const list = h("ul", { class: "alerts", id, "aria-live": "polite" });
  const items = new Map();  // alert id -> { key, el }
  const off = ctx.stream.on((stream) => {
    const shown = stream.list().filter((a) => (!bed || a.bed === bed) && (!only || only(a)));
    const active = list.contains(document.activeElement) ? document.activeElement : null;
    const focused = active && { id: active.closest("li")?.dataset.alertId, cls: active.classList[0] };
    for (const id of [...items.keys()]) if (!shown.some((a) => a.id === id)) items.delete(id);
    const els = shown.length ? shown.map((a) => {
      const e = stream.escalations.get(a.id);
      const key = JSON.stringify([a.updated, a.state, a.silenced_until, e && [e.step, e.state, e.next_at, e.next]]);
      const known = items.get(a.id);
      if (known && known.key === key) return known.el;
      const el = alertItem(a, ctx, e);
      items.set(a.id, { key, el });
      return el;
    }) : [h("li", { class: "empty" }, stream.state === "live" ? "No open alerts." : "Connecting…")];
    els.forEach((el, i) => { if (list.children[i] !== el) list.insertBefore(el, list.children[i] || null); });
    while (list.children.length > els.length) list.lastChild.remove();
    if (focused && focused.id && !list.contains(document.activeElement)) {
      const again = items.get(focused.id)?.el.querySelector(focused.cls ? `.${focused.cls}` : "button");
      if (again) again.focus();
    }
  });
  const ticker = setInterval(() => {
    for (const el of list.querySelectorAll(".countdown")) el.textContent = countdown(Number(el.dataset.nextAt));
  }, 1000);
  return { el: list, off: () => { off(); clearInterval(ticker); } };
}

export async function render(main, ctx) {
  const { el, off } = alertList(ctx);
  main.append(h("h1", {}, "Alerts"), el);
  return off;
}
