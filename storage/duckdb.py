"""The embedded store: one DuckDB file, chosen over SQLite by measurement (see docs/storage.md).

Layout (schema 4): each series' text (device, stream, metric, code, unit, bed, containment) is kept once in
``series`` under a number, and observations are appended as numbers to ``samples`` in arrival order, so
DuckDB's per-row-group min/max of ``ts`` prunes every time-range scan, columns compress and a batch is
written without converting a Python string (:mod:`storage.duckdb_codes`); the ``observations`` view joins
them, so every query reads observations as it did. No table has a primary key (DuckDB keeps a key's
ART index in memory outside its buffer pool, 8-12 bytes per row inserted, until the file is reopened;
``rollup_1m`` gets a partial row for a minute rolled up again, which reads sum). Writes are made
idempotent in Python by two :class:`~storage.ranges.KeyIndex` (the stored seqs of every stream as
runs), one for observations and one for events (each a key space of its own, as in every store),
which drop every key already stored before the insert. The newest observation per (device, metric,
bed) is kept in memory (:class:`~storage.latest_cache.LatestCache`), so ``latest()`` never scans.

All three are derived state with a snapshot: every observation and event row carries ``wb``, the number
of the write batch that stored it; the ``seq_ranges``, ``event_ranges`` and ``latest`` tables hold the
indexes and the cache as of batch ``snapshot_wb`` (in ``meta``), rewritten by ``maintain()`` (in the
same transaction as its deletes), by ``close()`` and every ``snapshot_rows`` stored rows or
``snapshot_s`` seconds. Opening loads the snapshot and adds the rows with ``wb > snapshot_wb``, so a
crash loses no key and no latest value: the rows themselves are the log. Rows without ``wb`` (files of
schemas 1 and 2, or rows bulk-loaded past the store) are adopted at open: indexed, folded into latest,
then numbered 0.

Threads: one writer connection behind a lock, and a pool of reader cursors (DuckDB connections to the
same database), one per thread that is reading at that moment. Readers see the last committed state
(MVCC) and are not blocked by the writer. DuckDB locks the file for one process: a second process
cannot open it, not even read-only, while the service runs (which is also what makes the in-memory
index the only writer's view).

Durability: DuckDB syncs its WAL at every commit, so a stored batch survives a crash of the process
or the machine; the WAL is checkpointed into the file automatically and at ``close()``.

Retention: :meth:`DuckDbStore.maintain` rolls raw observations past raw retention into the
``rollup_1m`` table and deletes them, and deletes events past their retention, in one transaction (rules in
:mod:`storage.base`). The key indexes keep their keys, so a replay of a deleted row stays a duplicate.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np

from devices.contract import Observation

from .base import (
    MINUTE_MS,
    HistoryPoint,
    Key,
    Latest,
    MaintenanceResult,
    Quarantined,
    Record,
    Retention,
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
    key_of,
    merge_buckets,
    raw_cutoff,
)
from .duckdb_codes import INSERT as INSERT_OBS
from .duckdb_codes import SeriesCodes, SeriesKey, numeric_columns
from .duckdb_schema import (
    EVT_COLUMNS,
    INSERT_EVT,
    ISLANDS,
    LATEST_COLUMNS,
    MIGRATE_FROM_1,
    MIGRATE_FROM_2,
    MIGRATE_FROM_3,
    NEWEST,
    ROLL_UP,
    SCHEMA,
    SCHEMA_VERSION,
    UNKEY_ROLLUPS,
)
from .latest_cache import LatestCache
from .ranges import KeyIndex, Piece, StreamKey

log = logging.getLogger(__name__)

_QUIET: Final = "SET enable_progress_bar = false"  # a service prints no progress bars of long queries

# DuckDB keeps every block it writes in its buffer pool until the pool is full: an appending ingest worker's
# pool grows by what it stores (about 6 MB/min at the soak's 10,500 readings/s) until the bound, so the
# bound is the worker's steady memory. Writing needs little (the appends not yet checkpointed, at most the
# 16 MB checkpoint threshold); queries spill past it. 64 MB: the soak's
# pool plateaus at 6-30 MB of cached table blocks after 4 minutes (512 MB: still growing after 15 minutes),
# and reads, roll-ups and the 2 million rows of a crash recovery run within it (docs/storage.md).
MEMORY_LIMIT_MB: Final = 64
# Opening rebuilds the key index and latest with window queries over the rows written after the snapshot
# (up to snapshot_rows, more if snapshots failed, or a whole schema-1 file): 2 million rows take 64 MB and
# 4 million more, so the pool is raised to this while loading and set back after.
LOAD_MEMORY_LIMIT_MB: Final = 1024

# DuckDB errors worth retrying: another process holds the file lock, a write-write conflict, memory.
_RETRYABLE: Final = (
    duckdb.TransactionException,
    duckdb.OutOfMemoryException,
    duckdb.InterruptException,
    duckdb.ResourceInUseException,
)


def bed_key(bed: str | None) -> str:
    """The non-null key column value for a bed (``''`` when there is none)."""
    return "" if bed is None else f"b:{bed}"


def _event_columns(rows: Sequence[tuple[object, ...]]) -> dict[str, np.ndarray]:
    """Event rows ``(device, stream, seq, kind, ts, bed, body)`` as numpy columns."""
    try:
        return {
            name: np.array(values, dtype=np.int64 if name in ("seq", "ts") else object)
            for name, values in zip(EVT_COLUMNS, zip(*rows, strict=True), strict=True)
        }
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"a batch of {len(rows)} events cannot be stored: {exc}", retryable=False) from exc


def _latest_columns(newest: Sequence[Observation]) -> dict[str, np.ndarray]:
    """The latest table's columns for the newest observation of each series."""
    columns = {name: np.array([getattr(o, name) for o in newest], dtype=object)
               for name in ("device", "metric", "bed", "stream", "unit")}
    columns["bed_key"] = np.array([bed_key(o.bed) for o in newest], dtype=object)
    for name in ("seq", "ts", "code", "flags"):
        columns[name] = np.array([getattr(o, name) for o in newest], dtype=np.int64)
    columns["value"] = np.array([o.value for o in newest], dtype=np.float64)
    return columns


def _observation(row: tuple[Any, ...]) -> Observation:
    """An observation standing for a row of the latest table (``LATEST_COLUMNS`` order)."""
    device, metric, _, bed, stream, seq, ts, code, value, unit, flags = row
    return Observation(device=device, stream=stream, seq=seq, ts=ts, metric=metric, value=value, unit=unit,
                       code=code, bed=bed, flags=flags)


def _store_error(exc: duckdb.Error, what: str, path: Path) -> StoreError:
    """Translate a duckdb error into the store's exception tree."""
    message = f"{what} on {path}: {exc}"
    text = str(exc)
    if isinstance(exc, duckdb.IOException):
        if "not a valid DuckDB database" in text or "Corrupt" in text:
            return StoreCorrupt(message)
        return StoreUnavailable(message)  # lock held by another process, disk full, I/O error
    if isinstance(exc, duckdb.SerializationException):
        return StoreCorrupt(message)
    if isinstance(exc, _RETRYABLE):
        return StoreUnavailable(message)
    return StoreError(message)


class DuckDbStore:
    """A :class:`~storage.base.TimeSeriesStore` in one DuckDB file (one writer, pooled reader cursors)."""

    preferred_batch: Final = 20_000  # items per write: 2.4-2.8 µs each here, 3-4 at 5,000 (docs/benchmarks.md)

    def __init__(self, path: str | os.PathLike[str], retention: Retention | None = None, *,
                 snapshot_rows: int = 2_000_000, snapshot_s: float = 60.0,
                 memory_limit_mb: int = MEMORY_LIMIT_MB) -> None:
        """Open (creating the directory, file and tables if needed, upgrading schema 1) the store at ``path``.

        ``snapshot_rows`` and ``snapshot_s`` bound how many stored rows, or how long, the key index and
        the latest cache may run ahead of their tables (what the next open re-reads from the rows).
        ``memory_limit_mb`` bounds DuckDB's buffer pool, which keeps every block it writes cached until the
        bound (see :data:`MEMORY_LIMIT_MB`); past it DuckDB evicts, or spills to the directory ``<file>.tmp``
        beside the file. Opening may use up to :data:`LOAD_MEMORY_LIMIT_MB` while it rebuilds the key index.
        """
        if str(path) in ("", ":memory:"):
            raise ValueError("DuckDbStore needs a file path; use MemoryStore for an in-memory store")
        if memory_limit_mb < 64:
            raise ValueError(f"store memory_limit_mb must be at least 64, not {memory_limit_mb}")
        self.path = Path(path)
        self.retention = retention or Retention()
        self.memory_limit_mb = memory_limit_mb
        self.snapshot_rows = snapshot_rows
        self.snapshot_s = snapshot_s
        self._closed = False
        self._write_lock = threading.Lock()
        self._pool: queue.SimpleQueue[duckdb.DuckDBPyConnection] = queue.SimpleQueue()
        self._cursor_lock = threading.Lock()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._keys = KeyIndex()  # observations
        self._event_keys = KeyIndex()  # events: a key space of their own, as in every store
        self._latest = LatestCache()
        self._codes = SeriesCodes()  # the series table's codes, for the writer
        self._next_wb = 1  # the number of the next write batch (set by _load)
        self._unsnapshotted = 0  # rows stored since the last snapshot
        self._snapshot_at = time.monotonic()
        self._stale = False  # a commit failed: reload the index and the cache before the next write
        self._unbounded = False  # the buffer pool is still at the loading bound (setting it back failed)
        self._on_commit: list[Callable[[], None]] = []  # run after the open transaction commits
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of {self.path}: {exc}") from exc
        try:
            # The loading bound until _load() sets the steady one (replaying a WAL left by a crash is loading too).
            self._conn = duckdb.connect(str(self.path), config={
                "memory_limit": f"{max(memory_limit_mb, LOAD_MEMORY_LIMIT_MB)}MB"})
            self._conn.execute(_QUIET).fetchall()
        except duckdb.Error as exc:
            raise _store_error(exc, "open", self.path) from exc
        try:
            self._setup()
            self._load()
            self._factory = (
                self._conn.cursor()
            )  # reader cursors are made from this one, never from the writer
        except BaseException:
            self._conn.close()
            raise
        log.info("opened store %s", self.path)

    def _setup(self) -> None:
        """Check the schema version, upgrade schemas 1 and 2 and create what is missing."""
        conn = self._conn
        try:
            conn.execute("BEGIN")
            conn.execute(SCHEMA[0])
            rows = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchall()
            if rows and rows[0][0] in (1, 2, 3):
                if rows[0][0] == 1:
                    for statement in MIGRATE_FROM_1:
                        conn.execute(statement)
                if rows[0][0] <= 2:
                    for statement in MIGRATE_FROM_2:
                        conn.execute(statement)
                for statement in MIGRATE_FROM_3:
                    conn.execute(statement)
                if conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'rollup_1m'").fetchall()[0][0]:
                    for statement in UNKEY_ROLLUPS:
                        conn.execute(statement)
                conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", [SCHEMA_VERSION])
                log.warning("store %s: upgraded from schema %d to %d (series numbered, no primary keys; the key "
                            "indexes and latest are rebuilt from the rows)", self.path, rows[0][0], SCHEMA_VERSION)
            elif rows and rows[0][0] != SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                raise StoreCorrupt(
                    f"{self.path}: unknown schema version {rows[0][0]} (expected {SCHEMA_VERSION})"
                )
            for statement in SCHEMA:
                conn.execute(statement)
            if not rows:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('snapshot_wb', 0)")
            conn.execute("COMMIT")
        except duckdb.Error as exc:
            with suppress(duckdb.Error):
                conn.execute("ROLLBACK")
            raise _store_error(exc, "open", self.path) from exc

    def _load(self) -> None:
        """Rebuild the key indexes and the latest cache: the snapshot plus the rows written after it.

        Rows without a batch number (schemas 1 and 2, or a bulk load past the store) are adopted: indexed,
        folded into latest and numbered 0, with a new snapshot, in one transaction.
        """
        conn = self._conn
        keys, event_keys, latest, codes = KeyIndex(), KeyIndex(), LatestCache(), SeriesCodes()
        try:
            conn.execute(f"SET memory_limit = '{max(self.memory_limit_mb, LOAD_MEMORY_LIMIT_MB)}MB'")
            conn.execute("BEGIN")
            [(snapshot_wb,)] = conn.execute("SELECT value FROM meta WHERE name = 'snapshot_wb'").fetchall()
            codes.load(conn)
            for index, ranges in ((keys, "seq_ranges"), (event_keys, "event_ranges")):
                for device, stream, lo, hi in conn.execute(f"SELECT device, stream, lo, hi FROM {ranges}").fetchall():
                    index.add(device, stream, lo, hi)
            latest.update(map(_observation, conn.execute(
                f"SELECT {', '.join(LATEST_COLUMNS)} FROM latest ORDER BY device").fetchall()))
            tail = " WHERE wb > ?"
            for index, table in ((keys, "observations"), (event_keys, "events")):
                for device, stream, lo, hi in conn.execute(ISLANDS.format(table=table, where=tail),
                                                           [snapshot_wb]).fetchall():
                    index.add(device, stream, lo, hi)
            latest.update(map(_observation, conn.execute(NEWEST.format(where=tail), [snapshot_wb]).fetchall()))
            [(top,)] = conn.execute("SELECT max(wb) FROM (SELECT wb FROM samples WHERE wb > $wb UNION ALL "
                                    "SELECT wb FROM events WHERE wb > $wb)", {"wb": snapshot_wb}).fetchall()
            self._next_wb = (top if top is not None else snapshot_wb) + 1
            adopted = 0
            adopt = " WHERE wb IS NULL"
            for index, table in ((keys, "observations"), (event_keys, "events")):
                rows_table = "samples" if table == "observations" else table  # the view cannot be updated
                [(unnumbered,)] = conn.execute(f"SELECT count(*) FROM {rows_table}{adopt}").fetchall()
                if not unnumbered:
                    continue
                for device, stream, lo, hi in conn.execute(ISLANDS.format(table=table, where=adopt)).fetchall():
                    index.add(device, stream, lo, hi)
                if table == "observations":
                    latest.update(map(_observation, conn.execute(NEWEST.format(where=adopt)).fetchall()))
                conn.execute(f"UPDATE {rows_table} SET wb = 0{adopt}").fetchall()
                log.info("store %s: adopted %d %s without a batch number", self.path, unnumbered, table)
                adopted += unnumbered
            if adopted or top is not None:  # so that the next open reads no rows back
                self._write_snapshot(conn, keys, event_keys, latest, self._next_wb - 1)
            conn.execute("COMMIT")
        except duckdb.Error as exc:
            with suppress(duckdb.Error):
                conn.execute("ROLLBACK")
            raise _store_error(exc, "open", self.path) from exc
        finally:
            self._bound_memory()
        self._keys, self._event_keys, self._latest, self._codes = keys, event_keys, latest, codes
        self._unsnapshotted = 0
        self._snapshot_at = time.monotonic()
        self._stale = False

    def _bound_memory(self) -> None:
        """Set the buffer pool back to ``memory_limit_mb`` (DuckDB evicts down to it); retried at the next snapshot."""
        try:
            self._conn.execute(f"SET memory_limit = '{self.memory_limit_mb}MB'")
        except duckdb.Error as exc:  # blocks still pinned by a running query: the pool stays larger for now
            log.warning("store %s: could not set the buffer pool back to %d MB (retried): %s", self.path,
                        self.memory_limit_mb, exc)
            self._unbounded = True
        else:
            self._unbounded = False

    @staticmethod
    def _write_snapshot(conn: duckdb.DuckDBPyConnection, keys: KeyIndex, event_keys: KeyIndex, latest: LatestCache,
                        wb: int) -> None:
        """Rewrite ``seq_ranges``, ``event_ranges`` and ``latest`` as of batch ``wb``, in the caller's transaction."""
        for index, table in ((keys, "seq_ranges"), (event_keys, "event_ranges")):
            conn.execute(f"DELETE FROM {table}").fetchall()
            rows = list(index.rows())
            if not rows:
                continue
            devices, streams, los, his = zip(*rows, strict=True)
            conn.register("snapshot_ranges", {"device": np.array(devices, dtype=object),
                                              "stream": np.array(streams, dtype=object),
                                              "lo": np.array(los, dtype=np.int64), "hi": np.array(his, dtype=np.int64)})
            try:
                conn.execute(f"INSERT INTO {table} SELECT device, stream, lo, hi FROM snapshot_ranges").fetchall()
            finally:
                conn.unregister("snapshot_ranges")
        conn.execute("DELETE FROM latest").fetchall()
        newest = latest.snapshot()
        if newest:
            conn.register("snapshot_latest", _latest_columns(newest))
            try:
                conn.execute(f"INSERT INTO latest ({', '.join(LATEST_COLUMNS)}) SELECT {', '.join(LATEST_COLUMNS)} "
                             "FROM snapshot_latest").fetchall()
            finally:
                conn.unregister("snapshot_latest")
        conn.execute("UPDATE meta SET value = ? WHERE name = 'snapshot_wb'", [wb]).fetchall()

    def _snapshot(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Write the snapshot in the caller's transaction (writer lock held); call :meth:`_snapshotted` after commit."""
        self._write_snapshot(conn, self._keys, self._event_keys, self._latest, self._next_wb - 1)

    def _snapshotted(self) -> None:
        """The snapshot is committed: the next one is due after ``snapshot_rows`` or ``snapshot_s``."""
        self._unsnapshotted = 0
        self._snapshot_at = time.monotonic()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.path} is closed")

    @contextmanager
    def _reading(self, what: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """Borrow a reader cursor for the calling thread; translate errors."""
        self._check_open()
        try:
            cursor = self._pool.get_nowait()
        except queue.Empty:
            with self._cursor_lock:
                self._check_open()
                try:
                    cursor = self._factory.cursor()
                    cursor.execute(_QUIET).fetchall()
                except duckdb.Error as exc:
                    raise _store_error(exc, what, self.path) from exc
                self._cursors.append(cursor)
        try:
            yield cursor
        except duckdb.ConnectionException as exc:
            if self._closed:
                raise StoreClosed(f"store {self.path} closed during {what}") from exc
            raise _store_error(exc, what, self.path) from exc
        except duckdb.Error as exc:
            raise _store_error(exc, what, self.path) from exc
        finally:
            if not self._closed:
                self._pool.put(cursor)

    @contextmanager
    def _writing(self, what: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold the writer for one transaction: commit on success, roll back on any failure.

        A failed ``COMMIT`` leaves it unknown whether the batch is in the file, so the key index and
        the latest cache are reloaded from the file before the next write.
        """
        with self._write_lock:
            self._check_open()
            conn = self._conn
            try:
                if self._stale:
                    self._load()
                conn.execute("BEGIN")
                try:
                    yield conn
                except BaseException:
                    with suppress(duckdb.Error):
                        conn.execute("ROLLBACK")
                    raise
                try:
                    conn.execute("COMMIT")
                except BaseException:
                    self._stale = True
                    with suppress(duckdb.Error):
                        conn.execute("ROLLBACK")
                    raise
            except duckdb.Error as exc:
                raise _store_error(exc, what, self.path) from exc
            finally:
                committed, self._on_commit = self._on_commit, []
            if not self._stale:
                for action in committed:
                    action()
                if self._unsnapshotted >= self.snapshot_rows or (
                        self._unsnapshotted and time.monotonic() - self._snapshot_at >= self.snapshot_s):
                    self._periodic_snapshot()

    def _periodic_snapshot(self) -> None:
        """Write the snapshot in a transaction of its own (writer lock held); a failure is logged, not raised."""
        conn = self._conn
        if self._unbounded:
            self._bound_memory()
        try:
            conn.execute("BEGIN")
            try:
                self._snapshot(conn)
                conn.execute("COMMIT")
                self._snapshotted()
            except BaseException:
                with suppress(duckdb.Error):
                    conn.execute("ROLLBACK")
                raise
        except duckdb.Error as exc:
            log.warning("store %s: snapshot of the key index and latest failed (kept in memory, retried): %s",
                        self.path, exc)
            self._snapshot_at = time.monotonic()  # not at every write while the file misbehaves

    def write(self, items: Sequence[Record], *, checked: bool = False) -> WriteResult:
        """Store a batch in one transaction; a key already stored counts as a duplicate, not stored twice.

        ``checked=True``: the caller has run ``check_record`` on every item, so it is not run again.
        """
        obs: list[Observation] = []
        evt: dict[Key, tuple[object, ...]] = {}
        for item in items:
            if not checked:
                check_record(item)
            if isinstance(item, Observation):
                obs.append(item)
                continue
            key = key_of(item)
            if key not in evt:
                evt[key] = (*key, event_kind(item), item.ts, item_bed(item), encode_event(item))
        if not items:
            self._check_open()
            return WriteResult(stored=0, duplicates=0)
        evt_cols = _event_columns(list(evt.values())) if evt else None  # built before the writer lock is taken
        with self._writing("write") as conn:
            pieces: list[Piece] = []
            evt_pieces: list[Piece] = []
            new_series: list[SeriesKey] = []
            n_evt = 0
            if obs:
                sids, obs_streams, new_series = self._codes.encode(conn, obs)
                keep, pieces, _ = self._append(conn, self._keys, numeric_columns(obs, sids), obs_streams,
                                               self._codes.stream_keys, "incoming_obs", INSERT_OBS)
                if keep is not None:
                    obs = [o for o, new in zip(obs, keep.tolist(), strict=True) if new]
            if evt_cols is not None:  # already one row per key, the first in the batch
                evt_streams, evt_keys = KeyIndex.stream_ids(evt_cols["device"].tolist(), evt_cols["stream"].tolist())
                _, evt_pieces, n_evt = self._append(conn, self._event_keys, evt_cols, evt_streams, evt_keys,
                                                    "incoming_evt", INSERT_EVT)
            stored = len(obs) + n_evt
            if new_series:  # their codes are in the file once this commits, whether or not a row was stored
                self._on_commit.append(partial(self._codes.remember, new_series))
            if stored:
                self._on_commit.append(partial(self._committed, pieces, evt_pieces, obs, n_evt))
        return WriteResult(stored=stored, duplicates=len(items) - stored)

    def _append(self, conn: duckdb.DuckDBPyConnection, index: KeyIndex, columns: dict[str, np.ndarray],
                streams: np.ndarray, keys: Sequence[StreamKey], view: str,
                insert: str) -> tuple[np.ndarray | None, list[Piece], int]:
        """Append the rows whose keys ``index`` does not hold, numbered with this batch (writer lock held).

        ``streams`` is each row's stream as an index into ``keys``. Returns the mask of the rows kept (None:
        all), the pieces to apply after commit, and how many rows were appended. A replay, or a key twice in
        the batch: the first of each new key is stored.
        """
        keep, pieces = index.filter(streams, keys, columns["seq"])
        if keep is not None:
            columns = {name: column[keep] for name, column in columns.items()}
        appended = len(columns["seq"])
        if appended:
            conn.register(view, columns)
            try:
                conn.execute(insert, {"wb": self._next_wb}).fetchall()
            finally:
                conn.unregister(view)
        return keep, pieces, appended

    def _committed(self, pieces: list[Piece], evt_pieces: list[Piece], obs: list[Observation], n_evt: int) -> None:
        """After a batch's commit (writer lock held): record its keys, its newest values and its number."""
        self._keys.apply(pieces)
        self._event_keys.apply(evt_pieces)
        self._latest.update(obs)
        self._next_wb += 1
        self._unsnapshotted += len(obs) + n_evt

    def latest(
        self, *, bed: str | None = None, device: str | None = None, since_ms: int | None = None
    ) -> list[Latest]:
        """The newest observation per metric for a bed or device (at or after ``since_ms``), from memory."""
        check_target(bed, device)
        self._check_open()
        return self._latest.latest(bed=bed, device=device, since_ms=since_ms)

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
        where, params = _where(bed, device)
        where += " AND metric = ? AND ts >= ? AND ts < ?"
        params += [metric, start_ms, end_ms]
        with self._reading("history") as cursor:
            if step_ms is None:
                sql = (
                    f"SELECT ts, value FROM observations WHERE {where} "
                    "ORDER BY ts, device, stream, seq LIMIT ?"
                )
                rows = cursor.execute(sql, [*params, limit]).fetchall()
                return [HistoryPoint(ts, value, value, value, 1) for ts, value in rows]
            sql = (
                "SELECT ts - ts % ? AS bucket, avg(value), min(value), max(value), count(*) "
                f"FROM observations WHERE {where} GROUP BY bucket ORDER BY bucket LIMIT ?"
            )
            rolled: list[tuple[int, float, float, float, int]] = []
            if step_ms % MINUTE_MS == 0:
                rolled = cursor.execute(
                    "SELECT minute - minute % ? AS bucket, sum(v_sum), min(v_min), max(v_max), sum(n) FROM rollup_1m "
                    f"WHERE {where.replace('ts >= ? AND ts < ?', 'minute >= ? AND minute < ?')} GROUP BY bucket",
                    [step_ms, *params]).fetchall()
            if rolled:
                raw = cursor.execute(
                    "SELECT ts - ts % ? AS bucket, sum(value), min(value), max(value), count(*) "
                    f"FROM observations WHERE {where} GROUP BY bucket", [step_ms, *params]).fetchall()
                return merge_buckets(raw, rolled, limit)
            rows = cursor.execute(sql, [step_ms, *params, limit]).fetchall()
        return [HistoryPoint(*row) for row in rows]

    def maintain(self, now_ms: int) -> MaintenanceResult:
        """Roll up raw observations past raw retention into minutes, then delete everything past its retention."""
        cutoff = raw_cutoff(now_ms, self.retention)
        with self._writing("maintain") as conn:
            rolled = int(conn.execute("SELECT count(*) FROM samples WHERE ts < ?", [cutoff]).fetchall()[0][0])
            deleted = 0
            if rolled:
                conn.execute(ROLL_UP, [cutoff]).fetchall()
                deleted += int(conn.execute("DELETE FROM samples WHERE ts < ?", [cutoff]).fetchall()[0][0])
            deleted += int(conn.execute("DELETE FROM rollup_1m WHERE minute < ?",
                                        [now_ms - self.retention.rollup_ms]).fetchall()[0][0])
            old_events = now_ms - self.retention.events_ms
            deleted += int(conn.execute("DELETE FROM events WHERE ts < ? AND kind <> 'dev'",
                                        [old_events]).fetchall()[0][0])
            deleted += int(conn.execute("DELETE FROM quarantine WHERE ts < ?", [old_events]).fetchall()[0][0])
            # The index keeps the deleted rows' keys: the snapshot must hold them before the rows go.
            self._snapshot(conn)
            self._on_commit.append(self._snapshotted)
        if deleted:
            log.info("store %s: rolled up %d raw observations; %d rows past retention deleted", self.path, rolled,
                     deleted)
        return MaintenanceResult(rolled_up=rolled, deleted=deleted)

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
        with self._reading("events") as cursor:
            bodies = [row[0] for row in cursor.execute(sql, params).fetchall()]
        return [decode_event(bytes(body)) for body in bodies]

    def quarantine(self, *, source: str, reason: str, raw: bytes, ts: int) -> None:
        """Keep refused input with its reason."""
        with self._writing("quarantine") as conn:
            conn.execute(
                "INSERT INTO quarantine (ts, source, reason, raw) VALUES (?, ?, ?, ?)",
                [ts, source, reason, bytes(raw)],
            ).fetchall()

    def quarantine_many(self, rows: Sequence[Quarantined]) -> None:
        """Keep many refused inputs in one transaction."""
        if not rows:
            return
        with self._writing("quarantine") as conn:
            conn.executemany("INSERT INTO quarantine (ts, source, reason, raw) VALUES (?, ?, ?, ?)",
                             [[r.ts, r.source, r.reason, bytes(r.raw)] for r in rows])

    def quarantined(self, limit: int = 100) -> list[Quarantined]:
        """The most recently quarantined inputs, newest first."""
        with self._reading("quarantined") as cursor:
            rows = cursor.execute(
                "SELECT ts, source, reason, raw FROM quarantine ORDER BY id DESC LIMIT ?", [limit]
            ).fetchall()
        return [
            Quarantined(ts=ts, source=source, reason=reason, raw=bytes(raw))
            for ts, source, reason, raw in rows
        ]

    def quarantine_count(self) -> int:
        """How many inputs are in quarantine."""
        with self._reading("quarantine_count") as cursor:
            return int(cursor.execute("SELECT count(*) FROM quarantine").fetchall()[0][0])

    def stats(self) -> StoreStats:
        """Row counts and the bytes of the file with its WAL."""
        with self._reading("stats") as cursor:
            observations, events, quarantined = cursor.execute(
                "SELECT (SELECT count(*) FROM samples), (SELECT count(*) FROM events), "
                "(SELECT count(*) FROM quarantine)"
            ).fetchall()[0]
        size = 0
        for suffix in ("", ".wal"):
            with suppress(FileNotFoundError):
                size += os.stat(f"{self.path}{suffix}").st_size
        return StoreStats(
            observations=int(observations), events=int(events), quarantined=int(quarantined), file_bytes=size
        )

    def close(self) -> None:
        """Close every cursor and the connection (checkpointing the WAL into the file); later calls raise."""
        with self._write_lock, self._cursor_lock:
            if self._closed:
                return
            if not self._stale and self._unsnapshotted:
                self._periodic_snapshot()  # so the next open reads no rows back
            self._closed = True
            for cursor in [*self._cursors, self._factory]:
                with suppress(duckdb.Error):
                    cursor.close()
            self._cursors.clear()
            try:
                self._conn.close()
            except duckdb.Error as exc:
                log.warning("closing %s failed: %s", self.path, exc)
        log.info("closed store %s", self.path)


def _where(bed: str | None, device: str | None) -> tuple[str, list[object]]:
    """The bed/device filter of a query and its parameters."""
    clauses: list[str] = []
    params: list[object] = []
    if bed is not None:
        clauses.append("bed = ?")
        params.append(bed)
    if device is not None:
        clauses.append("device = ?")
        params.append(device)
    return " AND ".join(clauses), params
