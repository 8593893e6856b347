"""Alert state on disk (SQLite): current alerts plus an append-only log of every transition."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import msgspec

from devices.contract import Alert, encode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, updated INTEGER NOT NULL, body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alarm_log (
    n INTEGER PRIMARY KEY AUTOINCREMENT, alert_id TEXT NOT NULL, state TEXT NOT NULL,
    at INTEGER NOT NULL, body BLOB NOT NULL
);
"""


class AlertStateError(RuntimeError):
    """The alert state file could not be read or written."""


class AlertState:
    """Current alerts and their transition log, kept so a restart loses and repeats nothing."""

    def __init__(self, path: Path) -> None:
        """Open or create the state file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._decoder = msgspec.json.Decoder(Alert)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise AlertStateError(f"alert state {path}: {exc}") from exc

    def save(self, alert: Alert) -> None:
        """Store the alert's new state and append the transition to the log."""
        body = encode(alert)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO alerts (id, state, updated, body) VALUES (?,?,?,?) ON CONFLICT (id) DO UPDATE "
                    "SET state = excluded.state, updated = excluded.updated, body = excluded.body",
                    (alert.id, alert.state, alert.updated, body))
                self._db.execute("INSERT INTO alarm_log (alert_id, state, at, body) VALUES (?,?,?,?)",
                                 (alert.id, alert.state, alert.updated, body))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise AlertStateError(f"could not save alert {alert.id}: {exc}") from exc

    def open_alerts(self) -> list[Alert]:
        """Alerts not yet resolved."""
        with self._lock:
            rows = self._db.execute("SELECT body FROM alerts WHERE state != 'resolved' ORDER BY updated").fetchall()
        return [self._decoder.decode(r[0]) for r in rows]

    def log(self, alert_id: str | None = None, limit: int = 1000) -> list[Alert]:
        """Transitions, oldest first (of one alert, or of all)."""
        with self._lock:
            if alert_id is None:
                rows = self._db.execute("SELECT body FROM alarm_log ORDER BY n LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._db.execute("SELECT body FROM alarm_log WHERE alert_id = ? ORDER BY n LIMIT ?",
                                        (alert_id, limit)).fetchall()
        return [self._decoder.decode(r[0]) for r in rows]

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()
