"""Durable outbox (SQLite WAL): a reading counts as read only once it is here, and leaves only on commit.

Each item gets its per-stream sequence number here, in the same transaction that stores it, so
``(device, stream, seq)`` is assigned exactly once and survives restarts. Items accepted together for
one stream are kept as one row (a contiguous sequence range with the items' JSON joined), which
keeps the per-reading cost of the disk low; a row always travels, commits and sheds whole. Rows are deleted only
when ingest reports the range committed to the store (:meth:`Outbox.release`), never on a broker
PUBACK. Each priority class has a lane of its own (alarms, trends, waste, tag reads): alarms are
published first, and the outbox is bounded: past ``max_rows`` it sheds the lowest-priority lane first
(tag reads, then waste pings, then trends), never alarms, and counts every item it shed. The same
happens when the file reaches its disk quota (``max_bytes``, SQLite's max page count) or the disk is full:
the insert is retried after shedding, and fails only when nothing but alarms is left.

A stream's next sequence number is kept in memory and written to disk only when rows leave (release
or shedding); on start it is the larger of what was written and what the remaining rows hold, so a
number is never given twice, and an accept costs one insert.
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

# Lanes are priority classes; the higher the number, the sooner it is shed. Alarms are never shed, and
# device registrations travel with them: a registration must reach ingest before the device's data.
LANE_ALARM = 0
LANE_TRENDS = 1
LANE_WASTE = 2
LANE_TAGS = 3
DATA_LANES = (LANE_TRENDS, LANE_WASTE, LANE_TAGS)
_LANE: dict[type, int] = {DeviceEvent: LANE_ALARM, DeviceInfo: LANE_ALARM, Observation: LANE_TRENDS,
                          WasteEvent: LANE_WASTE, TagRead: LANE_TAGS}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    shed_rank INTEGER NOT NULL,  -- kept for files written before lanes were priority classes; equals lane
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    payload BLOB NOT NULL  -- the items' JSON objects joined by commas
);
CREATE INDEX IF NOT EXISTS outbox_key ON outbox (device, stream, first_seq);
CREATE INDEX IF NOT EXISTS outbox_lane ON outbox (lane, id);  -- publishing and shedding both walk it
DROP INDEX IF EXISTS outbox_shed;  -- from before lanes were priority classes
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
    """A stored run of items of one stream waiting for its commit."""

    id: int
    count: int
    payload: bytes  # JSON objects joined by commas, ready to go inside a batch's items array


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """What :meth:`Outbox.accept` did."""

    accepted: int
    shed: int


def merge_ranges(ranges: Iterable[SeqRange]) -> list[tuple[str, str, int, int]]:
    """``(device, stream, first, last)`` per stream, ranges that touch or overlap merged (their union is committed)."""
    merged: list[tuple[str, str, int, int]] = []
    for r in sorted(ranges, key=_range_order):
        if merged:
            device, stream, first, last = merged[-1]
            if r.device == device and r.stream == stream and r.first <= last + 1:
                merged[-1] = (device, stream, first, max(last, r.last))
                continue
        merged.append((r.device, r.stream, r.first, r.last))
    return merged


def _range_order(r: SeqRange) -> tuple[str, str, int]:
    return (r.device, r.stream, r.first)


class Outbox:
    """A bounded, durable, two-lane outbox with per-stream sequence numbers."""

    def __init__(self, path: Path, *, max_rows: int = 1_000_000, max_bytes: int = 0) -> None:
        """Open (or create) the outbox file and load the sequence counters; ``max_bytes`` > 0 caps the file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._encode = msgspec.json.Encoder().encode
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Debian's SQLite zeroes every freed page (SECURE_DELETE): a released row's page is then written
            # to the WAL a second time, about half the cost of a release. FAST still zeroes deleted rows on
            # the pages a delete writes anyway; freed pages keep their bytes until an insert reuses them.
            self._db.execute("PRAGMA secure_delete=FAST")
            self._db.executescript(_SCHEMA)
            if max_bytes > 0:
                page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
                self._db.execute(f"PRAGMA max_page_count = {max(16, max_bytes // page)}")
            self._next: dict[tuple[str, str], int] = {
                (d, s): n for d, s, n in self._db.execute("SELECT device, stream, next_seq FROM streams")
            }
            for d, s, last in self._db.execute("SELECT device, stream, max(last_seq) FROM outbox GROUP BY 1, 2"):
                self._next[(d, s)] = max(self._next.get((d, s), 1), last + 1)
            self._rows = int(self._db.execute("SELECT coalesce(sum(count), 0) FROM outbox").fetchone()[0])
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
        runs: dict[tuple[str, str], list[Item]] = {}  # the stamped items of each stream, in order
        replace = msgspec.structs.replace
        with self._lock:
            for item in items:
                key = (item.device, item.stream)
                run = runs.get(key)
                if run is None:
                    run = runs[key] = []
                    seq = self._next.get(key, 1)
                else:
                    seq = run[-1].seq + 1
                item = replace(item, seq=seq)
                run.append(item)
                stamped.append(item)
            rows = []
            for key, run in runs.items():
                # A run holding an alarm travels (and is kept) as an alarm.
                lane = min(map(_LANE.__getitem__, map(type, run)))
                # One encoding per run: a JSON array without its brackets is the items' objects joined by commas.
                rows.append((lane, lane, key[0], key[1], run[0].seq, run[-1].seq, len(run), self._encode(run)[1:-1]))
            shed = 0
            extra = 0  # items to shed beyond the row bound: the file is at its quota or the disk is full
            shed_before = self.shed_total
            while True:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    overflow = max(self._rows + len(stamped) - self.max_rows, 0) + extra
                    if overflow > 0:
                        shed = self._shed(overflow)
                    self._db.executemany(
                        "INSERT INTO outbox (lane, shed_rank, device, stream, first_seq, last_seq, count, payload) "
                        "VALUES (?,?,?,?,?,?,?,?)", rows)
                    self._db.execute("COMMIT")
                    break
                except sqlite3.Error as exc:
                    self._rollback()
                    self.shed_total = shed_before  # the shedding was rolled back with the transaction
                    shed = 0
                    # Full: shed more each round (pages freed are reused by the insert); give up only when the
                    # data lanes are empty, that is when only alarms are left.
                    sheddable = self._sheddable()
                    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL and sheddable > extra:
                        extra = min(max(2 * extra, len(stamped), 64), sheddable)
                        log.warning("outbox %s full (%s): shedding %d low-priority items to make room", self.path,
                                    exc, extra)
                        continue
                    raise OutboxError(f"outbox {self.path}: could not store {len(stamped)} items: {exc}") from exc
            self._next.update((key, run[-1].seq + 1) for key, run in runs.items())
            self._rows += len(stamped) - shed
        return stamped, AcceptResult(len(stamped), shed)

    def _sheddable(self) -> int:
        """Items in the data lanes (what shedding can free)."""
        try:
            row = self._db.execute("SELECT coalesce(sum(count), 0) FROM outbox WHERE lane != ?", (LANE_ALARM,))
            return int(row.fetchone()[0])
        except sqlite3.Error:
            return 0

    def _shed(self, count: int) -> int:
        """Delete at least ``count`` items, lowest priority and oldest first, never alarms; in a transaction."""
        victims: list[tuple[int, str, str, int]] = []
        shed = 0
        for lane in reversed(DATA_LANES):
            cursor = self._db.execute(
                "SELECT id, count, device, stream, last_seq FROM outbox WHERE lane = ? ORDER BY id", (lane,))
            for row_id, row_count, device, stream, last in cursor:
                if shed >= count:
                    break
                victims.append((row_id, device, stream, last))
                shed += row_count
            cursor.close()
            if shed >= count:
                break
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(v[0],) for v in victims])
        self._remember_seqs((device, stream, last) for _, device, stream, last in victims)
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
        """Stored runs of ``lane`` with an id above ``after_id``, oldest first, about ``limit`` items in all.

        At least one run is returned when there is one, even if it alone holds more than ``limit``.
        """
        out: list[Pending] = []
        total = 0
        with self._lock:
            try:
                cursor = self._db.execute(
                    "SELECT id, count, payload FROM outbox WHERE lane = ? AND id > ? ORDER BY id", (lane, after_id))
                for row_id, count, payload in cursor:
                    if out and total + count > limit:
                        break
                    out.append(Pending(row_id, count, payload))
                    total += count
                cursor.close()
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
        return out

    def release(self, ranges: Iterable[SeqRange]) -> int:
        """Delete the runs that ingest reported committed in full; return how many items left the outbox.

        Ranges of one stream that touch or overlap (several commits released together) are merged first:
        one DELETE per stream, and a row that straddles two commits' ranges is released too.
        """
        params = merge_ranges(ranges)
        if not params:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                released = 0
                gone: list[tuple[str, str, int]] = []
                for device, stream, first, last in params:
                    # first_seq <= last is implied by last_seq <= last, but the index walk needs it as its upper
                    # bound: without it the DELETE visits every later row of the stream (the whole backlog).
                    rows = self._db.execute(
                        "DELETE FROM outbox WHERE device = ? AND stream = ? AND first_seq BETWEEN ? AND ? "
                        "AND last_seq <= ? RETURNING count, last_seq", (device, stream, first, last, last)).fetchall()
                    released += sum(r[0] for r in rows)
                    if rows:
                        gone.append((device, stream, max(r[1] for r in rows)))
                self._remember_seqs(gone)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
            self._rows -= released
        return released

    def _remember_seqs(self, gone: Iterable[tuple[str, str, int]]) -> None:
        """Rows up to ``last`` are leaving: keep the stream's next number on disk (inside a transaction)."""
        self._db.executemany(
            "INSERT INTO streams (device, stream, next_seq) VALUES (?,?,?) "
            "ON CONFLICT (device, stream) DO UPDATE SET next_seq = max(next_seq, excluded.next_seq)",
            [(device, stream, last + 1) for device, stream, last in gone])

    def oldest(self) -> dict[int, int]:
        """The oldest waiting row's id in each lane that has one."""
        with self._lock:
            try:
                return dict(self._db.execute("SELECT lane, min(id) FROM outbox GROUP BY lane").fetchall())
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: {exc}") from exc

    def next_seq(self, device: str, stream: str) -> int:
        """The sequence number the stream's next item will get."""
        return self._next.get((device, stream), 1)

    def depth(self) -> int:
        """Items waiting for a commit."""
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
