"""Durable outbox (SQLite WAL): a reading counts as read only once it is here, and leaves only on commit.

Each item gets its per-stream sequence number here, in the same transaction that stores it, so
``(device, stream, seq)`` is assigned exactly once and survives restarts. Rows are deleted only
when ingest reports the range committed to the store (:meth:`Outbox.release`), never on a broker
PUBACK. Two lanes keep alarms apart from telemetry. The outbox is bounded: past ``max_rows`` it
sheds the lowest-priority rows first (tag reads and waste pings, then trends), never alarms, and
counts every row it shed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from devices.contract import DeviceEvent, DeviceInfo, Item, Observation, SeqRange, TagRead, WasteEvent

log = logging.getLogger(__name__)

LANE_ALARM = 0
LANE_DATA = 1

# Shedding order: the highest number goes first. Alarms are never shed.
_PRIORITY = {TagRead: 3, WasteEvent: 2, Observation: 1, DeviceEvent: 0, DeviceInfo: 0}
# Alarms and device registrations go first: a registration must reach ingest before the device's data.
_ALARM_LANE = (DeviceEvent, DeviceInfo)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    shed_rank INTEGER NOT NULL,
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_key ON outbox (device, stream, seq);
CREATE INDEX IF NOT EXISTS outbox_lane ON outbox (lane, id);
CREATE TABLE IF NOT EXISTS streams (
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    PRIMARY KEY (device, stream)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""


class OutboxError(RuntimeError):
    """The outbox file could not be written or read (disk full, corrupt file)."""


@dataclass(frozen=True, slots=True)
class Pending:
    """One stored item waiting for its commit."""

    id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """What :meth:`Outbox.accept` did."""

    accepted: int
    shed: int


class Outbox:
    """A bounded, durable, two-lane outbox with per-stream sequence numbers."""

    def __init__(self, path: Path, *, max_rows: int = 1_000_000) -> None:
        """Open (or create) the outbox file and load the sequence counters."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._encoder = msgspec.json.Encoder()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._next: dict[tuple[str, str], int] = {
                (d, s): n for d, s, n in self._db.execute("SELECT device, stream, next_seq FROM streams")
            }
            self._rows = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
            self.shed_total = self._counter("shed")
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {path}: {exc}") from exc

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def accept(self, items: Sequence[Item]) -> tuple[list[Item], AcceptResult]:
        """Assign sequence numbers and store ``items`` durably; return them with their numbers."""
        if not items:
            return [], AcceptResult(0, 0)
        stamped: list[Item] = []
        rows = []
        touched: dict[tuple[str, str], int] = {}
        with self._lock:
            for item in items:
                key = (item.device, item.stream)
                seq = touched.get(key, self._next.get(key, 1))
                touched[key] = seq + 1
                item = msgspec.structs.replace(item, seq=seq)
                stamped.append(item)
                lane = LANE_ALARM if isinstance(item, _ALARM_LANE) else LANE_DATA
                rows.append((lane, _PRIORITY[type(item)], item.device, item.stream, seq, self._encoder.encode(item)))
            shed = 0
            try:
                self._db.execute("BEGIN IMMEDIATE")
                overflow = self._rows + len(rows) - self.max_rows
                if overflow > 0:
                    shed = self._shed(overflow)
                self._db.executemany(
                    "INSERT INTO outbox (lane, shed_rank, device, stream, seq, payload) VALUES (?,?,?,?,?,?)", rows
                )
                self._db.executemany(
                    "INSERT INTO streams (device, stream, next_seq) VALUES (?,?,?) "
                    "ON CONFLICT (device, stream) DO UPDATE SET next_seq = excluded.next_seq",
                    [(d, s, n) for (d, s), n in touched.items()],
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox {self.path}: could not store {len(rows)} items: {exc}") from exc
            self._next.update(touched)
            self._rows += len(rows) - shed
        return stamped, AcceptResult(len(rows), shed)

    def _shed(self, count: int) -> int:
        """Delete ``count`` rows, lowest priority and oldest first, never alarms; inside a transaction."""
        cur = self._db.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE shed_rank > 0 "
            "ORDER BY shed_rank DESC, id LIMIT ?)",
            (count,),
        )
        shed = cur.rowcount
        self.shed_total += shed
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES ('shed', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (self.shed_total,),
        )
        if shed:
            log.warning("outbox %s full: shed %d low-priority rows (total %d)", self.path, shed, self.shed_total)
        return shed

    def pending(self, lane: int, after_id: int, limit: int) -> list[Pending]:
        """Up to ``limit`` stored items of ``lane`` with an id above ``after_id``, oldest first."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, payload FROM outbox WHERE lane = ? AND id > ? ORDER BY id LIMIT ?",
                    (lane, after_id, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
        return [Pending(i, p) for i, p in rows]

    def release(self, ranges: Iterable[SeqRange]) -> int:
        """Delete the items ingest reported committed; return how many rows left the outbox."""
        params = [(r.device, r.stream, r.first, r.last) for r in ranges]
        if not params:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                before = self._db.total_changes
                self._db.executemany(
                    "DELETE FROM outbox WHERE device = ? AND stream = ? AND seq BETWEEN ? AND ?", params
                )
                released = self._db.total_changes - before
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
            self._rows -= released
        return released

    def depth(self) -> int:
        """Rows waiting for a commit."""
        return self._rows

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback after a failed outbox transaction failed too", exc_info=True)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()
