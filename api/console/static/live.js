// The live WebSockets: a ticket per connection, and reconnection with a fresh ticket (backoff up to 10 s) after
// the server goes away. The alerts stream sends a snapshot then transitions (each reconnection resynchronises
// from the snapshot) and, for nurses, each escalation step as it fires; a nurse's console also holds the
// personal stream (/api/v1/staff/stream), so the alert service knows the nurse can be reached here.
import { api } from "./api.js";

const CLINICAL = ["nurse", "charge_nurse"];

class Socket {
  constructor(path, onMessage, onState = () => {}) {
    Object.assign(this, { path, onMessage, onState, closed: false, delay: 500, ws: null });
    this.connect();
  }

  async connect() {
    if (this.closed) return;
    this.onState("connecting");
    let ticket;
    try {
      ticket = (await api("/api/v1/auth/ws-ticket", { method: "POST" })).ticket;
    } catch {
      return this.retry();
    }
    if (this.closed) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}${this.path}?ticket=${encodeURIComponent(ticket)}`);
    this.ws = ws;
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "snapshot") this.delay = 500;
      this.onMessage(message);
    };
    ws.onclose = () => { if (this.ws === ws) this.retry(); };
  }

  retry() {
    if (this.closed) return;
    this.onState("reconnecting");
    setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, 10000);
  }

  close() {
    this.closed = true;
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(); }
  }
}

export class AlertStream {
  constructor(role) {
    this.alerts = new Map();
    this.escalations = new Map();  // alert id -> where its escalation is (GET /api/v1/escalations)
    this.listeners = new Set();
    this.state = "connecting";
    this.snapshots = 0;
    this.steps = 0;  // escalation steps heard on the stream
    this.clinical = CLINICAL.includes(role);
    this.socket = new Socket("/api/v1/alerts/stream", (m) => this.message(m), (state) => {
      this.state = state;
      this.emit();
    });
    if (this.clinical) {
      this.personal = new Socket("/api/v1/staff/stream", () => {});
      // A deadline passed without a step on the stream (nobody further, or the step is on its way): ask again.
      this.timer = setInterval(() => {
        const now = Date.now();
        if ([...this.escalations.values()].some((e) => e.next_at && e.next_at < now - 1500 && e.asked < now - 3000)) {
          this.refreshEscalations();
        }
      }, 1000);
    }
  }

  on(fn) { this.listeners.add(fn); fn(this); return () => this.listeners.delete(fn); }

  emit() {
    const status = document.getElementById("live-status");
    if (status) {
      status.hidden = false;
      status.dataset.state = this.state;
      status.dataset.snapshots = String(this.snapshots);
      status.dataset.steps = String(this.steps);
      status.textContent = this.state === "live" ? "● Live" : "○ Reconnecting…";
    }
    for (const fn of this.listeners) fn(this);
  }

  message(message) {
    if (message.type === "snapshot") {
      this.alerts = new Map(message.alerts.map((a) => [a.id, a]));
      this.snapshots += 1;
      this.state = "live";
    } else if (message.type === "alert") {
      const a = message.alert;
      if (a.state === "resolved") this.alerts.delete(a.id); else this.alerts.set(a.id, a);
    } else if (message.type === "escalation") {
      this.steps += 1;
    } else {
      return;
    }
    this.emit();
    this.refreshEscalations();
  }

  // Debounced: one step sends a message per recipient, a snapshot and a burst of transitions come together.
  refreshEscalations() {
    if (!this.clinical || this.pending) return;
    this.pending = setTimeout(async () => {
      try {
        const asked = Date.now();
        const rows = await api("/api/v1/escalations");
        this.escalations = new Map(rows.map((e) => [e.alert_id, { ...e, asked }]));
        this.emit();
      } catch { /* the stream's next message or the deadline check asks again */ }
      this.pending = null;
    }, 250);
  }

  update(alert) { this.alerts.set(alert.id, alert); this.emit(); this.refreshEscalations(); }

  close() {
    this.socket.close();
    if (this.personal) this.personal.close();
    clearInterval(this.timer);
    const status = document.getElementById("live-status");
    if (status) status.hidden = true;
  }

  list() {
    const rank = { high: 0, medium: 1, low: 2 };
    return [...this.alerts.values()].sort((a, b) =>
      (a.state === "acknowledged") - (b.state === "acknowledged") || (rank[a.priority] ?? 3) - (rank[b.priority] ?? 3)
      || b.updated - a.updated);
  }
}
