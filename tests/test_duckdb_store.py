"""DuckDbStore's key indexes and in-memory latest: duplicates, snapshots, crashes, and files of schemas 1 and 2."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import duckdb
import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.contract import DeviceEvent, DeviceInfo, Observation, TagRead
from storage import DuckDbStore, MemoryStore
from storage.base import DAY_MS, Placement, Record, Retention, StoreError, encode_event, event_kind, item_bed
from storage.duckdb_schema import SCHEMA_VERSION, insert_rows
from storage.ranges import KeyIndex, SeqRuns

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_040_000
TARGETS: tuple[tuple[str | None, str | None], ...] = (("b0", None), ("b1", None), (None, "m2"), ("b0", "m0"))


def ob(device: str, seq: int, ts: int, value: float = 1.0, *, stream: str = "s", metric: str = "HR",
       bed: str | None = "b0") -> Observation:
    return Observation(device=device, stream=stream, seq=seq, ts=ts, metric=metric, value=value, unit="/min",
                       bed=bed)


def stored_keys(path: Path, table: str = "observations") -> list[tuple[str, str, int]]:
    """Every observation (or event) key in the file, with repeats (the store must be closed)."""
    conn = duckdb.connect(str(path))
    try:
        return [tuple(row) for row in conn.execute(f"SELECT device, stream, seq FROM {table}").fetchall()]
    finally:
        conn.close()


def all_events(store: DuckDbStore | MemoryStore) -> list[object]:
    """Every stored event, in the contract's order."""
    return list(store.events(start_ms=0, end_ms=2**62, limit=10**7))


# --- the index on its own -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 6))))
def test_seq_runs_hold_exactly_what_was_added(adds: list[tuple[int, int]]) -> None:
    runs, model = SeqRuns(), set[int]()
    for lo, width in adds:
        runs.add(lo, lo + width)
        model.update(range(lo, lo + width + 1))
    assert [q for q in range(-2, 70) if q in runs] == sorted(model)
    assert all(hi + 1 < lo for (_, hi), (lo, _) in pairwise(runs.runs()))  # disjoint, not touching


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["s", "t"]),
                                   st.integers(0, 25)), max_size=30), max_size=6))
def test_key_index_filter_keeps_the_first_of_each_new_key(batches: list[list[tuple[str, str, int]]]) -> None:
    index, model = KeyIndex(), set()
    for batch in batches:
        streams, keys = KeyIndex.stream_ids([k[0] for k in batch], [k[1] for k in batch])
        keep, pieces = index.filter(streams, keys, np.array([k[2] for k in batch], dtype=np.int64))
        expected = []
        for key in batch:
            expected.append(key not in model)
            model.add(key)
        assert (keep.tolist() if keep is not None else [True] * len(batch)) == expected
        index.apply(pieces)
        assert sorted(
            (d, s, q) for d, s, lo, hi in index.rows() for q in range(lo, hi + 1)) == sorted(model)


# --- duplicates ---------------------------------------------------------------------------------


def test_the_buffer_pool_is_bounded_as_configured(tmp_path: Path) -> None:
    store = DuckDbStore(tmp_path / "ts.duckdb", memory_limit_mb=128)
    try:
        limit = store._conn.execute("SELECT current_setting('memory_limit')").fetchone()
    finally:
        store.close()
    assert limit == ("122.0 MiB",)  # 128 MB (10^6 bytes), as DuckDB prints it
    with pytest.raises(ValueError, match="memory_limit_mb"):
        DuckDbStore(tmp_path / "small.duckdb", memory_limit_mb=8)


def test_the_buffer_pool_is_bounded_for_an_appending_worker_by_default(tmp_path: Path) -> None:
    # DuckDB keeps every block it writes cached until the pool is full, so the pool's bound is an ingest worker's
    # steady memory (the 10-minute soak grew 8.9 MB/min with 80% of RAM, and would have until 512 MB): the store and
    # the configuration default to 64 MB, and the larger bound of a load at open does not outlive the load.
    from wardlink.config import load
    from wardlink.runner import open_store

    path = tmp_path / "ts.duckdb"
    store = DuckDbStore(path, snapshot_rows=10**9, snapshot_s=10**9)
    store.write([ob("d1", seq, T0 + seq) for seq in range(1000)])
    store._stale = True  # a failed commit: the next write reloads the index with the loading bound
    store.write([ob("d1", 1000, T0 + 1000)])
    limits = [store._conn.execute("SELECT current_setting('memory_limit')").fetchone()]
    store.close()
    configured = open_store(load(env={"WARDLINK_DATA_DIR": str(tmp_path / "data")}))
    try:
        assert isinstance(configured, DuckDbStore)
        limits.append(configured._conn.execute("SELECT current_setting('memory_limit')").fetchone())
    finally:
        configured.close()
    assert limits == [("61.0 MiB",)] * 2  # 64 MB (10^6 bytes), as DuckDB prints it


def test_duplicates_within_a_batch_across_batches_and_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "dups.duckdb"
    store = DuckDbStore(path)
    first = [ob("m0", q, T0 + q) for q in range(10)]
    # Within one batch: seq 3 three times (the first wins), a descending stretch, another stream's same seqs.
    batch = [*first, ob("m0", 3, T0 + 999, 99.0), ob("m0", 3, T0 + 998), *[ob("m1", q, T0 + q) for q in (5, 4, 3)]]
    assert (store.write(batch).stored, store.write(batch).duplicates) == (13, 15)
    # Across batches: a replay of stored keys mixed with new ones above, below and inside a gap.
    mixed = [ob("m0", 5, T0), ob("m0", 20, T0 + 20), ob("m1", 0, T0), ob("m1", 4, T0), ob("m0", 15, T0 + 15)]
    assert store.write(mixed).stored == 3
    assert [x.value for x in store.latest(bed="b0", device="m0")] == [1.0]
    assert store.latest(device="m0")[0].ts == T0 + 20
    store.close()
    again = DuckDbStore(path)
    assert again.write([*batch, *mixed]).duplicates == len(batch) + len(mixed)
    assert again.write([ob("m0", 16, T0 + 16), ob("m0", 16, T0 + 16)]).stored == 1  # a new key, once
    assert again.stats().observations == 17
    again.close()
    keys = stored_keys(path)
    assert len(keys) == len(set(keys)) == 17


def test_a_replayed_key_stays_a_duplicate_after_retention_deletes_its_row(tmp_path: Path) -> None:
    store = DuckDbStore(tmp_path / "r.duckdb", retention=Retention(raw_days=1, rollup_days=10, events_days=10))
    old = [ob("m0", q, T0 + q * 1000) for q in range(10)]
    store.write(old)
    assert store.maintain(T0 + 2 * DAY_MS).rolled_up == 10
    assert store.write(old).duplicates == 10  # the index keeps the keys of rolled-up rows
    store.close()
    again = DuckDbStore(tmp_path / "r.duckdb")
    assert again.write(old).duplicates == 10
    [minute] = again.history(bed="b0", metric="HR", start_ms=T0, end_ms=T0 + 60_000, step_ms=60_000)
    assert minute.count == 10  # not counted twice
    again.close()


# --- latest and the snapshot ----------------------------------------------------------------------


def random_batches(seed: int, n_batches: int, size: int) -> list[list[Observation]]:
    """Batches of 4 monitors over two streams each, with replays, shuffles and equal timestamps."""
    rng = random.Random(seed)
    batches: list[list[Observation]] = []
    made: list[Observation] = []
    seqs = {(f"m{d}", s): 0 for d in range(4) for s in ("s", "t")}
    for _ in range(n_batches):
        batch = []
        for _ in range(size):
            if made and rng.random() < 0.1:
                batch.append(rng.choice(made))  # a replay (maybe of this very batch)
                continue
            device, stream = rng.choice(sorted(seqs))
            seqs[(device, stream)] += rng.choice((1, 1, 1, 2))  # some gaps
            o = ob(device, seqs[(device, stream)], T0 + rng.randrange(0, 50) * 100, round(rng.uniform(0, 100), 2),
                   stream=stream, metric=rng.choice(("HR", "RR", "SPO2")), bed=rng.choice(("b0", "b1", None)))
            made.append(o)
            batch.append(o)
        if rng.random() < 0.3:
            rng.shuffle(batch)
        batches.append(batch)
    return batches


def mixed_batches(seed: int, n_batches: int, size: int) -> list[list[Record]]:
    """:func:`random_batches` with events added: tag reads (dense seqs), placements (seq from ts) and data-gap
    events (one seq each), sparse streams costing a run per key; with replays, shuffled."""
    rng = random.Random(seed + 1)
    made: list[Record] = []
    tags = dict.fromkeys(("r0", "r1", "r2"), 0)
    out: list[list[Record]] = []
    for i, observations in enumerate(random_batches(seed, n_batches, size)):
        batch: list[Record] = list(observations)
        for _ in range(size // 4):
            roll = rng.random()
            event: Record
            if made and roll < 0.1:
                batch.append(rng.choice(made))  # a replay (maybe of this very batch)
                continue
            if roll < 0.6:
                reader = rng.choice(sorted(tags))
                tags[reader] += 1
                event = TagRead(device=reader, stream="tags", seq=tags[reader], ts=T0 + i * 100,
                                tag=f"t{rng.randrange(9)}", rssi=-50.0)
            elif roll < 0.8:
                ts = T0 + i * 1000 + rng.randrange(1000)
                event = Placement(device=f"asset{rng.randrange(3)}", stream="location", seq=ts * 8 + rng.randrange(2),
                                  ts=ts, event="entered", room=f"room{rng.randrange(5)}")
            else:
                event = DeviceEvent(device=f"m{rng.randrange(4)}", stream="ingest.gap.s", seq=rng.randrange(10**6),
                                    ts=T0 + i, event="data.gap", alarm_kind="technical", priority="medium")
            made.append(event)
            batch.append(event)
        rng.shuffle(batch)
        out.append(batch)
    return out


def keys_of(batches: list[list[Record]]) -> set[tuple[str, str, str, int]]:
    """The keys a list of batches stores, tagged by table."""
    return {("observations" if isinstance(o, Observation) else "events", o.device, o.stream, o.seq)
            for batch in batches for o in batch}


@pytest.mark.parametrize("snapshot_rows", [1, 37, 10**9])
def test_latest_and_counts_equal_the_twin_across_reopens(tmp_path: Path, snapshot_rows: int) -> None:
    path = tmp_path / "twin.duckdb"
    twin = MemoryStore()
    store = DuckDbStore(path, snapshot_rows=snapshot_rows)
    for i, batch in enumerate(random_batches(3, 30, 25)):
        assert store.write(batch) == twin.write(batch)
        if i % 7 == 6:
            store.close()
            store = DuckDbStore(path, snapshot_rows=snapshot_rows)
        for bed, device in TARGETS:
            assert store.latest(bed=bed, device=device) == twin.latest(bed=bed, device=device)
    assert store.stats().observations == twin.stats().observations
    store.close()


def test_rows_written_past_the_store_are_adopted_at_open(tmp_path: Path) -> None:
    path = tmp_path / "bulk.duckdb"
    DuckDbStore(path).close()
    conn = duckdb.connect(str(path))  # as storage.bench's bulk load does: no batch number, latest not rebuilt
    conn.execute("CREATE TEMP VIEW bulk AS SELECT 'm0' AS device, 's' AS stream, i AS seq, 1000 + i AS ts, "
                 "'HR' AS metric, 0 AS code, i::DOUBLE AS value, '/min' AS unit, 'b0' AS bed, NULL::BIGINT AS "
                 "device_ts, 0 AS flags, NULL::VARCHAR AS containment FROM range(100) t(i)")
    insert_rows(conn, "bulk")
    conn.close()
    store = DuckDbStore(path)
    assert store.latest(bed="b0")[0].value == 99.0
    assert store.write([ob("m0", q, T0) for q in range(95, 105)]).stored == 5
    store.close()
    assert len(stored_keys(path)) == 105


# --- crash ----------------------------------------------------------------------------------------

WRITTEN = 400
WRITER = """
import sys, time
from storage import DuckDbStore
sys.path.insert(0, sys.argv[3])
from test_duckdb_store import WRITTEN, mixed_batches
store = DuckDbStore(sys.argv[1], snapshot_rows=int(sys.argv[2]))
for i, batch in enumerate(mixed_batches(7, WRITTEN, 40)):
    store.write(batch)
    print(i, flush=True)
time.sleep(600)  # killed by then
"""


@pytest.mark.parametrize("snapshot_rows", [50, 10**9])
def test_a_killed_writer_loses_no_key_and_doubles_none(tmp_path: Path, snapshot_rows: int) -> None:
    path = tmp_path / "killed.duckdb"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(snapshot_rows), str(ROOT / "tests")],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    acknowledged = -1
    try:
        while acknowledged < 60:
            line = writer.stdout.readline()
            assert line, "the writer stopped early"
            acknowledged = int(line)
    finally:
        os.kill(writer.pid, signal.SIGKILL)  # between batches or in the middle of one
        writer.wait(timeout=30)
        writer.stdout.close()
    def file_keys() -> set[tuple[str, str, str, int]]:
        """Both tables' keys, after checking that none is stored twice."""
        keys: set[tuple[str, str, str, int]] = set()
        for table in ("observations", "events"):
            rows = stored_keys(path, table)
            assert len(rows) == len(set(rows)), table  # none doubled, even in the file left by the crash
            keys.update((table, *row) for row in rows)
        return keys

    keys = file_keys()
    batches = mixed_batches(7, WRITTEN + 1, 40)
    committed = next(n for n in range(acknowledged + 1, WRITTEN + 1) if keys == keys_of(batches[:n]))
    twin = MemoryStore()
    for batch in batches[:committed]:
        twin.write(batch)
    store = DuckDbStore(path, snapshot_rows=snapshot_rows)
    try:
        for bed, device in TARGETS:
            assert store.latest(bed=bed, device=device) == twin.latest(bed=bed, device=device)
        for batch in batches[:committed]:
            assert store.write(batch).stored == 0  # every acknowledged key, observation or event, is still known
        assert store.write(batches[committed]) == twin.write(batches[committed])
        assert store.stats().observations == twin.stats().observations
        assert store.stats().events == twin.stats().events
        assert all_events(store) == all_events(twin)
    finally:
        store.close()
    assert file_keys() == keys_of(batches[:committed + 1])


# --- schema 1 -------------------------------------------------------------------------------------

SCHEMA_1 = (
    "CREATE TABLE meta (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT INTO meta VALUES ('schema_version', 1)",
    """CREATE TABLE observations (device VARCHAR NOT NULL, stream VARCHAR NOT NULL, seq BIGINT NOT NULL,
        ts BIGINT NOT NULL, metric VARCHAR NOT NULL, code INTEGER NOT NULL, value DOUBLE NOT NULL,
        unit VARCHAR NOT NULL, bed VARCHAR, device_ts BIGINT, flags INTEGER NOT NULL,
        PRIMARY KEY (device, stream, seq))""",
    """CREATE TABLE latest (device VARCHAR NOT NULL, metric VARCHAR NOT NULL, bed_key VARCHAR NOT NULL,
        bed VARCHAR, stream VARCHAR NOT NULL, seq BIGINT NOT NULL, ts BIGINT NOT NULL, code INTEGER NOT NULL,
        value DOUBLE NOT NULL, unit VARCHAR NOT NULL, flags INTEGER NOT NULL,
        PRIMARY KEY (device, metric, bed_key))""",
    """CREATE TABLE events (device VARCHAR NOT NULL, stream VARCHAR NOT NULL, seq BIGINT NOT NULL,
        kind VARCHAR NOT NULL, ts BIGINT NOT NULL, bed VARCHAR, body BLOB NOT NULL,
        PRIMARY KEY (device, stream, seq))""",
    # Observations of two streams with a gap, and their latest rows as schema 1 kept them.
    "INSERT INTO observations SELECT 'm0', 's', i, 1000 + i, 'HR', 7, 60 + i, '/min', 'b0', NULL, 0 "
    "FROM range(50) t(i) WHERE i <> 20",
    "INSERT INTO observations VALUES ('m1', 'n', 4, 900, 'RR', 8, 12, '/min', NULL, 5, 2)",
    "INSERT INTO latest VALUES ('m0', 'HR', 'b:b0', 'b0', 's', 49, 1049, 7, 109, '/min', 0), "
    "('m1', 'RR', '', NULL, 'n', 4, 900, 8, 12, '/min', 2)",
)


def test_a_schema_1_file_is_upgraded_at_open(tmp_path: Path) -> None:
    path = tmp_path / "v1.duckdb"
    conn = duckdb.connect(str(path))
    for statement in SCHEMA_1:  # the layout before schema 2, without the later containment column
        conn.execute(statement)
    conn.close()
    store = DuckDbStore(path)
    try:
        assert store.stats().observations == 50
        assert [(x.value, x.ts) for x in store.latest(bed="b0")] == [(109.0, 1049)]
        assert [(x.metric, x.flags, x.bed) for x in store.latest(device="m1")] == [("RR", 2, None)]
        old = [ob("m0", q, 1000 + q) for q in range(50)] + [ob("m1", 4, 900, stream="n")]
        assert store.write(old).stored == 1  # only the gap at seq 20 was missing
        assert store.write([ob("m0", 50, 2000, 70.0)]).stored == 1
        assert store.latest(bed="b0")[0].value == 70.0
        assert [p.ts for p in store.history(bed="b0", metric="HR", start_ms=0, end_ms=1005)] == [1000, 1001, 1002,
                                                                                                   1003, 1004]
    finally:
        store.close()
    again = DuckDbStore(path)  # the current schema now: opens as it is
    try:
        assert again.write([ob("m0", 50, 2000)]).duplicates == 1
        assert again.stats().observations == 52
    finally:
        again.close()
    conn = duckdb.connect(str(path))
    try:
        assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        conn.close()


def test_a_failed_commit_reloads_the_index_from_the_file(tmp_path: Path) -> None:
    store = DuckDbStore(tmp_path / "stale.duckdb")
    try:
        store.write([ob("m0", q, T0 + q) for q in range(5)])
        store._stale = True  # what a COMMIT that raised leaves behind: the file decides
        store._keys = KeyIndex()
        assert store.write([ob("m0", q, T0 + q) for q in range(8)]).stored == 3
        assert store.latest(bed="b0")[0].ts == T0 + 7
    finally:
        store.close()


# --- events: keyed by the event key index, not by a DuckDB primary key ------------------------------


def test_events_have_no_duckdb_index_that_grows_with_them(tmp_path: Path) -> None:
    # DuckDB keeps a primary key's ART nodes in memory outside memory_limit until the file is reopened (~12 B per
    # event stored): the events table must have no key and no index, and storing events must not grow ART memory.
    def art_bytes(conn: duckdb.DuckDBPyConnection) -> int:
        [(used,)] = conn.execute("SELECT memory_usage_bytes FROM duckdb_memory() WHERE tag = 'ART_INDEX'").fetchall()
        return int(used)

    store = DuckDbStore(tmp_path / "ev.duckdb")
    try:
        conn = store._conn
        before = art_bytes(conn)
        for b in range(20):
            assert store.write([TagRead(device="r", stream="tags", seq=b * 1000 + i, ts=T0 + i, tag="t", rssi=-1.0)
                                for i in range(1000)]).stored == 1000
        assert art_bytes(conn) == before  # meta's key only (a fixed block), nothing per event
        assert conn.execute("SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 'events' "
                            "AND constraint_type <> 'NOT NULL'").fetchall() == []
        assert conn.execute("SELECT index_name FROM duckdb_indexes() WHERE table_name = 'events'").fetchall() == []
        assert store.stats().events == 20_000
    finally:
        store.close()
    # The same check sees the schema-2 table's key: inserting into it allocates ART memory.
    keyed = duckdb.connect(str(tmp_path / "keyed.duckdb"))
    try:
        keyed.execute(SCHEMA_2[5])
        before = art_bytes(keyed)
        keyed.execute("INSERT INTO events SELECT 'r', 'tags', i, 'tag', i, NULL, 'x'::BLOB FROM range(20000) t(i)")
        assert art_bytes(keyed) > before
    finally:
        keyed.close()


def test_an_observation_and_an_event_with_one_key_are_both_stored_as_in_the_twin(tmp_path: Path) -> None:
    # Observations and events are two key spaces in every store (two tables, each keyed): so are the two indexes.
    items: list[Record] = [ob("m0", 1, T0), DeviceEvent(device="m0", stream="s", seq=1, ts=T0, event="x",
                                                         alarm_kind="technical", priority="low")]
    store, twin = DuckDbStore(tmp_path / "k.duckdb"), MemoryStore()
    try:
        assert store.write(items) == twin.write(items)
        assert store.write(items) == twin.write(items)
        assert (store.stats().observations, store.stats().events) == (1, 1)
    finally:
        store.close()


def test_an_event_replayed_after_retention_deleted_it_stays_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "r.duckdb"
    retention = Retention(raw_days=1, rollup_days=10, events_days=10)
    old = [TagRead(device="r", stream="tags", seq=q, ts=T0 + q, tag="t", rssi=-1.0) for q in range(5)]
    store = DuckDbStore(path, retention=retention)
    store.write(old)
    assert store.maintain(T0 + 11 * DAY_MS).deleted == 5
    assert (store.write(old).duplicates, store.stats().events) == (5, 0)  # the index keeps the deleted rows' keys
    store.close()
    again = DuckDbStore(path, retention=retention)
    try:
        assert again.write(old).duplicates == 5
        assert again.write([TagRead(device="r", stream="tags", seq=5, ts=T0, tag="t", rssi=-1.0)]).stored == 1
    finally:
        again.close()


# --- schema 2 -------------------------------------------------------------------------------------

SCHEMA_2 = (
    "CREATE TABLE meta (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
    """CREATE TABLE observations (device VARCHAR NOT NULL, stream VARCHAR NOT NULL, seq BIGINT NOT NULL,
        ts BIGINT NOT NULL, metric VARCHAR NOT NULL, code INTEGER NOT NULL, value DOUBLE NOT NULL,
        unit VARCHAR NOT NULL, bed VARCHAR, device_ts BIGINT, flags INTEGER NOT NULL, containment VARCHAR,
        wb BIGINT)""",
    """CREATE TABLE latest (device VARCHAR NOT NULL, metric VARCHAR NOT NULL, bed_key VARCHAR NOT NULL,
        bed VARCHAR, stream VARCHAR NOT NULL, seq BIGINT NOT NULL, ts BIGINT NOT NULL, code INTEGER NOT NULL,
        value DOUBLE NOT NULL, unit VARCHAR NOT NULL, flags INTEGER NOT NULL)""",
    """CREATE TABLE seq_ranges (device VARCHAR NOT NULL, stream VARCHAR NOT NULL, lo BIGINT NOT NULL,
        hi BIGINT NOT NULL)""",
    "INSERT INTO meta VALUES ('schema_version', 2), ('snapshot_wb', 1)",
    """CREATE TABLE events (device VARCHAR NOT NULL, stream VARCHAR NOT NULL, seq BIGINT NOT NULL,
        kind VARCHAR NOT NULL, ts BIGINT NOT NULL, bed VARCHAR, body BLOB NOT NULL,
        PRIMARY KEY (device, stream, seq))""",
    """CREATE TABLE rollup_1m (device VARCHAR NOT NULL, metric VARCHAR NOT NULL, bed_key VARCHAR NOT NULL,
        bed VARCHAR, minute BIGINT NOT NULL, v_sum DOUBLE NOT NULL, v_min DOUBLE NOT NULL, v_max DOUBLE NOT NULL,
        n BIGINT NOT NULL, PRIMARY KEY (device, metric, bed_key, minute))""",
    "CREATE SEQUENCE quarantine_id",
    """CREATE TABLE quarantine (id BIGINT NOT NULL DEFAULT nextval('quarantine_id'), ts BIGINT NOT NULL,
        source VARCHAR NOT NULL, reason VARCHAR NOT NULL, raw BLOB NOT NULL)""",
    # Observations of batch 1 (in the snapshot: seq_ranges, latest) and batch 2 (after it).
    "INSERT INTO observations SELECT 'm0', 's', i, 1000 + i, 'HR', 7, 60 + i, '/min', 'b0', NULL, 0, NULL, "
    "CASE WHEN i < 10 THEN 1 ELSE 2 END FROM range(15) t(i)",
    "INSERT INTO seq_ranges VALUES ('m0', 's', 0, 9)",
    "INSERT INTO latest VALUES ('m0', 'HR', 'b:b0', 'b0', 's', 9, 1009, 7, 69, '/min', 0)",
)


def schema_2_events() -> list[Record]:
    """Events of every kind as a schema-2 store kept them: dense tag reads, sparse placements and gap events."""
    tags: list[Record] = [TagRead(device="r1", stream="tags", seq=q, ts=T0 + q, tag=f"t{q % 3}", rssi=-60.0)
                          for q in range(1, 41) if q != 17]
    placements: list[Record] = [Placement(device="pump-7", stream="location", seq=(T0 + k * 60_000) * 8 + k % 2,
                                          ts=T0 + k * 60_000, event="entered", room=f"room{k}") for k in range(6)]
    gaps: list[Record] = [DeviceEvent(device="m0", stream="ingest.gap.s", seq=first, ts=T0 + first, event="data.gap",
                                      alarm_kind="technical", priority="medium", bed="b0") for first in (20, 95, 400)]
    info: list[Record] = [DeviceInfo(device="m0", stream="device", seq=1, ts=T0, driver="hl7", bed="b0")]
    return [*tags, *placements, *gaps, *info]


def test_a_schema_2_file_with_events_is_upgraded_at_open(tmp_path: Path) -> None:
    path = tmp_path / "v2.duckdb"
    events = schema_2_events()
    conn = duckdb.connect(str(path))
    for statement in SCHEMA_2:  # the layout before schema 3: events keyed by DuckDB
        conn.execute(statement)
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [[e.device, e.stream, e.seq, event_kind(e), e.ts, item_bed(e), encode_event(e)] for e in events])
    conn.close()
    twin = MemoryStore()
    twin.write([ob("m0", q, 1000 + q, 60.0 + q) for q in range(15)])
    twin.write(events)
    store = DuckDbStore(path)
    try:
        assert (store.stats().observations, store.stats().events) == (15, len(events))
        assert all_events(store) == all_events(twin)  # every event kept, bodies intact
        assert store.write(events).duplicates == len(events)  # replays refused
        assert store.write([ob("m0", q, 1000 + q) for q in range(15)]).duplicates == 15
        assert [(x.value, x.ts, x.code) for x in store.latest(bed="b0")] == [(74.0, 1014, 7)]  # batch 2's newest
        new = [TagRead(device="r1", stream="tags", seq=17, ts=T0 + 17, tag="t2", rssi=-60.0),  # the gap in the run
               TagRead(device="r1", stream="tags", seq=41, ts=T0 + 41, tag="t2", rssi=-60.0)]
        assert store.write([*new, *events]) == twin.write([*new, *events])
    finally:
        store.close()
    conn = duckdb.connect(str(path))
    try:
        assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 'events' "
                            "AND constraint_type <> 'NOT NULL'").fetchall() == []
        assert conn.execute("SELECT count(*) FROM events WHERE wb IS NULL").fetchall() == [(0,)]  # adopted
        runs = conn.execute("SELECT device, stream, lo, hi FROM event_ranges ORDER BY ALL").fetchall()
    finally:
        conn.close()
    assert ("r1", "tags", 1, 41) in runs  # the seq-17 gap filled: one run
    assert len(runs) == 1 + 6 + 3 + 1  # placements and gap events are sparse: a run per key
    again = DuckDbStore(path)  # from the snapshot: no row read back
    try:
        assert again.write([*new, *events]).duplicates == len(events) + 2
    finally:
        again.close()


SCHEMA_3_ROWS = (  # two series of one stream, one with no bed and a containment, one row past the snapshot
    ("m0", "s", 0, 1000, "HR", 7, 60.0, "/min", "b0", None, 0, None, 1),
    ("m0", "s", 1, 1000, "SPO2", 8, 97.0, "%", "b0", 990, 0, None, 1),
    ("m0", "s", 2, 2000, "HR", 7, 61.0, "/min", "b0", None, 4, None, 2),
    ("m1", "n", 5, 1500, "RR", 9, 12.0, "/min", None, None, 0, "1.2.1.3", 2),
)


def test_a_schema_3_file_is_upgraded_to_series_and_samples(tmp_path: Path) -> None:
    path = tmp_path / "v3.duckdb"
    conn = duckdb.connect(str(path))
    for statement in SCHEMA_2[:4]:  # meta, observations with every text column per row, latest, seq_ranges
        conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', 3), ('snapshot_wb', 1)")
    conn.execute("CREATE TABLE event_ranges (device VARCHAR NOT NULL, stream VARCHAR NOT NULL, lo BIGINT NOT NULL, "
                 "hi BIGINT NOT NULL)")
    conn.execute("CREATE TABLE events (device VARCHAR NOT NULL, stream VARCHAR NOT NULL, seq BIGINT NOT NULL, "
                 "kind VARCHAR NOT NULL, ts BIGINT NOT NULL, bed VARCHAR, body BLOB NOT NULL, wb BIGINT)")
    for statement in SCHEMA_2[6:]:
        if statement.startswith("CREATE"):  # rollup_1m, quarantine: not schema 2's rows
            conn.execute(statement)
    conn.executemany("INSERT INTO observations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", SCHEMA_3_ROWS)
    conn.execute("INSERT INTO seq_ranges VALUES ('m0', 's', 0, 1)")
    conn.execute("INSERT INTO rollup_1m VALUES ('m0', 'HR', 'b:b0', 'b0', 0, 120, 59, 61, 2)")
    conn.execute("INSERT INTO latest VALUES ('m0', 'HR', 'b:b0', 'b0', 's', 0, 1000, 7, 60, '/min', 0), "
                 "('m0', 'SPO2', 'b:b0', 'b0', 's', 1, 1000, 8, 97, '%', 0)")
    conn.close()
    store = DuckDbStore(path)
    try:
        assert store.stats().observations == 4
        assert [(x.metric, x.value) for x in store.latest(bed="b0")] == [("HR", 61.0), ("SPO2", 97.0)]
        assert [(x.metric, x.value) for x in store.latest(device="m1")] == [("RR", 12.0)]
        assert store.write([ob("m0", q, 1000) for q in range(3)]).duplicates == 3  # every key kept
        again = msgspec.structs.replace(ob("m0", 3, 3000, 62.0), code=7)
        assert store.write([again]).stored == 1  # a new row of a series the upgrade numbered
    finally:
        store.close()
    conn = duckdb.connect(str(path))
    try:
        assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchall() == [(SCHEMA_VERSION,)]
        rows = conn.execute("SELECT * FROM observations WHERE seq < 3 OR device = 'm1' ORDER BY ALL").fetchall()
        series = conn.execute("SELECT sid, device, metric, code FROM series ORDER BY sid").fetchall()
        assert conn.execute("SELECT * FROM rollup_1m").fetchall() == [("m0", "HR", "b:b0", "b0", 0, 120, 59, 61, 2)]
        assert conn.execute("SELECT constraint_type FROM duckdb_constraints() WHERE constraint_type <> 'NOT NULL'"
                            ).fetchall() == [("PRIMARY KEY",)]  # meta's, and no other: nothing indexed per row
    finally:
        conn.close()
    assert rows == sorted(SCHEMA_3_ROWS)  # every column of every row as it was, batch numbers too
    # Each series once: the upgrade's three, then the replay's (its code 0 makes it a series of its own).
    assert sorted(s[1:] for s in series[:3]) == [("m0", "HR", 7), ("m0", "SPO2", 8), ("m1", "RR", 9)]
    assert series[3:] == [(3, "m0", "HR", 0)]


def test_series_codes_follow_commits(tmp_path: Path) -> None:
    """A batch that fails leaves no code behind in memory: the next one, and a reopen, agree with the file."""
    path = tmp_path / "codes.duckdb"
    store = DuckDbStore(path)
    try:
        store.write([ob("m0", 0, T0)])
        bad = msgspec.structs.replace(ob("m9", 0, T0), code=2**40)  # past INTEGER: the series insert fails
        with pytest.raises(StoreError):
            store.write([ob("m1", 0, T0), bad])
        assert len(store._codes) == 1
        assert store.write([ob("m1", 0, T0, 70.0), ob("m2", 0, T0)]).stored == 2
        assert store.history(device="m1", metric="HR", start_ms=0, end_ms=2 * T0)[0].value == 70.0
    finally:
        store.close()
    again = DuckDbStore(path)
    try:
        assert len(again._codes) == 3
        assert again.write([ob("m2", 1, T0 + 1)]).stored == 1
        assert [p.value for p in again.history(device="m2", metric="HR", start_ms=0, end_ms=2 * T0)] == [1.0, 1.0]
    finally:
        again.close()
