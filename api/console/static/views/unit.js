// The nurse's unit at a glance: every bed's latest vitals (polled) with its alarm state, and the live alerts.
import { api } from "../api.js";
import { h, priorityBadge, vitalText } from "../dom.js";
import { alertList } from "./alerts.js";

export const SHOWN = [["MDC_ECG_HEART_RATE", "HR"], ["MDC_PULS_OXIM_SAT_O2", "SpO₂"], ["MDC_RESP_RATE", "RR"],
  ["MDC_PRESS_BLD_NONINV_SYS", "NIBP sys"], ["MDC_TEMP", "Temp"]];
const POLL_MS = 3000;

function card(bed) {
  const values = SHOWN.map(([metric, label]) => [metric, h("dd", { dataset: { metric } }, "—"), label]);
  const state = h("p", { class: "bed-state" }, "No open alarm");
  const el = h("li", { class: "bed", id: `bed-${bed.id}`, dataset: { bed: bed.id } },
    h("h3", {}, h("a", { href: `#/bed/${encodeURIComponent(bed.id)}` }, bed.id)),
    h("dl", {}, values.map(([, dd, label]) => [h("dt", {}, label), dd])), state,
    h("p", { class: "updated" }, ""));
  return { el, values, state };
}

export async function render(main, ctx) {
  const beds = await api("/api/v1/beds");
  const units = [...new Set(beds.map((b) => b.unit))];
  const cards = new Map(beds.map((b) => [b.id, card(b)]));
  main.append(h("h1", {}, `Unit ${units.join(", ")}`));
  for (const u of units) {
    main.append(h("section", { "aria-label": `Beds of ${u}` }, h("h2", {}, `Beds — ${u}`),
      h("ul", { class: "beds" }, beds.filter((b) => b.unit === u).map((b) => cards.get(b.id).el))));
  }
  const { el, off } = alertList(ctx);
  main.append(h("section", { "aria-label": "Open alerts" }, h("h2", {}, "Open alerts"), el));

  const offState = ctx.stream.on((stream) => {
    for (const [id, c] of cards) {
      const open = stream.list().filter((a) => a.bed === id);
      c.el.dataset.alarm = open.length ? open[0].priority : "none";
      c.state.replaceChildren(...(open.length ? [priorityBadge(open[0].priority), ` ${open[0].type}`,
        open[0].state === "acknowledged" ? " (acknowledged)" : ""] : ["No open alarm"]));
    }
  });
  let stopped = false;
  async function poll() {
    await Promise.all(beds.map(async (b) => {
      const c = cards.get(b.id);
      try {
        const latest = Object.fromEntries((await api(`/api/v1/beds/${encodeURIComponent(b.id)}/vitals`))
          .map((v) => [v.metric, v]));
        for (const [metric, dd] of c.values) {
          dd.textContent = vitalText(latest[metric]);
          if (latest[metric]) dd.dataset.ts = String(latest[metric].ts);
        }
        c.el.classList.remove("stale");
        c.el.querySelector(".updated").textContent = "";
      } catch {
        c.el.classList.add("stale");
        c.el.querySelector(".updated").textContent = "⚠ Not updated: the server does not answer";
      }
    }));
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }
  let timer = setTimeout(poll, 0);
  return () => { stopped = true; clearTimeout(timer); off(); offState(); };
}
