"""Measure the two embedded candidates, SQLite and DuckDB, on a simulated ward; both are full stores.

``run()`` loads a ward (100 beds x 1 Hz x 1 metric x 24 h; ``quick``: 20 beds x 2 h) into each
backend by its bulk path (SQLite: rows in key order, indexes rebuilt after; DuckDB: numpy columns,
then the latest table rebuilt), then measures through the store API: the per-bed 1-minute-mean query
over the whole ward, a 1-hour chart query with and without a concurrent writer thread, ``latest``
per bed, appends of 100/1,000/5,000-observation batches on top of the ward, and the file size. A
second scenario writes at ward rate with 10 metrics per bed (one 1-second batch of every series per
commit, on a fresh store) and reports the time per commit and the bytes the process wrote to disk
per stored row (Linux ``/proc/self/io``, including checkpoints up to ``close()``).

Same-run baselines give every figure a ratio: rates against an unindexed SQLite ``:memory:`` insert
of pre-built rows, query times against numpy computing the same means from arrays already in RAM,
sizes against the raw ``ts`` + ``value`` bytes (16 per row).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import duckdb
import numpy as np
from msgspec.structs import astuple

from devices.contract import Item, Observation

from .base import HistoryPoint, StoreError, TimeSeriesStore
from .duckdb import DuckDbStore
from .duckdb_schema import OBS_COLUMNS, REBUILD_LATEST, insert_rows
from .sqlite import SqliteStore

log = logging.getLogger(__name__)

METRIC: Final = "MDC_PULS_OXIM_SAT_O2"
CODE: Final = 150456
UNIT: Final = "%"
STREAM: Final = "numerics"
T0: Final = 1_699_999_980_000  # first second of the ward (2023-11-14 22:13:00 UTC, minute-aligned), ms
MINUTE: Final = 60_000


@dataclass(frozen=True)
class Ward:
    """A simulated ward: ``beds`` monitors, one metric at 1 Hz for ``seconds``."""

    beds: int
    seconds: int

    @property
    def rows(self) -> int:
        """Observations in the ward."""
        return self.beds * self.seconds

    def device(self, bed: int) -> str:
        """The monitor at a bed."""
        return f"mon{bed:03d}"

    def bed(self, bed: int) -> str:
        """The bed id."""
        return f"bed{bed:03d}"


def _files_mb(path: Path) -> float:
    """Size in MB of a database file with its WAL/shared-memory companions."""
    total = 0
    for suffix in ("", "-wal", "-shm", ".wal"):
        candidate = Path(f"{path}{suffix}")
        if candidate.exists():
            total += candidate.stat().st_size
    return total / 1e6


def _ward_values(ward: Ward, seed: int = 7) -> np.ndarray:
    """SpO2-like readings, shape ``(beds, seconds)``."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(96.0, 1.5, size=(ward.beds, ward.seconds)), 70.0, 100.0)


def _items(ward: Ward, first_second: int, seconds: int, seed: int) -> list[Item]:
    """Observations for every bed over ``seconds`` seconds, in arrival (time-major) order."""
    rng = np.random.default_rng(seed)
    values = rng.normal(96.0, 1.5, size=(seconds, ward.beds)).tolist()
    items: list[Item] = []
    for offset in range(seconds):
        second = first_second + offset
        for bed in range(ward.beds):
            items.append(
                Observation(
                    device=ward.device(bed),
                    stream=STREAM,
                    seq=second,
                    ts=T0 + second * 1000,
                    metric=METRIC,
                    value=values[offset][bed],
                    unit=UNIT,
                    code=CODE,
                    bed=ward.bed(bed),
                )
            )
    return items


def _load_sqlite(path: Path, ward: Ward, values: np.ndarray) -> float:
    """Bulk-load the ward: rows in key order with the observation indexes dropped, then rebuilt."""
    SqliteStore(path).close()  # the store's own schema
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = 'observations' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        ts = (T0 + np.arange(ward.seconds, dtype=np.int64) * 1000).tolist()
        seqs = list(range(ward.seconds))
        marks = ", ".join("?" * len(OBS_COLUMNS))
        insert = f"INSERT INTO observations ({', '.join(OBS_COLUMNS)}) VALUES ({marks})"
        conn.execute("BEGIN")
        for bed in range(ward.beds):
            device, bed_id = ward.device(bed), ward.bed(bed)
            conn.executemany(
                insert,
                (
                    (device, STREAM, seq, t, METRIC, v, UNIT, CODE, bed_id, None, 0, None)
                    for seq, t, v in zip(seqs, ts, values[bed].tolist(), strict=True)
                ),
            )
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("UPDATE counts SET n = ? WHERE name = 'observations'", (ward.rows,))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise StoreError(f"bulk load of {path}: {exc}") from exc
    finally:
        conn.close()
    return float(ward.rows)


def _load_duckdb(path: Path, ward: Ward, values: np.ndarray) -> float:
    """Bulk-load the ward in arrival order, 10 minutes of the whole ward per insert; then rebuild latest."""
    DuckDbStore(path).close()  # the store's own schema
    devices = np.array([ward.device(b) for b in range(ward.beds)], dtype=object)
    beds = np.array([ward.bed(b) for b in range(ward.beds)], dtype=object)
    chunk = 600
    try:
        conn = duckdb.connect(str(path))
        try:
            conn.execute("SET enable_progress_bar = false")
            for s0 in range(0, ward.seconds, chunk):
                s1 = min(ward.seconds, s0 + chunk)
                n = (s1 - s0) * ward.beds
                seconds = np.repeat(np.arange(s0, s1, dtype=np.int64), ward.beds)
                incoming = {
                    "device": np.tile(devices, s1 - s0),
                    "stream": np.full(n, STREAM, dtype=object),
                    "seq": seconds,
                    "ts": T0 + seconds * 1000,
                    "metric": np.full(n, METRIC, dtype=object),
                    "value": np.ascontiguousarray(values[:, s0:s1].T).ravel(),
                    "unit": np.full(n, UNIT, dtype=object),
                    "code": np.full(n, CODE, dtype=np.int64),
                    "bed": np.tile(beds, s1 - s0),
                    "device_ts": np.full(n, None, dtype=object),
                    "flags": np.zeros(n, dtype=np.int64),
                    "containment": np.full(n, None, dtype=object),
                }
                conn.register("incoming", incoming)
                insert_rows(conn, "incoming")
                conn.unregister("incoming")
            conn.execute(REBUILD_LATEST).fetchall()
            conn.execute("CHECKPOINT").fetchall()
        finally:
            conn.close()
    except duckdb.Error as exc:
        raise StoreError(f"bulk load of {path}: {exc}") from exc
    return float(ward.rows)


def _disk_writes() -> int | None:
    """Bytes this process has caused to be written to storage (Linux), or None where unknown."""
    try:
        with open("/proc/self/io", encoding="ascii") as io:
            for line in io:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


WARD_RATE_METRICS: Final = (
    "MDC_ECG_HEART_RATE",
    "MDC_PULS_OXIM_SAT_O2",
    "MDC_PULS_OXIM_PULS_RATE",
    "MDC_RESP_RATE",
    "MDC_PRESS_BLD_ART_SYS",
    "MDC_PRESS_BLD_ART_DIA",
    "MDC_PRESS_BLD_ART_MEAN",
    "MDC_AWAY_CO2_ET",
    "MDC_TEMP",
    "MDC_BLD_PERF_INDEX",
)


def _second_of_ward(ward: Ward, second: int) -> list[Item]:
    """One second of a ward whose monitors each report every metric of ``WARD_RATE_METRICS``."""
    per = len(WARD_RATE_METRICS)
    return [
        Observation(
            device=ward.device(bed),
            stream=STREAM,
            seq=second * per + m,
            ts=T0 + second * 1000,
            metric=metric,
            value=60.0 + (bed * 7 + m * 3 + second) % 40,
            unit=UNIT,
            code=CODE + m,
            bed=ward.bed(bed),
        )
        for bed in range(ward.beds)
        for m, metric in enumerate(WARD_RATE_METRICS)
    ]


def _ward_rate(
    store: TimeSeriesStore, ward: Ward, prefill_s: int, commits: int
) -> tuple[float, float | None]:
    """Median ms per 1-second commit of every series, and disk bytes written per stored row (to close)."""
    try:
        for s0 in range(0, prefill_s, 10):
            seconds = range(s0, min(prefill_s, s0 + 10))
            store.write([item for second in seconds for item in _second_of_ward(ward, second)])
        batches = [_second_of_ward(ward, prefill_s + i) for i in range(commits)]
        before = _disk_writes()
        timings = [_timed(partial(store.write, batch)) for batch in batches]
    finally:
        store.close()  # counted below: closing checkpoints what the commits left in the WAL
    after = _disk_writes()
    written = None if before is None or after is None else (after - before) / sum(len(b) for b in batches)
    return statistics.median(timings), written


def _timed(fn: Callable[[], object]) -> float:
    """Milliseconds one call takes."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def _median_ms(fn: Callable[[str], object], beds: Sequence[str]) -> float:
    """Median milliseconds of ``fn(bed)`` over the given beds."""
    return statistics.median(_timed(partial(fn, bed)) for bed in beds)


def _append_rate(store: TimeSeriesStore, items: list[Item], batch: int) -> float:
    """Rows per second through ``write`` in batches of ``batch``."""
    start = time.perf_counter()
    stored = 0
    for i in range(0, len(items), batch):
        stored += store.write(items[i : i + batch]).stored
    elapsed = time.perf_counter() - start
    if stored != len(items):
        raise StoreError(f"bench append stored {stored} of {len(items)} rows")
    return len(items) / elapsed


class _Clock:
    """Hands out seconds after the ward, so every appended batch has keys never stored before."""

    def __init__(self, ward: Ward) -> None:
        self.ward = ward
        self.next_second = ward.seconds

    def fresh(self, rows: int, seed: int) -> list[Item]:
        """New observations for every bed, at least ``rows`` of them."""
        seconds = max(1, -(-rows // self.ward.beds))
        first, self.next_second = self.next_second, self.next_second + seconds
        return _items(self.ward, first, seconds, seed)


def _chart(store: TimeSeriesStore, bed: str, end_ms: int) -> list[HistoryPoint]:
    """The dashboard's chart query: 1-minute means of the last hour of one bed."""
    return store.history(bed=bed, metric=METRIC, start_ms=end_ms - 3_600_000, end_ms=end_ms, step_ms=MINUTE)


def _under_write(
    store: TimeSeriesStore, ward: Ward, items: list[Item], batch: int, end_ms: int
) -> tuple[float, float]:
    """Median ms of the 1-hour chart query while a thread writes ``items``; and that thread's rows/s."""
    done = threading.Event()
    errors: list[BaseException] = []
    elapsed: list[float] = []

    def writer() -> None:
        start = time.perf_counter()
        try:
            for i in range(0, len(items), batch):
                store.write(items[i : i + batch])
        except Exception as exc:
            log.exception("bench writer thread failed")
            errors.append(exc)
        finally:
            elapsed.append(time.perf_counter() - start)
            done.set()

    thread = threading.Thread(target=writer, name="bench-writer")
    thread.start()
    timings: list[float] = []
    bed = 0
    while not done.is_set() or not timings:
        timings.append(_timed(partial(_chart, store, ward.bed(bed % ward.beds), end_ms)))
        bed += 7
    thread.join()
    if errors:
        raise StoreError(f"bench writer failed: {errors[0]!r}") from errors[0]
    return statistics.median(timings), len(items) / elapsed[0]


def _baselines(ward: Ward, values: np.ndarray, rows: list[Item]) -> dict[str, float]:
    """Same-run references: unindexed in-memory SQLite inserts, numpy bucket means, raw column bytes."""
    tuples = [astuple(item) for item in rows]
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(f"CREATE TABLE t ({', '.join(OBS_COLUMNS)})")
    insert = f"INSERT INTO t VALUES ({', '.join('?' * len(OBS_COLUMNS))})"
    start = time.perf_counter()
    for i in range(0, len(tuples), 5000):
        conn.execute("BEGIN")
        conn.executemany(insert, tuples[i : i + 5000])
        conn.execute("COMMIT")
    append_rate = len(tuples) / (time.perf_counter() - start)
    conn.close()

    ts = T0 + np.arange(ward.seconds, dtype=np.int64) * 1000

    def means(bed: int) -> None:
        buckets = ts - ts % MINUTE
        starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
        series = values[bed]
        counts = np.diff(np.r_[starts, series.size])
        np.add.reduceat(series, starts) / counts
        np.minimum.reduceat(series, starts)
        np.maximum.reduceat(series, starts)

    query_ms = statistics.median(_timed(partial(means, bed)) for bed in range(min(ward.beds, 7)))
    return {
        "baseline.append_rows_s": append_rate,
        "baseline.query_ms": query_ms,
        "baseline.file_mb": ward.rows * 16 / 1e6,
        "baseline.bytes_row": 16.0,
    }


def _measure(name: str, store: TimeSeriesStore, ward: Ward, quick: bool, clock: _Clock) -> dict[str, float]:
    """Query and append figures of one loaded backend."""
    figures: dict[str, float] = {}
    start_ms, end_ms = T0, T0 + ward.seconds * 1000
    probe = [ward.bed(b) for b in range(0, ward.beds, max(1, ward.beds // 5))][:5]

    def full_span(bed: str) -> list[HistoryPoint]:
        return store.history(bed=bed, metric=METRIC, start_ms=start_ms, end_ms=end_ms, step_ms=MINUTE)

    points = full_span(probe[0])  # warm-up, and a sanity check
    if len(points) != -(-ward.seconds // 60) or sum(p.count for p in points) != ward.seconds:
        raise StoreError(f"{name}: ward query returned {len(points)} buckets")
    figures[f"{name}.bed_1min_full_ms"] = _median_ms(full_span, probe)
    figures[f"{name}.chart_1h_ms"] = _median_ms(lambda bed: _chart(store, bed, end_ms), probe)
    figures[f"{name}.latest_ms"] = _median_ms(lambda bed: store.latest(bed=bed), probe)
    figures[f"{name}.latest_60s_ms"] = _median_ms(
        lambda bed: store.latest(bed=bed, since_ms=end_ms - MINUTE), probe
    )
    scale = 1 if quick else 4
    for batch, rows in ((100, 2_000 * scale), (1000, 10_000 * scale), (5000, 10_000 * scale)):
        items = clock.fresh(rows, seed=batch)
        figures[f"{name}.append_{batch}_rows_s"] = _append_rate(store, items, batch)
    items = clock.fresh(10_000 * scale, seed=3)
    read_ms, write_rate = _under_write(store, ward, items, 1000, end_ms)
    figures[f"{name}.chart_1h_under_write_ms"] = read_ms
    figures[f"{name}.write_under_read_rows_s"] = write_rate
    return figures


def run(quick: bool = False) -> dict[str, float]:
    """Measure both candidates on a simulated ward; return named figures and their ratios to the baselines."""
    ward = Ward(beds=20, seconds=2 * 3600) if quick else Ward(beds=100, seconds=24 * 3600)
    busy = Ward(beds=ward.beds, seconds=0)  # the ward-rate scenario: every bed reports WARD_RATE_METRICS
    prefill_s, commits = (30, 10) if quick else (120, 30)
    began = time.perf_counter()
    values = _ward_values(ward)
    clock = _Clock(ward)
    figures: dict[str, float] = {
        "ward.beds": ward.beds,
        "ward.hours": ward.seconds / 3600,
        "ward.rows": ward.rows,
        "ward_rate.series": busy.beds * len(WARD_RATE_METRICS),
    }
    figures.update(_baselines(ward, values, clock.fresh(20_000, seed=1)))
    workdir = Path(tempfile.mkdtemp(prefix="wardlink-bench-"))
    try:
        for name, suffix, load, opener in (
            ("sqlite", "sqlite", _load_sqlite, SqliteStore),
            ("duckdb", "duckdb", _load_duckdb, DuckDbStore),
        ):
            path = workdir / f"ward.{suffix}"
            start = time.perf_counter()
            loaded = load(path, ward, values)
            figures[f"{name}.load_rows_s"] = loaded / (time.perf_counter() - start)
            log.info("%s: ward of %d rows loaded", name, loaded)
            store: TimeSeriesStore = opener(path)
            try:
                figures.update(_measure(name, store, ward, quick, clock))
            finally:
                store.close()
            figures[f"{name}.file_mb"] = _files_mb(path)
            commit_ms, written = _ward_rate(opener(workdir / f"busy.{suffix}"), busy, prefill_s, commits)
            figures[f"{name}.ward_rate_commit_ms"] = commit_ms
            if written is not None:
                figures[f"{name}.disk_bytes_row"] = written
        full = SqliteStore(workdir / "ward.sqlite", synchronous="FULL")
        try:
            figures["sqlite_full.append_1000_rows_s"] = _append_rate(
                full, clock.fresh(5_000 if quick else 20_000, 4), 1000
            )
        finally:
            full.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures["elapsed_s"] = time.perf_counter() - began
    figures.update(_ratios(figures))
    return figures


def _baseline_of(name: str) -> str | None:
    """The baseline a figure is compared with, by its unit."""
    if name.startswith(("baseline.", "ward.")) or name == "elapsed_s" or name.endswith("_x"):
        return None
    if name.endswith("_rows_s"):
        return "baseline.append_rows_s"
    if name.endswith("_ms"):
        return "baseline.query_ms"
    if name.endswith("_mb"):
        return "baseline.file_mb"
    if name.endswith("_bytes_row"):
        return "baseline.bytes_row"
    return None


def _ratios(figures: dict[str, float]) -> dict[str, float]:
    """``<figure>_x``: each figure divided by its same-run baseline."""
    ratios: dict[str, float] = {}
    for name, value in figures.items():
        base = _baseline_of(name)
        if base is not None and figures.get(base):
            ratios[f"{name}_x"] = value / figures[base]
    return ratios


_ROWS: Final = (
    ("append_100_rows_s", "append, 100/batch", "rows/s"),
    ("append_1000_rows_s", "append, 1,000/batch", "rows/s"),
    ("append_5000_rows_s", "append, 5,000/batch", "rows/s"),
    ("load_rows_s", "ward bulk load", "rows/s"),
    ("bed_1min_full_ms", "bed 1-min means, whole ward span", "ms"),
    ("chart_1h_ms", "bed 1-min means, last hour", "ms"),
    ("chart_1h_under_write_ms", "  same, while a thread writes", "ms"),
    ("write_under_read_rows_s", "  that thread's append, 1,000/batch", "rows/s"),
    ("latest_ms", "latest per metric of a bed", "ms"),
    ("latest_60s_ms", "  same, since_ms = last minute", "ms"),
    ("file_mb", "file size after the run", "MB"),
    ("ward_rate_commit_ms", "10-metric ward: one 1-s batch commit", "ms"),
    ("disk_bytes_row", "  disk bytes written per stored row", "B"),
)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(figures: dict[str, float]) -> str:
    """Format ``run()`` figures as a plain-text table: each backend's value and its ratio to the baseline."""
    head = (
        f"ward: {int(figures.get('ward.beds', 0))} beds x {figures.get('ward.hours', 0):g} h x 1 Hz = "
        f"{int(figures.get('ward.rows', 0)):,} observations; run took {figures.get('elapsed_s', 0):.0f} s"
    )
    lines = [head, ""]
    header = (
        f"{'figure':<38} {'unit':>6} {'baseline':>10} "
        f"{'sqlite':>10} {'x base':>8} {'duckdb':>10} {'x base':>8}"
    )
    lines += [header, "-" * len(header)]
    for key, label, unit in _ROWS:
        base_name = _baseline_of(f"sqlite.{key}")
        base = figures.get(base_name) if base_name else None
        cells = [f"{label:<38}", f"{unit:>6}", f"{_fmt(base):>10}"]
        for backend in ("sqlite", "duckdb"):
            cells.append(f"{_fmt(figures.get(f'{backend}.{key}')):>10}")
            cells.append(f"{_fmt(figures.get(f'{backend}.{key}_x')):>8}")
        lines.append(" ".join(cells))
    full = figures.get("sqlite_full.append_1000_rows_s")
    if full is not None:
        ratio = figures.get("sqlite_full.append_1000_rows_s_x")
        lines.append(
            f"{'append, 1,000/batch, sqlite FULL sync':<38} {'rows/s':>6} "
            f"{_fmt(figures.get('baseline.append_rows_s')):>10} {_fmt(full):>10} {_fmt(ratio):>8}"
        )
    lines += [
        "",
        "baselines (same run): rows/s = unindexed SQLite :memory: insert of pre-built rows, 5,000/batch;",
        "ms = numpy 1-min means of one bed's whole span from arrays in RAM; MB and B = raw ts+value bytes",
        f"(16/row). 10-metric ward: {int(figures.get('ward_rate.series', 0)):,} series at 1 Hz, "
        "each commit holds one second of all of them.",
    ]
    return "\n".join(lines)
