"""Location history in the time-series store: the facilities service's placements on DuckDB, SQLite and
VictoriaMetrics (a real server), "where was it at T" answered from the store, retries and the bounded buffer."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from devices.site import Site
from facilities.history import placement_at, placements
from facilities.service import FacilitiesService
from state.db import State
from storage.base import Placement, StoreUnavailable, TimeSeriesStore
from storage.duckdb import DuckDbStore
from storage.memory import MemoryStore
from storage.sqlite import SqliteStore
from storage.victoria import VictoriaStore
from tests.test_facilities_service import SETTINGS, T0, site, state, walk  # noqa: F401  (fixtures)
from tests.victoria import VictoriaMetrics

DAY = 86_400_000


@pytest.fixture(params=["duckdb", "sqlite", "victoria"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TimeSeriesStore]:
    server: VictoriaMetrics | None = None
    opened: TimeSeriesStore
    if request.param == "duckdb":
        opened = DuckDbStore(tmp_path / "ts.duckdb")
    elif request.param == "sqlite":
        opened = SqliteStore(tmp_path / "ts.db")
    else:
        server = VictoriaMetrics(tmp_path)
        server.start()
        opened = VictoriaStore(server.url, tmp_path / "events.db", connect_timeout_s=1.0, read_timeout_s=3.0)
    yield opened
    opened.close()
    if server is not None:
        server.stop()


def test_where_was_it_at_t_is_answered_from_the_store(site: Site, state: State, store: TimeSeriesStore) -> None:  # noqa: F811
    service = FacilitiesService(site, state, settings=SETTINGS, store=store)
    service.handle(walk("rdr-1", "E2000007", T0, 20) + walk("rdr-2", "E2000007", T0 + 20_000, 20), T0)
    assert service.flush() == 1
    assert service.write_history() == 3
    lines = placements(store, "pump-7", T0, T0 + 60_000)
    assert [(p.event, p.room, p.zone, p.floor, p.source) for p in lines] == [
        ("entered", "A3-W3-R01", "W3", "A3", "rdr-1"), ("left", "A3-W3-R01", "W3", "A3", "rdr-1"),
        ("entered", "A3-W3-R02", "W3", "A3", "rdr-2")]
    first, left, moved = lines
    assert first.ts == T0 + 5000  # 3 reads spanning 5 s
    assert left.ts == moved.ts
    assert all(0.5 < p.confidence <= 1.0 for p in (first, moved))
    assert state.assets.history(start=T0, end=T0 + 60_000, asset="pump-7") == []  # not in the state any more
    assert placement_at(store, "pump-7", T0 + 4_999) is None  # not placed yet
    then = placement_at(store, "pump-7", T0 + 15_000)
    assert then is not None
    assert (then.event, then.room, then.ts) == ("entered", "A3-W3-R01", first.ts)
    at_move = placement_at(store, "pump-7", moved.ts)
    assert at_move is not None
    assert (at_move.event, at_move.room) == ("entered", "A3-W3-R02")  # left sorts before entered
    later = placement_at(store, "pump-7", T0 + 200 * DAY)  # found through the growing look-back windows
    assert later == moved
    # A retried write (a lost acknowledgement) stores nothing twice.
    assert store.write(lines).duplicates == 3


def test_lost_is_recorded_and_answers_with_the_last_room(site: Site, state: State, store: TimeSeriesStore) -> None:  # noqa: F811
    service = FacilitiesService(site, state, settings=SETTINGS, store=store)
    service.handle(walk("rdr-2", "E2000007", T0, 10), T0)
    service.tick(T0 + 9_000 + 600_000)
    assert service.write_history() == 2
    lost = placement_at(store, "pump-7", T0 + DAY)
    assert lost is not None
    assert (lost.event, lost.room, lost.ts, lost.confidence) == ("lost", "A3-W3-R02", T0 + 609_000, 0.0)


def test_a_busy_store_keeps_the_history_for_the_next_write(site: Site, state: State, tmp_path: Path) -> None:  # noqa: F811
    store = SqliteStore(tmp_path / "ts.db", busy_timeout_s=0.2)
    other = sqlite3.connect(tmp_path / "ts.db", isolation_level=None)
    try:
        service = FacilitiesService(site, state, settings=SETTINGS, store=store)
        service.handle(walk("rdr-1", "E2000007", T0, 6), T0)
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable):
            service.write_history()
        assert (len(service.history), service.counters["history_retry"]) == (1, 1)
        other.execute("COMMIT")
        assert service.write_history() == 1
        assert [p.room for p in placements(store, "pump-7", T0, T0 + DAY)] == ["A3-W3-R01"]
        assert len(service.history) == 0
    finally:
        other.close()
        store.close()


def test_the_history_buffer_is_bounded_and_counts_what_it_drops(site: Site, state: State) -> None:  # noqa: F811
    store = MemoryStore()
    service = FacilitiesService(site, state, settings=msgspec.structs.replace(SETTINGS, history_buffer=2), store=store)
    service.handle(walk("rdr-1", "E2000007", T0, 20) + walk("rdr-2", "E2000007", T0 + 20_000, 20), T0)
    assert service.counters["history_dropped"] == 1  # entered, left, entered: the oldest went
    assert service.write_history() == 2
    kept = placements(store, "pump-7", T0, T0 + DAY)
    assert [(p.event, p.room) for p in kept] == [("left", "A3-W3-R01"), ("entered", "A3-W3-R02")]


def test_a_placement_the_store_cannot_hold_is_refused_with_its_asset_named() -> None:
    bad = Placement(device="pump-7", stream="location", seq=1, ts=T0, event="entered", room="A3-W3-R01",
                    confidence=float("nan"))
    with pytest.raises(ValueError, match="asset pump-7: field confidence"):
        MemoryStore().write([bad])
