// The console's shell: sign-in, the sections each role may see, and hash routing (#/section/id).
import { api, token } from "./api.js";
import { h } from "./dom.js";
import { AlertStream } from "./live.js";
import * as signin from "./views/signin.js";
import * as unit from "./views/unit.js";
import * as bed from "./views/bed.js";
import * as alerts from "./views/alerts.js";
import * as assignments from "./views/assignments.js";
import * as alarmload from "./views/alarmload.js";
import * as assets from "./views/assets.js";
import * as waste from "./views/waste.js";
import * as devices from "./views/devices.js";
import * as device from "./views/device.js";
import * as health from "./views/health.js";

// Sections per role, as docs/security.md grants them: a section a role may not use is never rendered.
const SECTIONS = {
  unit: { label: "Unit", view: unit, roles: ["nurse", "charge_nurse"] },
  alerts: { label: "Alerts", view: alerts, roles: ["nurse", "charge_nurse", "facilities", "biomed"] },
  assignments: { label: "Assignments", view: assignments, roles: ["charge_nurse"] },
  "alarm-load": { label: "Alarm load", view: alarmload, roles: ["nurse", "charge_nurse", "auditor"] },
  assets: { label: "Assets", view: assets, roles: ["facilities"] },
  waste: { label: "Par & waste", view: waste, roles: ["facilities"] },
  devices: { label: "Devices", view: devices, roles: ["biomed"] },
  health: { label: "Health", view: health, roles: ["biomed", "admin"] },
};
const PAGES = { bed: { view: bed, roles: ["nurse", "charge_nurse"] },
  device: { view: device, roles: ["biomed"] } };

const ctx = { me: null, stream: null };
let cleanup = null;

function allowed(role) {
  return Object.entries(SECTIONS).filter(([, s]) => s.roles.includes(role));
}

function renderShell() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  const out = document.getElementById("sign-out");
  nav.replaceChildren();
  if (!ctx.me) { who.textContent = ""; out.hidden = true; return; }
  nav.append(h("ul", {}, allowed(ctx.me.role).map(([id, s]) =>
    h("li", {}, h("a", { href: `#/${id}`, id: `nav-${id}` }, s.label)))));
  who.textContent = `${ctx.me.name} (${ctx.me.role.replace("_", " ")})`;
  out.hidden = false;
}

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  const main = document.getElementById("main");
  main.replaceChildren();
  if (!token.get() || !ctx.me) {
    ctx.me = null;
    if (ctx.stream) { ctx.stream.close(); ctx.stream = null; }
    renderShell();
    cleanup = await signin.render(main, ctx, [], start);
    return;
  }
  const [name, ...params] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const entry = SECTIONS[name] || PAGES[name];
  const sections = allowed(ctx.me.role);
  if (!entry || !entry.roles.includes(ctx.me.role)) {
    if (sections.length) { location.hash = `#/${sections[0][0]}`; return; }
    main.append(h("h1", {}, "Nothing to show"), h("p", {}, "Your role has no console sections."));
    return;
  }
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (entry.roles.some((r) => SECTIONS.alerts.roles.includes(r)) && SECTIONS.alerts.roles.includes(ctx.me.role)
      && !ctx.stream) {
    ctx.stream = new AlertStream(ctx.me.role);
  }
  try {
    cleanup = (await entry.view.render(main, ctx, params)) || null;
  } catch (err) {
    main.append(h("p", { class: "error", role: "alert" }, `Could not load: ${err.message}`));
  }
  main.focus({ preventScroll: true });
}

async function start() {
  try {
    ctx.me = token.get() ? await api("/api/v1/auth/me") : null;
  } catch {
    ctx.me = null;
  }
  renderShell();
  await route();
}

window.addEventListener("hashchange", route);
window.addEventListener("wardlink:signed-out", () => { ctx.me = null; route(); });
document.getElementById("sign-out").addEventListener("click", () => {
  token.clear();
  ctx.me = null;
  location.hash = "";
  route();
});
start();
