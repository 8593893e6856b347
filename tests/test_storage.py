"""Tests of the storage package: the memory twin and both embedded stores must behave the same."""

from __future__ import annotations

import math
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.contract import ContractError, DeviceEvent, DeviceInfo, Item, Observation, TagRead, WasteEvent
from storage import (
    DuckDbStore,
    HistoryPoint,
    Latest,
    MemoryStore,
    SqliteStore,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    TimeSeriesStore,
)

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_040_000  # a minute boundary
METRICS = ("HR", "SPO2", "RR")


FILE_STORES: dict[str, type[DuckDbStore] | type[SqliteStore]] = {"duckdb": DuckDbStore, "sqlite": SqliteStore}


@pytest.fixture(params=["memory", "duckdb", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TimeSeriesStore]:
    """Each store implementation, fresh and empty."""
    s: TimeSeriesStore = (
        MemoryStore()
        if request.param == "memory"
        else FILE_STORES[request.param](tmp_path / "db" / "ward.db")
    )
    yield s
    s.close()


@pytest.fixture(params=sorted(FILE_STORES))
def opener(request: pytest.FixtureRequest) -> type[DuckDbStore] | type[SqliteStore]:
    """Each file-backed store class."""
    return FILE_STORES[request.param]


def observations(rng: random.Random, n: int, *, beds: int = 3, span_ms: int = 600_000) -> list[Observation]:
    """Random observations with unique keys, deliberately including equal timestamps across devices."""
    items = []
    for seq in range(n):
        device = f"mon{rng.randrange(beds + 1)}"  # one more monitor than beds: two share a bed
        bed = None if rng.random() < 0.05 else f"bed{int(device[3:]) % beds}"
        items.append(
            Observation(
                device=device,
                stream="numerics",
                seq=seq,
                ts=T0 + rng.randrange(0, span_ms, 250) - rng.choice((0, 0, 1)),  # some 1 ms before an edge
                metric=rng.choice(METRICS),
                value=round(rng.uniform(40, 140), 3),
                unit="/min",
                code=rng.randrange(1, 1000),
                bed=bed,
                device_ts=rng.choice([None, T0 - 5]),
                flags=rng.choice([0, 0, 2]),
            )
        )
    return items


def events() -> list[Item]:
    """One of each non-observation kind, with optional fields set and unset."""
    return [
        DeviceEvent(
            device="mon1",
            stream="alarms",
            seq=1,
            ts=T0 + 2000,
            event="MDC_EVT_LEAD_OFF",
            alarm_kind="technical",
            priority="medium",
            phase="start",
            source="MDC_ECG_HEART_RATE",
            text="ECG lead off",
            alert_uuid="a-1",
            bed="bed1",
            device_ts=T0 + 1990,
        ),
        DeviceEvent(
            device="mon2",
            stream="alarms",
            seq=1,
            ts=T0 + 1000,
            event="MDC_EVT_HI",
            alarm_kind="physiological",
            priority="high",
            bed="bed2",
        ),
        TagRead(device="reader-3", stream="tags", seq=7, ts=T0 + 1500, tag="tag-0042", rssi=-61.5),
        WasteEvent(
            device="scale-1",
            stream="waste",
            seq=9,
            ts=T0 + 3000,
            bag="BAG-1",
            category="sharps",
            weight_g=812.25,
            point="ward",
            handler="nurse-7",
            unit="ICU-2",
        ),
        DeviceInfo(
            device="mon9",
            stream="info",
            seq=0,
            ts=T0 + 2500,
            driver="wlb1",
            bed="bed1",
            manufacturer="Acme",
            serial_number="SN-9",
            identifiers={"eui64": "00-11-22-33-44-55-66-77"},
            discovered=True,
        ),
    ]


def newest_per_metric(
    obs: list[Observation], *, bed: str | None, device: str | None, since: int | None
) -> dict[str, Observation]:
    """Expected ``latest`` computed the plain way: the greatest (ts, device, stream, seq) per metric."""
    best: dict[str, Observation] = {}
    for o in obs:
        if (bed is not None and o.bed != bed) or (device is not None and o.device != device):
            continue
        if since is not None and o.ts < since:
            continue
        current = best.get(o.metric)
        if current is None or (o.ts, o.device, o.stream, o.seq) > (
            current.ts,
            current.device,
            current.stream,
            current.seq,
        ):
            best[o.metric] = o
    return best


def test_both_stores_satisfy_the_protocol(store: TimeSeriesStore) -> None:
    assert isinstance(store, TimeSeriesStore)


def test_writes_are_idempotent_under_shuffled_replays(store: TimeSeriesStore) -> None:
    rng = random.Random(1)
    items: list[Item] = [*observations(rng, 400), *events()]
    replays = items * 3
    rng.shuffle(replays)
    stored = duplicates = 0
    i = 0
    while i < len(replays):
        size = rng.randrange(1, 120)
        result = store.write(replays[i : i + size])
        stored += result.stored
        duplicates += result.duplicates
        i += size
    assert stored == len(items)
    assert duplicates == 2 * len(items)
    stats = store.stats()
    assert stats.observations == 400
    assert stats.events == len(events())
    total = sum(p.count for b in range(3) for p in _all_buckets(store, f"bed{b}"))
    unbedded = sum(1 for o in items if isinstance(o, Observation) and o.bed is None)
    assert total == 400 - unbedded


def _all_buckets(store: TimeSeriesStore, bed: str) -> list[HistoryPoint]:
    return [
        p
        for metric in METRICS
        for p in store.history(bed=bed, metric=metric, start_ms=T0, end_ms=T0 + 10**7, step_ms=10**7)
    ]


def test_first_write_wins_and_batch_internal_duplicates_count(store: TimeSeriesStore) -> None:
    first = Observation(device="m", stream="s", seq=1, ts=T0, metric="HR", value=60.0, unit="/min", bed="b")
    replay = Observation(
        device="m", stream="s", seq=1, ts=T0 + 5, metric="HR", value=99.0, unit="/min", bed="b"
    )
    assert (store.write([first, replay]).stored, store.write([replay]).duplicates) == (1, 1)
    [latest] = store.latest(bed="b")
    assert (latest.value, latest.ts) == (60.0, T0)


def test_a_batch_mixing_stored_and_new_keys_stores_the_new_ones_once(store: TimeSeriesStore) -> None:
    old = Observation(device="m", stream="s", seq=1, ts=T0, metric="HR", value=60.0, unit="/min", bed="b")
    assert store.write([old]).stored == 1
    # The stored key comes back newer and different (it must change nothing); the rest is new.
    replay = Observation(device="m", stream="s", seq=1, ts=T0 + 9, metric="HR", value=99.0, unit="/min", bed="b")
    new = Observation(device="m", stream="s", seq=2, ts=T0 + 5, metric="HR", value=70.0, unit="/min", bed="b")
    other = Observation(device="m", stream="s", seq=3, ts=T0 + 1, metric="RR", value=12.0, unit="/min", bed="b")
    result = store.write([replay, new, other, *events()])
    assert (result.stored, result.duplicates) == (2 + len(events()), 1)
    assert [(x.metric, x.value, x.ts) for x in store.latest(bed="b")] == [("HR", 70.0, T0 + 5), ("RR", 12.0, T0 + 1)]
    assert (store.stats().observations, store.stats().events) == (3, len(events()))


def test_empty_write_and_invalid_items(store: TimeSeriesStore) -> None:
    assert store.write([]).stored == 0
    good = Observation(device="m", stream="s", seq=1, ts=T0, metric="HR", value=60.0, unit="/min", bed="b")
    bad = Observation(device="m", stream="s", seq=2, ts=T0, metric="HR", value=math.nan, unit="/min", bed="b")
    with pytest.raises(ContractError):
        store.write([good, bad])
    assert store.stats().observations == 0  # all or nothing


def test_checked_write_stores_the_same_as_a_checking_one(store: TimeSeriesStore) -> None:
    rng = random.Random(11)
    items: list[Item] = [*observations(rng, 300), *events()]
    twin = MemoryStore()
    assert store.write(items, checked=True) == twin.write(items)
    assert store.write(items[:50], checked=True) == twin.write(items[:50])  # replays are still duplicates
    assert store.latest(bed="bed1") == twin.latest(bed="bed1")
    assert store.stats().observations == twin.stats().observations == 300
    bad = Observation(device="m", stream="s", seq=2, ts=T0, metric="HR", value=math.nan, unit="/min", bed="b")
    with pytest.raises(ContractError):
        store.write([bad])  # the default still checks


@pytest.mark.parametrize(
    ("bed", "device", "since"),
    [("bed0", None, None), ("bed1", None, T0 + 300_000), (None, "mon3", None), ("bed0", "mon3", None)],
)
def test_latest_per_metric(
    store: TimeSeriesStore, bed: str | None, device: str | None, since: int | None
) -> None:
    rng = random.Random(2)
    obs = observations(rng, 600)
    # An exact tie on ts between two monitors of bed0: the tie-break is (device, stream, seq).
    obs.append(
        Observation(
            device="mon0",
            stream="numerics",
            seq=10_000,
            ts=T0 + 700_000,
            metric="HR",
            value=1.0,
            unit="/min",
            bed="bed0",
        )
    )
    obs.append(
        Observation(
            device="mon3",
            stream="numerics",
            seq=10_001,
            ts=T0 + 700_000,
            metric="HR",
            value=2.0,
            unit="/min",
            bed="bed0",
        )
    )
    store.write(obs)
    expected = newest_per_metric(obs, bed=bed, device=device, since=since)
    got = store.latest(bed=bed, device=device, since_ms=since)
    assert [x.metric for x in got] == sorted(expected)
    for row in got:
        o = expected[row.metric]
        assert row == Latest(
            metric=o.metric,
            code=o.code,
            value=o.value,
            unit=o.unit,
            ts=o.ts,
            device=o.device,
            flags=o.flags,
            bed=o.bed,
        )
    if bed == "bed0" and device is None:
        assert next(x for x in got if x.metric == "HR").device == "mon3"


def test_latest_of_unknown_bed_is_empty_and_target_is_required(store: TimeSeriesStore) -> None:
    store.write(observations(random.Random(3), 20))
    assert store.latest(bed="nowhere") == []
    with pytest.raises(ValueError, match="bed or a device"):
        store.latest()
    with pytest.raises(ValueError, match="empty range"):
        store.history(bed="bed0", metric="HR", start_ms=T0, end_ms=T0)


def _truth(
    obs: list[Observation], bed: str, metric: str, start: int, end: int
) -> tuple[np.ndarray, np.ndarray]:
    rows = sorted(
        (o.ts, o.device, o.stream, o.seq, o.value)
        for o in obs
        if o.bed == bed and o.metric == metric and start <= o.ts < end
    )
    return np.array([r[0] for r in rows], dtype=np.int64), np.array([r[4] for r in rows], dtype=np.float64)


def test_history_raw_matches_filtered_truth(store: TimeSeriesStore) -> None:
    obs = observations(random.Random(4), 2000)
    store.write(obs)
    start, end = T0 + 60_000, T0 + 420_000
    ts, values = _truth(obs, "bed1", "SPO2", start, end)
    assert ts.size > 20
    points = store.history(bed="bed1", metric="SPO2", start_ms=start, end_ms=end)
    assert [p.ts for p in points] == ts.tolist()
    assert [p.value for p in points] == values.tolist()
    assert all(p.count == 1 and p.min == p.value == p.max for p in points)
    limited = store.history(bed="bed1", metric="SPO2", start_ms=start, end_ms=end, limit=5)
    assert limited == points[:5]


@pytest.mark.parametrize("step", [1_000, 60_000, 90_000])
def test_history_downsampled_matches_numpy(store: TimeSeriesStore, step: int) -> None:
    obs = observations(random.Random(5), 3000)
    store.write(obs)
    start, end = T0 + 15_000, T0 + 580_000  # not bucket-aligned on purpose
    ts, values = _truth(obs, "bed2", "HR", start, end)
    buckets = ts - ts % step
    starts, first, counts = np.unique(buckets, return_index=True, return_counts=True)
    means = np.add.reduceat(values, first) / counts
    points = store.history(bed="bed2", metric="HR", start_ms=start, end_ms=end, step_ms=step)
    assert [p.ts for p in points] == starts.tolist()
    assert [p.count for p in points] == counts.tolist()
    assert [p.value for p in points] == pytest.approx(means.tolist(), rel=1e-12)
    assert [p.min for p in points] == np.minimum.reduceat(values, first).tolist()
    assert [p.max for p in points] == np.maximum.reduceat(values, first).tolist()
    assert (
        store.history(bed="bed2", metric="HR", start_ms=start, end_ms=end, step_ms=step, limit=3)
        == points[:3]
    )


def test_history_by_device(store: TimeSeriesStore) -> None:
    obs = observations(random.Random(6), 800)
    store.write(obs)
    want = sorted((o.ts, o.seq, o.value) for o in obs if o.device == "mon2" and o.metric == "RR")
    got = store.history(device="mon2", metric="RR", start_ms=T0, end_ms=T0 + 10**6)
    assert [(p.ts, p.value) for p in got] == [(t, v) for t, _, v in want]


def test_events_round_trip(store: TimeSeriesStore) -> None:
    evts = events()
    store.write([*evts, *observations(random.Random(7), 10)])
    got = store.events(start_ms=T0, end_ms=T0 + 10_000)
    assert got == sorted(evts, key=lambda e: (e.ts, e.device, e.stream, e.seq))
    assert [type(e) for e in got] == [DeviceEvent, TagRead, DeviceEvent, DeviceInfo, WasteEvent]
    assert store.events(bed="bed1", start_ms=T0, end_ms=T0 + 10_000) == [evts[0], evts[4]]
    assert store.events(device="scale-1", start_ms=T0, end_ms=T0 + 10_000) == [evts[3]]
    assert store.events(start_ms=T0, end_ms=T0 + 1500) == [evts[1]]  # end is exclusive
    assert store.events(start_ms=T0, end_ms=T0 + 10_000, limit=2) == got[:2]


def test_quarantine_round_trip(store: TimeSeriesStore) -> None:
    raws = [b"\xff\xfe not json", b'{"gateway": 1}', b""]
    for i, raw in enumerate(raws):
        store.quarantine(source=f"gw{i}", reason=f"reason {i}", raw=raw, ts=T0 + i)
    assert store.quarantine_count() == 3
    got = store.quarantined()
    assert [q.raw for q in got] == raws[::-1]
    assert [(q.source, q.reason, q.ts) for q in got] == [(f"gw{i}", f"reason {i}", T0 + i) for i in (2, 1, 0)]
    assert store.quarantined(limit=1) == got[:1]
    assert store.stats().quarantined == 3


def test_closed_store_raises(store: TimeSeriesStore) -> None:
    store.close()
    store.close()  # idempotent
    for call in (lambda: store.write([]), lambda: store.latest(bed="b"), store.stats, store.quarantine_count):
        with pytest.raises(StoreClosed) as info:
            call()
        assert info.value.retryable is False


def test_reopen_keeps_data_and_idempotency(tmp_path: Path, opener: type[SqliteStore]) -> None:
    path = tmp_path / "deep" / "dir" / "ward.db"
    obs = observations(random.Random(8), 300)
    first = opener(path)
    first.write([*obs, *events()])
    first.quarantine(source="gw", reason="bad", raw=b"x", ts=T0)
    before = (first.stats(), first.latest(bed="bed0"), first.events(start_ms=T0, end_ms=T0 + 10**6))
    first.close()
    second = opener(path)
    try:
        after = (second.stats(), second.latest(bed="bed0"), second.events(start_ms=T0, end_ms=T0 + 10**6))
        assert (after[0].observations, after[0].events, after[0].quarantined) == (300, len(events()), 1)
        assert after[1:] == before[1:]
        assert second.write(obs).duplicates == 300
        assert second.quarantined()[0].raw == b"x"
    finally:
        second.close()


def test_committed_batches_survive_a_process_crash(tmp_path: Path, opener: type[SqliteStore]) -> None:
    path = tmp_path / "crash.db"
    script = (
        "import os, sys\n"
        "from devices.contract import Observation\n"
        f"from storage import {opener.__name__} as Store\n"
        "s = Store(sys.argv[1])\n"
        "s.write([Observation(device='m', stream='s', seq=i, ts=i, metric='HR', value=1.0, unit='/min',"
        " bed='b') for i in range(50)])\n"
        "os._exit(0)  # no close(): the WAL is left behind as after a crash\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=ROOT, timeout=60)
    assert Path(f"{path}-wal").exists() or Path(f"{path}.wal").exists()
    store = opener(path)
    try:
        assert store.stats().observations == 50
        assert store.history(bed="b", metric="HR", start_ms=0, end_ms=100)[-1].ts == 49
    finally:
        store.close()


def test_not_a_database_raises_store_corrupt(tmp_path: Path, opener: type[SqliteStore]) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database file\n" * 2000)
    with pytest.raises(StoreCorrupt) as info:
        opener(path)
    assert isinstance(info.value, StoreError)
    assert info.value.retryable is False
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError | duckdb.Error)


def test_sqlite_unknown_schema_version_raises_store_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreCorrupt, match="schema version 99"):
        SqliteStore(path)


def test_duckdb_unknown_schema_version_raises_store_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "future.duckdb"
    DuckDbStore(path).close()
    conn = duckdb.connect(str(path))
    conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
    conn.close()
    with pytest.raises(StoreCorrupt, match="schema version 99"):
        DuckDbStore(path)


def test_duckdb_file_held_by_another_process_is_retryable(tmp_path: Path) -> None:
    path = tmp_path / "held.duckdb"
    DuckDbStore(path).close()
    code = "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreUnavailable) as info:
            DuckDbStore(path)
        assert info.value.retryable is True
        assert isinstance(info.value.__cause__, duckdb.IOException)
    finally:
        holder.communicate(input="", timeout=30)
    DuckDbStore(path).close()  # free again once the other process has gone


def test_sqlite_locked_database_is_retryable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = SqliteStore(path, busy_timeout_s=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        with pytest.raises(StoreUnavailable) as info:
            store.write(observations(random.Random(9), 5))
        assert info.value.retryable is True
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        other.execute("ROLLBACK")
        assert store.write(observations(random.Random(9), 5)).stored == 5  # the retry succeeds
        assert store.stats().observations == 5
    finally:
        other.close()
        store.close()


def test_reader_thread_sees_consistent_data_while_writer_commits(
    tmp_path: Path, opener: type[SqliteStore]
) -> None:
    store = opener(tmp_path / "threads.db")
    t0 = 1_700_000_000_000  # aligned to 100 s: one batch fills exactly one bucket
    batches = [
        [
            Observation(
                device="m",
                stream="s",
                seq=b * 100 + i,
                ts=t0 + (b * 100 + i) * 1000,
                metric="HR",
                value=float(b),
                unit="/min",
                bed="b",
            )
            for i in range(100)
        ]
        for b in range(60)
    ]
    errors: list[BaseException] = []
    seen: list[int] = []

    def writer() -> None:
        try:
            for batch in batches:
                store.write(batch)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while thread.is_alive():
            points = store.history(bed="b", metric="HR", start_ms=t0, end_ms=t0 + 10**8, step_ms=100_000)
            # Batches commit whole: every bucket a reader sees is complete.
            assert all(p.count == 100 and p.min == p.max for p in points)
            seen.append(len(points))
    finally:
        thread.join()
        assert store.stats().observations == 6000
        store.close()
    assert not errors
    assert seen == sorted(seen)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["m1", "m2", "m3"]),
            st.integers(0, 30),
            st.integers(0, 20).map(lambda k: T0 + k * 7_000),
            st.sampled_from(METRICS),
            st.floats(-1e6, 1e6, allow_nan=False),
            st.sampled_from(["b1", "b2", None]),
        ),
        max_size=80,
    ),
    st.integers(1, 200_000),
)
@pytest.mark.parametrize("kind", sorted(FILE_STORES))
def test_twins_agree(kind: str, rows: list[tuple], step: int) -> None:
    obs = [
        Observation(device=d, stream="s", seq=q, ts=t, metric=m, value=v, unit="u", bed=b)
        for d, q, t, m, v, b in rows
    ]
    with tempfile.TemporaryDirectory() as tmp:
        twin, real = MemoryStore(), FILE_STORES[kind](Path(tmp) / "t.db")
        try:
            assert twin.write(obs) == real.write(obs)
            for target in ({"bed": "b1"}, {"bed": "b2"}, {"device": "m2"}, {"bed": "b1", "device": "m1"}):
                assert twin.latest(**target) == real.latest(**target)
                for metric in METRICS:
                    query = {"metric": metric, "start_ms": T0 + 10_000, "end_ms": T0 + 120_000, **target}
                    assert twin.history(**query) == real.history(**query)
                    a, b = twin.history(**query, step_ms=step), real.history(**query, step_ms=step)
                    assert [(p.ts, p.min, p.max, p.count) for p in a] == [
                        (p.ts, p.min, p.max, p.count) for p in b
                    ]
                    assert [p.value for p in a] == pytest.approx([p.value for p in b], rel=1e-9, abs=1e-6)
        finally:
            twin.close()
            real.close()


def test_bench_quick_measures_both_candidates() -> None:
    from storage.bench import run, table

    figures = run(quick=True)
    for backend in ("sqlite", "duckdb"):
        for name in ("append_1000_rows_s", "append_5000_rows_s", "bed_1min_full_ms", "latest_ms", "file_mb"):
            assert figures[f"{backend}.{name}"] > 0
            assert figures[f"{backend}.{name}_x"] > 0
    assert figures["baseline.append_rows_s"] > 0
    text = table(figures)
    for word in ("sqlite", "duckdb", "append, 5,000/batch"):
        assert word in text


def test_every_contract_field_of_an_observation_is_stored(tmp_path: Path) -> None:
    """A field added to the contract must reach the store's tables (this once crashed ingest)."""
    full = Observation(device="d", stream="s", seq=1, ts=T0, metric="MDC_TEMP", value=37.0, unit="Cel", code=150344,
               bed=None, device_ts=None, flags=0, containment="1.2.3.150344")
    for store in (DuckDbStore(tmp_path / "a.duckdb"), SqliteStore(tmp_path / "a.db")):
        assert store.write([full]).stored == 1
        assert store.latest(device="d")[0].value == 37.0
        store.close()
