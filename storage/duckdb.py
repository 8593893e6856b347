"""The embedded store: one DuckDB file, chosen over SQLite by measurement (see docs/storage.md).

Layout: observations are appended in arrival order, so DuckDB's per-row-group min/max of ``ts``
prunes every time-range scan, and columns compress (about 20 bytes a row with the key index). The
primary key ``(device, stream, seq)`` with ``INSERT OR IGNORE`` makes writes idempotent. A small
``latest`` table, one row per (device, metric, bed), is kept in the same transaction as the insert so
``latest()`` never scans the observations.

Threads: one writer connection behind a lock, and a pool of reader cursors (DuckDB connections to the
same database), one per thread that is reading at that moment. Readers see the last committed state
(MVCC) and are not blocked by the writer. DuckDB locks the file for one process: a second process
cannot open it, not even read-only, while the service runs.

Durability: DuckDB syncs its WAL at every commit, so a stored batch survives a crash of the process
or the machine; the WAL is checkpointed into the file automatically and at ``close()``.

Retention: :meth:`DuckDbStore.maintain` rolls raw observations past raw retention into the
``rollup_1m`` table and deletes them, in one transaction (rules in :mod:`storage.base`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np
from msgspec.structs import astuple

from devices.contract import Item, Observation, check_item

from .base import (
    MINUTE_MS,
    HistoryPoint,
    Key,
    Latest,
    MaintenanceResult,
    Quarantined,
    Retention,
    StoreClosed,
    StoreCorrupt,
    StoredEvent,
    StoreError,
    StoreStats,
    StoreUnavailable,
    WriteResult,
    check_range,
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

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1

# Observation columns in the contract's field order, so a row is ``astuple(obs)``.
OBS_COLUMNS: Final = Observation.__struct_fields__
_OBS_TEXT: Final = frozenset({"device", "stream", "metric", "unit", "bed", "containment"})
_OBS_NULLABLE_INT: Final = frozenset({"device_ts"})
_OBS_FLOAT: Final = frozenset({"value"})

SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS observations (
        device VARCHAR NOT NULL,
        stream VARCHAR NOT NULL,
        seq BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        metric VARCHAR NOT NULL,
        code INTEGER NOT NULL,
        value DOUBLE NOT NULL,
        unit VARCHAR NOT NULL,
        bed VARCHAR,
        device_ts BIGINT,
        flags INTEGER NOT NULL,
        containment VARCHAR,
        PRIMARY KEY (device, stream, seq))""",
    # Files written before the contract carried containment get the column (NULL for old rows).
    "ALTER TABLE observations ADD COLUMN IF NOT EXISTS containment VARCHAR",
    # The newest stored observation per (device, metric, bed); bed_key is '' for no bed and 'b:' + bed
    # otherwise, because a key column cannot be NULL.
    """CREATE TABLE IF NOT EXISTS latest (
        device VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        bed_key VARCHAR NOT NULL,
        bed VARCHAR,
        stream VARCHAR NOT NULL,
        seq BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        code INTEGER NOT NULL,
        value DOUBLE NOT NULL,
        unit VARCHAR NOT NULL,
        flags INTEGER NOT NULL,
        PRIMARY KEY (device, metric, bed_key))""",
    """CREATE TABLE IF NOT EXISTS events (
        device VARCHAR NOT NULL,
        stream VARCHAR NOT NULL,
        seq BIGINT NOT NULL,
        kind VARCHAR NOT NULL,
        ts BIGINT NOT NULL,
        bed VARCHAR,
        body BLOB NOT NULL,
        PRIMARY KEY (device, stream, seq))""",
    # 1-minute rollups of observations past raw retention (storage.base explains the rules).
    """CREATE TABLE IF NOT EXISTS rollup_1m (
        device VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        bed_key VARCHAR NOT NULL,
        bed VARCHAR,
        minute BIGINT NOT NULL,
        v_sum DOUBLE NOT NULL,
        v_min DOUBLE NOT NULL,
        v_max DOUBLE NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (device, metric, bed_key, minute))""",
    "CREATE SEQUENCE IF NOT EXISTS quarantine_id",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id BIGINT NOT NULL DEFAULT nextval('quarantine_id'),
        ts BIGINT NOT NULL,
        source VARCHAR NOT NULL,
        reason VARCHAR NOT NULL,
        raw BLOB NOT NULL)""",
)

_INSERT_OBS: Final = (
    f"INSERT OR IGNORE INTO observations ({', '.join(OBS_COLUMNS)}) SELECT {', '.join(OBS_COLUMNS)} "
    "FROM incoming_obs"
)
# The slow path, for a batch holding a key already stored: only the rows really inserted update latest.
_INSERT_OBS_RETURNING: Final = _INSERT_OBS + " RETURNING device, stream, seq, ts, metric, code, value, unit, bed, flags"
_LATEST_COLUMNS: Final = (
    "device",
    "metric",
    "bed_key",
    "bed",
    "stream",
    "seq",
    "ts",
    "code",
    "value",
    "unit",
    "flags",
)
_LATEST_DTYPES: Final[dict[str, type]] = {
    "seq": np.int64,
    "ts": np.int64,
    "code": np.int64,
    "value": np.float64,
    "flags": np.int64,
}
# Keep the newer row by (ts, device, stream, seq); device is part of the key, so (ts, stream, seq) decides.
_LATEST_CONFLICT: Final = (
    "ON CONFLICT (device, metric, bed_key) DO UPDATE SET stream = excluded.stream, seq = excluded.seq, "
    "ts = excluded.ts, code = excluded.code, value = excluded.value, unit = excluded.unit, "
    "flags = excluded.flags "
    "WHERE excluded.ts > latest.ts OR (excluded.ts = latest.ts AND (excluded.stream > latest.stream "
    "OR (excluded.stream = latest.stream AND excluded.seq > latest.seq)))"
)
UPSERT_LATEST: Final = (
    f"INSERT INTO latest ({', '.join(_LATEST_COLUMNS)}) "
    f"SELECT {', '.join(_LATEST_COLUMNS)} FROM incoming_latest {_LATEST_CONFLICT}"
)
# The fast path: every incoming row was new, so the newest of each (device, metric, bed) comes from them, in SQL.
_LATEST_FROM_INCOMING: Final = (
    f"INSERT INTO latest ({', '.join(_LATEST_COLUMNS)}) "
    f"SELECT {', '.join(_LATEST_COLUMNS)} FROM (SELECT *, CASE WHEN bed IS NULL THEN '' ELSE 'b:' || bed END "
    "AS bed_key FROM incoming_obs) "
    "QUALIFY row_number() OVER "
    f"(PARTITION BY device, metric, bed_key ORDER BY ts DESC, stream DESC, seq DESC) = 1 {_LATEST_CONFLICT}"
)
# Recompute the latest table from the observations (after a bulk load; retention keeps it valid anyway).
REBUILD_LATEST: Final = (
    "DELETE FROM latest; "
    f"INSERT INTO latest ({', '.join(_LATEST_COLUMNS)}) "
    f"SELECT {', '.join(_LATEST_COLUMNS)} FROM (SELECT *, CASE WHEN bed IS NULL THEN '' ELSE 'b:' || bed END "
    "AS bed_key FROM observations) "
    "QUALIFY row_number() OVER "
    "(PARTITION BY device, metric, bed_key ORDER BY ts DESC, stream DESC, seq DESC) = 1"
)
_INSERT_EVT: Final = (
    "INSERT OR IGNORE INTO events (device, stream, seq, kind, ts, bed, body) "
    "SELECT device, stream, seq, kind, ts, bed, body FROM incoming_evt"
)

# Add raw observations before the cutoff to their minutes' rollups (a minute may already hold late rows).
_ROLL_UP: Final = (
    "INSERT INTO rollup_1m (device, metric, bed_key, bed, minute, v_sum, v_min, v_max, n) "
    "SELECT device, metric, CASE WHEN bed IS NULL THEN '' ELSE 'b:' || bed END AS bed_key, any_value(bed), "
    "ts - ts % 60000 AS minute, sum(value), min(value), max(value), count(*) "
    "FROM observations WHERE ts < ? GROUP BY device, metric, bed_key, minute "
    "ON CONFLICT (device, metric, bed_key, minute) DO UPDATE SET v_sum = rollup_1m.v_sum + excluded.v_sum, "
    "v_min = least(rollup_1m.v_min, excluded.v_min), v_max = greatest(rollup_1m.v_max, excluded.v_max), "
    "n = rollup_1m.n + excluded.n"
)

_QUIET: Final = "SET enable_progress_bar = false"  # a service prints no progress bars of long queries

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


def obs_columns(rows: Sequence[tuple[object, ...]]) -> dict[str, np.ndarray]:
    """Observation rows (``astuple`` order) as numpy columns that DuckDB scans without copying rows."""
    columns: dict[str, np.ndarray] = {}
    for name, values in zip(OBS_COLUMNS, zip(*rows, strict=True), strict=True):
        if name in _OBS_TEXT or name in _OBS_NULLABLE_INT:
            columns[name] = np.array(values, dtype=object)
        elif name in _OBS_FLOAT:
            columns[name] = np.array(values, dtype=np.float64)
        else:
            columns[name] = np.array(values, dtype=np.int64)
    return columns


def _columns(build: Callable[[list[tuple[object, ...]]], dict[str, np.ndarray]],
             rows: list[tuple[object, ...]]) -> dict[str, np.ndarray]:
    """Build numpy columns; a value numpy cannot hold (an int past 64 bits ...) is a non-retryable StoreError."""
    try:
        return build(rows)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"a batch of {len(rows)} rows cannot be stored: {exc}", retryable=False) from exc


_EVT_COLUMNS: Final = ("device", "stream", "seq", "kind", "ts", "bed", "body")


def _event_columns(rows: Sequence[tuple[object, ...]]) -> dict[str, np.ndarray]:
    """Event rows ``(device, stream, seq, kind, ts, bed, body)`` as numpy columns."""
    return {
        name: np.array(values, dtype=np.int64 if name in ("seq", "ts") else object)
        for name, values in zip(_EVT_COLUMNS, zip(*rows, strict=True), strict=True)
    }


class _KeyAlreadyStored(Exception):
    """Internal: the fast path met a key already stored; the transaction is rolled back and redone slowly."""


def _newest(rows: list[tuple[Any, ...]]) -> dict[str, np.ndarray]:
    """Of newly stored rows (in ``_INSERT_OBS`` RETURNING order), the newest per (device, metric, bed)."""
    best: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    for row in rows:
        device, stream, seq, ts, metric, _code, _value, _unit, bed, _flags = row
        key = (device, metric, bed_key(bed))
        current = best.get(key)
        if current is None or (ts, stream, seq) > (current[3], current[1], current[2]):
            best[key] = row
    latest_rows = [
        (device, metric, key, bed, stream, seq, ts, code, value, unit, flags)
        for (device, metric, key), (_, stream, seq, ts, _, code, value, unit, bed, flags) in best.items()
    ]
    return {
        name: np.array(values, dtype=_LATEST_DTYPES.get(name, object))
        for name, values in zip(_LATEST_COLUMNS, zip(*latest_rows, strict=True), strict=True)
    }


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

    def __init__(self, path: str | os.PathLike[str], retention: Retention | None = None) -> None:
        """Open (creating the directory, file and tables if needed) the store at ``path``."""
        if str(path) in ("", ":memory:"):
            raise ValueError("DuckDbStore needs a file path; use MemoryStore for an in-memory store")
        self.path = Path(path)
        self.retention = retention or Retention()
        self._closed = False
        self._write_lock = threading.Lock()
        self._pool: queue.SimpleQueue[duckdb.DuckDBPyConnection] = queue.SimpleQueue()
        self._cursor_lock = threading.Lock()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of {self.path}: {exc}") from exc
        try:
            self._conn = duckdb.connect(str(self.path))
            self._conn.execute(_QUIET).fetchall()
        except duckdb.Error as exc:
            raise _store_error(exc, "open", self.path) from exc
        try:
            self._setup()
            self._factory = (
                self._conn.cursor()
            )  # reader cursors are made from this one, never from the writer
        except BaseException:
            self._conn.close()
            raise
        log.info("opened store %s", self.path)

    def _setup(self) -> None:
        """Check the schema version and create what is missing."""
        conn = self._conn
        try:
            conn.execute("BEGIN")
            for statement in SCHEMA:
                conn.execute(statement)
            rows = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchall()
            if not rows:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
            elif rows[0][0] != SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                raise StoreCorrupt(
                    f"{self.path}: unknown schema version {rows[0][0]} (expected {SCHEMA_VERSION})"
                )
            conn.execute("COMMIT")
        except duckdb.Error as exc:
            with suppress(duckdb.Error):
                conn.execute("ROLLBACK")
            raise _store_error(exc, "open", self.path) from exc

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
        """Hold the writer for one transaction: commit on success, roll back on any failure."""
        with self._write_lock:
            self._check_open()
            conn = self._conn
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    with suppress(duckdb.Error):
                        conn.execute("ROLLBACK")
                    raise
            except duckdb.Error as exc:
                raise _store_error(exc, what, self.path) from exc

    def write(self, items: Sequence[Item], *, checked: bool = False) -> WriteResult:
        """Store a batch in one transaction; a key already stored counts as a duplicate, not stored twice.

        ``checked=True``: the caller has run ``check_item`` on every item, so it is not run again.
        """
        obs: dict[Key, tuple[object, ...]] = {}
        evt: dict[Key, tuple[object, ...]] = {}
        for item in items:
            if not checked:
                check_item(item)
            if isinstance(item, Observation):
                key = (item.device, item.stream, item.seq)
                if key not in obs:  # the first of a key within the batch wins, as across batches
                    obs[key] = astuple(item)
                continue
            key = key_of(item)
            if key not in evt:
                evt[key] = (*key, event_kind(item), item.ts, item_bed(item), encode_event(item))
        if not items:
            self._check_open()
            return WriteResult(stored=0, duplicates=0)
        obs_cols = _columns(obs_columns, list(obs.values())) if obs else None
        evt_cols = _columns(_event_columns, list(evt.values())) if evt else None
        try:
            with self._writing("write") as conn:
                stored = self._insert(conn, obs_cols, len(obs), evt_cols, fast=True)
        except _KeyAlreadyStored:
            # Rolled back: a replay (rare: a gateway resending after a lost commit) takes the slow path.
            with self._writing("write") as conn:
                stored = self._insert(conn, obs_cols, len(obs), evt_cols, fast=False)
        return WriteResult(stored=stored, duplicates=len(items) - stored)

    @staticmethod
    def _insert(conn: duckdb.DuckDBPyConnection, obs: dict[str, np.ndarray] | None, n_obs: int,
                evt: dict[str, np.ndarray] | None, *, fast: bool) -> int:
        """Insert a batch's columns in the open transaction; return the rows stored.

        Fast: count the rows inserted and, when all were new, update ``latest`` from the incoming rows
        in SQL; otherwise raise :class:`_KeyAlreadyStored` (the caller rolls back and retries slow).
        Slow: ``RETURNING`` the rows really inserted and update ``latest`` from those alone.
        """
        stored = 0
        if obs is not None:
            conn.register("incoming_obs", obs)
            try:
                if fast:
                    stored = int(conn.execute(_INSERT_OBS).fetchall()[0][0])
                    if stored != n_obs:
                        raise _KeyAlreadyStored
                    conn.execute(_LATEST_FROM_INCOMING).fetchall()
                else:
                    fresh = conn.execute(_INSERT_OBS_RETURNING).fetchall()
                    stored = len(fresh)
                    if fresh:
                        conn.register("incoming_latest", _newest(fresh))
                        try:
                            conn.execute(UPSERT_LATEST).fetchall()
                        finally:
                            conn.unregister("incoming_latest")
            finally:
                conn.unregister("incoming_obs")
        if evt is not None:
            conn.register("incoming_evt", evt)
            try:
                stored += int(conn.execute(_INSERT_EVT).fetchall()[0][0])
            finally:
                conn.unregister("incoming_evt")
        return stored

    def latest(
        self, *, bed: str | None = None, device: str | None = None, since_ms: int | None = None
    ) -> list[Latest]:
        """The newest observation per metric for a bed or device (at or after ``since_ms``)."""
        check_target(bed, device)
        where, params = _where(bed, device)
        if since_ms is not None:
            where += " AND ts >= ?"
            params.append(since_ms)
        sql = (
            f"SELECT metric, code, value, unit, ts, device, flags, bed FROM latest WHERE {where} "
            "QUALIFY row_number() OVER "
            "(PARTITION BY metric ORDER BY ts DESC, device DESC, stream DESC, seq DESC) = 1 "
            "ORDER BY metric"
        )
        with self._reading("latest") as cursor:
            rows = cursor.execute(sql, params).fetchall()
        return [Latest(*row) for row in rows]

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
            rolled = int(conn.execute("SELECT count(*) FROM observations WHERE ts < ?", [cutoff]).fetchall()[0][0])
            deleted = 0
            if rolled:
                conn.execute(_ROLL_UP, [cutoff]).fetchall()
                deleted += int(conn.execute("DELETE FROM observations WHERE ts < ?", [cutoff]).fetchall()[0][0])
            deleted += int(conn.execute("DELETE FROM rollup_1m WHERE minute < ?",
                                        [now_ms - self.retention.rollup_ms]).fetchall()[0][0])
            old_events = now_ms - self.retention.events_ms
            deleted += int(conn.execute("DELETE FROM events WHERE ts < ? AND kind <> 'dev'",
                                        [old_events]).fetchall()[0][0])
            deleted += int(conn.execute("DELETE FROM quarantine WHERE ts < ?", [old_events]).fetchall()[0][0])
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
        """Stored non-observation items in ``[start_ms, end_ms)`` (of one ``kind`` tag: evt, tag, waste, dev)."""
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
                "SELECT (SELECT count(*) FROM observations), (SELECT count(*) FROM events), "
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
