// A tiny element builder: h("button", {type: "button", onclick}, "text") — no innerHTML with data.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

export const PRIORITY = {
  high: { icon: "▲", marks: "***", text: "High" },
  medium: { icon: "◆", marks: "**", text: "Medium" },
  low: { icon: "●", marks: "*", text: "Low" },
};

// Priority by text, icon and colour (IEC 60601-1-8 marks): colour is never the only signal.
export function priorityBadge(priority) {
  const p = PRIORITY[priority] || { icon: "○", marks: "", text: priority || "none" };
  return h("span", { class: `prio prio-${priority}`, dataset: { priority } },
    h("span", { "aria-hidden": "true" }, `${p.icon} ${p.marks} `), `${p.text} priority`);
}

export function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "—";
}

export function table(columns, rows, { caption, rowAttrs } = {}) {
  return h("div", { class: "table-wrap" }, h("table", {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.label)))),
    h("tbody", {}, rows.length === 0
      ? h("tr", {}, h("td", { colspan: columns.length }, "Nothing to show."))
      : rows.map((r) => h("tr", rowAttrs ? rowAttrs(r) : {}, columns.map((c) => h("td", {}, c.cell(r))))))));
}

export function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.textContent = ""; }, 6000);
}

export function vitalText(v) {
  if (!v) return "—";
  const value = Number.isInteger(v.value) ? v.value : Number(v.value).toFixed(1);
  return `${value} ${v.unit || ""}`.trim();
}
