"""DuckDbStore's key index and in-memory latest: duplicates, snapshots, crashes, and files of schema 1."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.contract import Observation
from storage import DuckDbStore, MemoryStore
from storage.base import DAY_MS, Retention
from storage.ranges import KeyIndex, SeqRuns

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_040_000
TARGETS: tuple[tuple[str | None, str | None], ...] = (("b0", None), ("b1", None), (None, "m2"), ("b0", "m0"))


def ob(device: str, seq: int, ts: int, value: float = 1.0, *, stream: str = "s", metric: str = "HR",
       bed: str | None = "b0") -> Observation:
    return Observation(device=device, stream=stream, seq=seq, ts=ts, metric=metric, value=value, unit="/min",
                       bed=bed)


def stored_keys(path: Path) -> list[tuple[str, str, int]]:
    """Every observation key in the file, with repeats (the store must be closed)."""
    conn = duckdb.connect(str(path))
    try:
        return [tuple(row) for row in conn.execute("SELECT device, stream, seq FROM observations").fetchall()]
    finally:
        conn.close()


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
        keep, pieces = index.filter(np.array([k[0] for k in batch], dtype=object),
                                    np.array([k[1] for k in batch], dtype=object),
                                    np.array([k[2] for k in batch], dtype=np.int64))
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
    conn.execute("INSERT INTO observations (device, stream, seq, ts, metric, code, value, unit, bed, flags) "
                 "SELECT 'm0', 's', i, 1000 + i, 'HR', 0, i, '/min', 'b0', 0 FROM range(100) t(i)")
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
from test_duckdb_store import WRITTEN, random_batches
store = DuckDbStore(sys.argv[1], snapshot_rows=int(sys.argv[2]))
for i, batch in enumerate(random_batches(7, WRITTEN, 40)):
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
    keys = stored_keys(path)
    assert len(keys) == len(set(keys))  # none doubled, even in the file left by the crash
    batches = random_batches(7, WRITTEN + 1, 40)
    committed = next(n for n in range(acknowledged + 1, WRITTEN + 1)
                     if set(keys) == {(o.device, o.stream, o.seq) for b in batches[:n] for o in b})
    twin = MemoryStore()
    for batch in batches[:committed]:
        twin.write(batch)
    store = DuckDbStore(path, snapshot_rows=snapshot_rows)
    try:
        for bed, device in TARGETS:
            assert store.latest(bed=bed, device=device) == twin.latest(bed=bed, device=device)
        for batch in batches[:committed]:
            assert store.write(batch).stored == 0  # every acknowledged key is still known
        assert store.write(batches[committed]) == twin.write(batches[committed])
        assert store.stats().observations == twin.stats().observations
    finally:
        store.close()
    keys = stored_keys(path)
    assert len(keys) == len(set(keys))


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
    again = DuckDbStore(path)  # schema 2 now: opens as it is
    try:
        assert again.write([ob("m0", 50, 2000)]).duplicates == 1
        assert again.stats().observations == 52
    finally:
        again.close()
    conn = duckdb.connect(str(path))
    try:
        assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchall() == [(2,)]
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
