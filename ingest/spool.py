"""A durable, bounded local spool (SQLite, synchronous=FULL) for batches the store cannot take right now.

Ingest commits a batch to its gateway once the batch is either in the store or in this spool, so a
store outage does not fill the gateways' outboxes nor the broker's queues. Records are drained into
the store oldest first and deleted only after the store has them. The spool is bounded by items:
when full, :meth:`Spool.append` refuses and ingest stops committing and reading (back-pressure to the
broker and the gateways' outboxes, which keep every uncommitted reading).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import msgspec

from devices.contract import UNDECODABLE, Item

log = logging.getLogger(__name__)


class SpoolError(RuntimeError):
    """The spool file could not be written or read (disk full, corrupt file)."""


class Rejected(msgspec.Struct, frozen=True):
    """Input to quarantine, with its reason and raw bytes."""

    source: str
    reason: str
    raw: bytes


class Record(msgspec.Struct):
    """One spooled batch: items to store and input to quarantine."""

    items: list[Item] = []
    rejected: list[Rejected] = []


_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    count INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""


class Spool:
    """Bounded durable FIFO of :class:`Record`; thread-safe (called through ``asyncio.to_thread``)."""

    def __init__(self, path: Path, *, max_items: int = 2_000_000) -> None:
        """Open (or create) the spool file and count what it holds."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_items = max_items
        self._lock = threading.Lock()
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Record)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a spooled batch is committed to its gateway
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT count(*), coalesce(sum(count), 0) FROM spool").fetchone()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {path}: {exc}") from exc
        self._records, self._items = int(row[0]), int(row[1])
        if self._records:
            log.warning("spool %s holds %d items from before; draining them into the store", path, self._items)

    def append(self, record: Record) -> bool:
        """Store a record durably; ``False`` (nothing stored) when it would exceed ``max_items``."""
        count = len(record.items) + len(record.rejected)
        with self._lock:
            if self._items and self._items + count > self.max_items:
                return False
            try:
                self._db.execute("INSERT INTO spool (count, body) VALUES (?, ?)", (count, self._encoder.encode(record)))
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: could not store {count} items: {exc}") from exc
            self._records += 1
            self._items += count
        return True

    def oldest(self) -> tuple[int, Record] | None:
        """The oldest record with its id, or ``None`` when empty."""
        with self._lock:
            try:
                row = self._db.execute("SELECT id, body FROM spool ORDER BY id LIMIT 1").fetchone()
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: {exc}") from exc
        if row is None:
            return None
        try:
            return int(row[0]), self._decoder.decode(row[1])
        except UNDECODABLE as exc:  # never stall the drain on one damaged record: quarantine it
            reason = f"spool {self.path}: record {row[0]} does not decode: {exc}"
            return int(row[0]), Record(rejected=[Rejected("ingest.spool", reason, bytes(row[1]))])

    def remove(self, record_id: int) -> None:
        """Delete a drained record."""
        with self._lock:
            try:
                row = self._db.execute("DELETE FROM spool WHERE id = ? RETURNING count", (record_id,)).fetchone()
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: {exc}") from exc
            if row is not None:
                self._records -= 1
                self._items -= int(row[0])

    def depth(self) -> int:
        """Items waiting in the spool."""
        return self._items

    def records(self) -> int:
        """Records waiting in the spool."""
        return self._records

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()
