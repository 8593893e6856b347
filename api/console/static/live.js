// The alerts stream: a ticket per connection, a snapshot then transitions, and reconnection with a fresh
// ticket (backoff up to 10 s) after the server goes away; each reconnection resynchronises from the snapshot.
import { api } from "./api.js";

export class AlertStream {
  constructor() {
    this.alerts = new Map();
    this.listeners = new Set();
    this.state = "connecting";
    this.snapshots = 0;
    this.closed = false;
    this.delay = 500;
    this.connect();
  }

  on(fn) { this.listeners.add(fn); fn(this); return () => this.listeners.delete(fn); }

  emit() {
    const status = document.getElementById("live-status");
    if (status) {
      status.hidden = false;
      status.dataset.state = this.state;
      status.dataset.snapshots = String(this.snapshots);
      status.textContent = this.state === "live" ? "● Live" : "○ Reconnecting…";
    }
    for (const fn of this.listeners) fn(this);
  }

  async connect() {
    if (this.closed) return;
    this.state = "connecting";
    this.emit();
    let ticket;
    try {
      ticket = (await api("/api/v1/auth/ws-ticket", { method: "POST" })).ticket;
    } catch {
      return this.retry();
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/api/v1/alerts/stream?ticket=${encodeURIComponent(ticket)}`);
    this.ws = ws;
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "snapshot") {
        this.alerts = new Map(message.alerts.map((a) => [a.id, a]));
        this.snapshots += 1;
        this.state = "live";
        this.delay = 500;
      } else if (message.type === "alert") {
        const a = message.alert;
        if (a.state === "resolved") this.alerts.delete(a.id); else this.alerts.set(a.id, a);
      } else {
        return;
      }
      this.emit();
    };
    ws.onclose = () => { if (this.ws === ws) this.retry(); };
  }

  retry() {
    if (this.closed) return;
    this.state = "reconnecting";
    this.emit();
    setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, 10000);
  }

  update(alert) { this.alerts.set(alert.id, alert); this.emit(); }

  close() {
    this.closed = true;
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(); }
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
