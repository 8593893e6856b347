"""The measured alternative to the DuckDB store: one SQLite file in WAL mode (stdlib only).

It is complete and tested against the same contract, but not the default: at ward rate its three
B-trees keyed by series rewrite thousands of pages per commit (tens of kB of disk writes per row) and
the file is about ten times DuckDB's; see docs/storage.md. It remains the choice where another process
must read the file while the service runs, which DuckDB's file lock forbids.

Threads: one writer connection behind a lock (SQLite allows one writer at a time anyway, and the lock
turns would-be ``SQLITE_BUSY`` waits into plain queueing), plus a pool of reader connections, one per
thread that is reading at that moment. In WAL mode readers never block the writer and the writer never
blocks readers: the API reads a consistent snapshot while ingest commits. Connections are opened with
``check_same_thread=False`` so that any worker thread of ``asyncio.to_thread`` may borrow one, but a
connection is only ever used by one thread at a time.

Durability: ``synchronous=NORMAL`` (the default here) survives a crash of the process with every
committed batch; a power cut can lose the batches committed since the last WAL checkpoint, never the
file's consistency. ``synchronous="FULL"`` syncs the WAL at every commit, as DuckDB does.

Retention is a later issue; its seam is described in :mod:`storage.base` and docs/storage.md.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final, Literal

from msgspec.structs import astuple

from devices.contract import Observation

from .base import (
    HistoryPoint,
    Latest,
    Quarantined,
    Record,
    StoreClosed,
    StoreCorrupt,
    StoredEvent,
    StoreError,
    StoreStats,
    StoreUnavailable,
    WriteResult,
    check_range,
    check_record,
    check_target,
    decode_event,
    encode_event,
    event_kind,
    events_query,
    item_bed,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1

# The observation columns in the order of the contract's fields, so a row is ``astuple(obs)``.
_OBS_COLUMNS: Final = Observation.__struct_fields__

_SCHEMA: Final = f"""
BEGIN;
CREATE TABLE IF NOT EXISTS observations (
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    metric TEXT NOT NULL,
    code INTEGER NOT NULL,
    value REAL NOT NULL,
    unit TEXT NOT NULL,
    bed TEXT,
    device_ts INTEGER,
    flags INTEGER NOT NULL,
    containment TEXT,
    PRIMARY KEY (device, stream, seq)
) WITHOUT ROWID;
-- Bed + metric + time range, in the tie-break order, covering value: a per-bed history or latest
-- query reads this index alone.
CREATE INDEX IF NOT EXISTS observations_bed ON observations (bed, metric, ts, device, stream, seq, value);
-- Device + metric + time range (stream and seq are appended implicitly by WITHOUT ROWID).
CREATE INDEX IF NOT EXISTS observations_device ON observations (device, metric, ts);
CREATE TABLE IF NOT EXISTS events (
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    ts INTEGER NOT NULL,
    bed TEXT,
    body BLOB NOT NULL,
    PRIMARY KEY (device, stream, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_bed ON events (bed, ts);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw BLOB NOT NULL
);
-- Row counts kept in the writing transaction, so stats() is O(1) on a large file.
CREATE TABLE IF NOT EXISTS counts (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO counts (name, n) VALUES ('observations', 0), ('events', 0), ('quarantine', 0);
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

_INSERT_OBS: Final = (
    f"INSERT OR IGNORE INTO observations ({', '.join(_OBS_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_OBS_COLUMNS))})"
)
_INSERT_EVT: Final = (
    "INSERT OR IGNORE INTO events (device, stream, seq, kind, ts, bed, body) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_COUNT_ADD: Final = "UPDATE counts SET n = n + ? WHERE name = ?"

# Distinct metrics of one bed (or device) by skipping through the index: O(metrics * log rows).
_METRICS_SQL: Final = """
WITH RECURSIVE m(metric) AS (
    SELECT (SELECT min(metric) FROM observations WHERE {col} = ?1)
    UNION ALL
    SELECT (SELECT min(metric) FROM observations WHERE {col} = ?1 AND metric > m.metric)
    FROM m WHERE m.metric IS NOT NULL
)
SELECT metric FROM m WHERE metric IS NOT NULL
"""

# Primary result codes worth retrying: busy, locked, out of memory, I/O error, disk full, WAL protocol.
_RETRYABLE: Final = frozenset({5, 6, 7, 10, 13, 15})
_CORRUPT: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB


def _store_error(exc: sqlite3.Error, what: str, path: Path) -> StoreError:
    """Translate a sqlite3 error into the store's exception tree."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    message = f"{what} on {path}: {exc} ({name})"
    if primary in _CORRUPT:
        return StoreCorrupt(message)
    if primary in _RETRYABLE:
        return StoreUnavailable(message)
    return StoreError(message)


class SqliteStore:
    """A :class:`~storage.base.TimeSeriesStore` in one SQLite file (WAL, one writer, pooled readers)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_s: float = 5.0,
    ) -> None:
        """Open (creating the directory, file and tables if needed) the store at ``path``."""
        if str(path) == ":memory:" or str(path) == "":
            raise ValueError("SqliteStore needs a file path; use MemoryStore for an in-memory store")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._closed = False
        self._write_lock = threading.Lock()
        self._pool: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._open_readers: set[sqlite3.Connection] = set()
        self._readers_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of {self.path}: {exc}") from exc
        self._writer = self._connect(reader=False)
        try:
            self._setup()
        except BaseException:
            self._writer.close()
            raise
        log.info("opened store %s (synchronous=%s)", self.path, synchronous)

    def _connect(self, *, reader: bool) -> sqlite3.Connection:
        """Open one connection with the store's pragmas."""
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _store_error(exc, "open", self.path) from exc
        try:
            if reader:
                conn.execute("PRAGMA query_only = ON")
            else:
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error as exc:
            conn.close()
            raise _store_error(exc, "open", self.path) from exc
        return conn

    def _setup(self) -> None:
        """Switch to WAL, check the schema version and create what is missing."""
        conn = self._writer
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (journal_mode={mode})")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StoreCorrupt(
                    f"{self.path}: unknown schema version {version} (expected {SCHEMA_VERSION})"
                )
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(observations)")}
            if "containment" not in columns:  # a file written before the contract carried containment
                conn.execute("ALTER TABLE observations ADD COLUMN containment TEXT")
        except sqlite3.Error as exc:
            raise _store_error(exc, "open", self.path) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.path} is closed")

    @contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        """Borrow a reader connection for the calling thread; translate errors."""
        self._check_open()
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            conn = self._connect(reader=True)
            with self._readers_lock:
                self._open_readers.add(conn)
        try:
            yield conn
        except sqlite3.ProgrammingError as exc:
            if self._closed:
                raise StoreClosed(f"store {self.path} closed during {what}") from exc
            raise _store_error(exc, what, self.path) from exc
        except sqlite3.Error as exc:
            raise _store_error(exc, what, self.path) from exc
        finally:
            self._give_back(conn)

    def _give_back(self, conn: sqlite3.Connection) -> None:
        """Return a reader to the pool, or close it when the store has been closed meanwhile."""
        try:
            if conn.in_transaction:
                conn.rollback()
        except sqlite3.Error:
            log.warning("dropping a reader connection of %s that would not roll back", self.path)
            self._drop_reader(conn)
            return
        if self._closed:
            self._drop_reader(conn)
        else:
            self._pool.put(conn)

    def _drop_reader(self, conn: sqlite3.Connection) -> None:
        with self._readers_lock:
            self._open_readers.discard(conn)
        conn.close()

    def write(self, items: Sequence[Record], *, checked: bool = False) -> WriteResult:
        """Store a batch in one transaction; a key already stored counts as a duplicate, not stored twice."""
        obs_rows: list[tuple[object, ...]] = []
        evt_rows: list[tuple[object, ...]] = []
        for item in items:
            if not checked:
                check_record(item)
            if isinstance(item, Observation):
                obs_rows.append(astuple(item))
            else:
                evt_rows.append(
                    (
                        item.device,
                        item.stream,
                        item.seq,
                        event_kind(item),
                        item.ts,
                        item_bed(item),
                        encode_event(item),
                    )
                )
        with self._write_lock:
            self._check_open()
            if not items:
                return WriteResult(stored=0, duplicates=0)
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    n_obs = conn.executemany(_INSERT_OBS, obs_rows).rowcount if obs_rows else 0
                    n_evt = conn.executemany(_INSERT_EVT, evt_rows).rowcount if evt_rows else 0
                    if n_obs:
                        conn.execute(_COUNT_ADD, (n_obs, "observations"))
                    if n_evt:
                        conn.execute(_COUNT_ADD, (n_evt, "events"))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _store_error(exc, "write", self.path) from exc
        stored = n_obs + n_evt
        return WriteResult(stored=stored, duplicates=len(items) - stored)

    def latest(
        self, *, bed: str | None = None, device: str | None = None, since_ms: int | None = None
    ) -> list[Latest]:
        """The newest observation per metric for a bed or device (at or after ``since_ms``)."""
        check_target(bed, device)
        col, target = ("bed", bed) if bed is not None else ("device", device)
        where = f"{col} = ? AND metric = ?"
        extra: list[object] = []
        if bed is not None and device is not None:
            where += " AND device = ?"
            extra.append(device)
        if since_ms is not None:
            where += " AND ts >= ?"
            extra.append(since_ms)
        one = (
            "SELECT metric, code, value, unit, ts, device, flags, bed FROM observations "
            f"WHERE {where} ORDER BY ts DESC, device DESC, stream DESC, seq DESC LIMIT 1"
        )
        result: list[Latest] = []
        with self._reading("latest") as conn:
            conn.execute("BEGIN")  # one snapshot for the metric list and every per-metric row
            metrics = [row[0] for row in conn.execute(_METRICS_SQL.format(col=col), (target,))]
            for metric in metrics:
                row = conn.execute(one, (target, metric, *extra)).fetchone()
                if row is not None:
                    result.append(Latest(*row))
            conn.execute("COMMIT")
        return result

    def history(
        self,
        *,
        bed: str | None = None,
        device: str | None = None,
        metric: str,
        start_ms: int,
        end_ms: int,
        step_ms: int | None = None,
        limit: int = 100_000,
    ) -> list[HistoryPoint]:
        """Points of one metric in ``[start_ms, end_ms)``: raw, or one per ``step_ms`` bucket."""
        check_target(bed, device)
        check_range(start_ms, end_ms, step_ms, limit)
        col, target = ("bed", bed) if bed is not None else ("device", device)
        where = f"{col} = ? AND metric = ? AND ts >= ? AND ts < ?"
        params: list[object] = [target, metric, start_ms, end_ms]
        if bed is not None and device is not None:
            where += " AND device = ?"
            params.append(device)
        with self._reading("history") as conn:
            if step_ms is None:
                sql = (
                    f"SELECT ts, value FROM observations WHERE {where} "
                    "ORDER BY ts, device, stream, seq LIMIT ?"
                )
                rows = conn.execute(sql, (*params, limit)).fetchall()
                return [HistoryPoint(ts, value, value, value, 1) for ts, value in rows]
            sql = (
                "SELECT ts - ts % ? AS bucket, avg(value), min(value), max(value), count(*) "
                f"FROM observations WHERE {where} GROUP BY bucket ORDER BY bucket LIMIT ?"
            )
            rows = conn.execute(sql, (step_ms, *params, limit)).fetchall()
        return [HistoryPoint(*row) for row in rows]

    def events(
        self,
        *,
        bed: str | None = None,
        device: str | None = None,
        start_ms: int,
        end_ms: int,
        limit: int = 1000,
        kind: str | None = None,
    ) -> list[StoredEvent]:
        """Stored non-observation items in ``[start_ms, end_ms)`` (of one ``kind`` tag: evt, tag, waste, dev, loc)."""
        sql, params = events_query(bed=bed, device=device, start_ms=start_ms, end_ms=end_ms, limit=limit, kind=kind)
        with self._reading("events") as conn:
            bodies = [row[0] for row in conn.execute(sql, params)]
        return [decode_event(body) for body in bodies]

    def quarantine(self, *, source: str, reason: str, raw: bytes, ts: int) -> None:
        """Keep refused input with its reason."""
        self.quarantine_many([Quarantined(ts=ts, source=source, reason=reason, raw=raw)])

    def quarantine_many(self, rows: Sequence[Quarantined]) -> None:
        """Keep many refused inputs in one transaction (one per input costs ~50 µs each: a flood stalls ingest)."""
        if not rows:
            return
        with self._write_lock:
            self._check_open()
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("INSERT INTO quarantine (ts, source, reason, raw) VALUES (?, ?, ?, ?)",
                                     [(r.ts, r.source, r.reason, bytes(r.raw)) for r in rows])
                    conn.execute(_COUNT_ADD, (len(rows), "quarantine"))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _store_error(exc, "quarantine", self.path) from exc

    def quarantined(self, limit: int = 100) -> list[Quarantined]:
        """The most recently quarantined inputs, newest first."""
        with self._reading("quarantined") as conn:
            rows = conn.execute(
                "SELECT ts, source, reason, raw FROM quarantine ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [
            Quarantined(ts=ts, source=source, reason=reason, raw=bytes(raw))
            for ts, source, reason, raw in rows
        ]

    def quarantine_count(self) -> int:
        """How many inputs are in quarantine."""
        with self._reading("quarantine_count") as conn:
            row = conn.execute("SELECT n FROM counts WHERE name = 'quarantine'").fetchone()
        return int(row[0]) if row else 0

    def stats(self) -> StoreStats:
        """Row counts (kept in the counts table) and the bytes of the file with its WAL and shared memory."""
        with self._reading("stats") as conn:
            counts = dict(conn.execute("SELECT name, n FROM counts").fetchall())
        size = 0
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                size += os.stat(f"{self.path}{suffix}").st_size
        return StoreStats(
            observations=int(counts.get("observations", 0)),
            events=int(counts.get("events", 0)),
            quarantined=int(counts.get("quarantine", 0)),
            file_bytes=size,
        )

    def close(self) -> None:
        """Close every connection (readers still borrowed close when returned); later calls raise."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._writer.close()
            except sqlite3.Error as exc:
                log.warning("closing the writer of %s failed: %s", self.path, exc)
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                break
            self._drop_reader(conn)
        log.info("closed store %s", self.path)
