"""The facilities service's core on a real SQLite state: status from telemetry, locations, alerts, par, restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.contract import Observation, TagRead
from devices.site import Site, site_from_dict
from facilities.assets import utilisation
from facilities.history import placement_at, placements
from facilities.service import FacilitiesService, FacilitiesSettings
from state.assets import Asset, AssetEvent
from state.db import State, open_state
from storage.memory import MemoryStore

T0 = 1_767_225_600_000
SITE = {
    "id": "test", "name": "test hospital",
    "units": [{"id": "W3", "name": "3 West", "beds": ["W3-01"]}, {"id": "ICU", "name": "ICU", "beds": ["ICU-01"]}],
    "gateways": [{"id": "gw-w3", "unit": "W3"}],
    "rooms": [{"id": "A3-W3-R01", "unit": "W3", "zone": "W3", "floor": "A3"},
              {"id": "A3-W3-R02", "unit": "W3", "zone": "W3", "floor": "A3"},
              {"id": "A2-ICU-R01", "unit": "ICU", "zone": "ICU", "floor": "A2"},
              {"id": "A1-MAIN-EXIT", "zone": "exits", "floor": "A1", "exit": True}],
    "devices": [{"id": "rdr-1", "kind": "rfid_mqtt", "gateway": "gw-w3", "room": "A3-W3-R01"},
                {"id": "rdr-2", "kind": "rfid_mqtt", "gateway": "gw-w3", "room": "A3-W3-R02"},
                {"id": "rdr-icu", "kind": "rfid_mqtt", "gateway": "gw-w3", "room": "A2-ICU-R01"},
                {"id": "rdr-exit", "kind": "rfid_mqtt", "gateway": "gw-w3", "room": "A1-MAIN-EXIT"},
                {"id": "pump-w3-01", "kind": "modbus_pump", "gateway": "gw-w3", "bed": "W3-01"}],
}
SETTINGS = FacilitiesSettings(site_map="", lost_after_s=600, lost_after_s_by_type={"wheelchair": 60},
                              max_speed_mps=100.0)


@pytest.fixture
def site() -> Site:
    return site_from_dict(SITE)


@pytest.fixture
def state(tmp_path: Path, site: Site) -> Iterator[State]:
    opened = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    opened.registry.seed_from_site(site, T0)
    opened.assets.upsert("pump-7", now=T0, tag="E2000007", type="infusion_pump", unit="W3", device="pump-w3-01")
    opened.assets.upsert("wc-1", now=T0, tag="AC233F000001", type="wheelchair", unit="W3")
    yield opened
    opened.close()


def tag(reader: str, tag_id: str, ts: int, rssi: float = -50.0, battery: float | None = None) -> TagRead:
    return TagRead(device=reader, stream="tags", seq=ts, ts=ts, tag=tag_id, rssi=rssi, battery=battery)


def pump_state(value: float, ts: int) -> Observation:
    return Observation(device="pump-w3-01", stream="pump", seq=ts, ts=ts, metric="WARDLINK_PUMP_STATE",
                       value=value, unit="1")


def walk(reader: str, tag_id: str, start: int, seconds: int) -> list[TagRead]:
    return [tag(reader, tag_id, start + i * 1000) for i in range(seconds)]


def test_a_pump_infusing_is_in_use_then_dirty_and_utilisation_follows(site: Site, state: State) -> None:
    service = FacilitiesService(site, state, settings=SETTINGS)
    service.handle([pump_state(0, T0 + 1000)], T0)  # stopped and clean: nothing to change
    assert state.assets.get("pump-7").status == "clean"  # type: ignore[union-attr]
    service.handle([pump_state(1, T0 + 10_000), pump_state(2, T0 + 20_000)], T0)  # infusing, paused: in use
    assert state.assets.get("pump-7").status == "in_use"  # type: ignore[union-attr]
    service.handle([pump_state(0, T0 + 40_000)], T0)  # stopped after use: must be cleaned
    assert state.assets.get("pump-7").status == "dirty"  # type: ignore[union-attr]
    state.assets.upsert("pump-7", now=T0 + 50_000, status="in_repair")
    service.reload()
    service.handle([pump_state(1, T0 + 60_000)], T0)
    assert state.assets.get("pump-7").status == "in_repair"  # type: ignore[union-attr]  # never by telemetry
    lines = state.assets.history(start=T0, end=T0 + 100_000, event="status")
    assert [(e.ts, e.status) for e in lines] == [(T0 + 10_000, "in_use"), (T0 + 40_000, "dirty"),
                                                 (T0 + 50_000, "in_repair")]
    used = utilisation(state.assets.list(), lines, state.assets.status_before(T0), T0, T0 + 100_000)
    pumps = next(u for u in used if u.type == "infusion_pump")
    assert (pumps.unit, pumps.assets, pumps.in_use_ms, pumps.ratio) == ("W3", 1, 30_000, 0.3)


def test_locations_reach_the_state_and_history_the_store(site: Site, state: State) -> None:
    store = MemoryStore()  # the twin; tests/test_facilities_history.py runs DuckDB, SQLite and VictoriaMetrics
    service = FacilitiesService(site, state, settings=SETTINGS, store=store)
    assert service.handle(walk("rdr-1", "E2000007", T0, 20) + walk("rdr-2", "E2000007", T0 + 20_000, 20), T0) == []
    assert service.flush() == 1
    where = state.assets.location("pump-7")
    assert where is not None
    assert (where.room, where.zone, where.floor, where.source, where.lost) == ("A3-W3-R02", "W3", "A3", "rdr-2",
                                                                                 False)
    assert T0 + 20_000 < where.since < T0 + 35_000
    assert where.last_seen == T0 + 39_000
    assert service.write_history() == 3
    history = placements(store, "pump-7", T0, T0 + 60_000)
    assert [(e.event, e.room) for e in history] == [("entered", "A3-W3-R01"), ("left", "A3-W3-R01"),
                                                    ("entered", "A3-W3-R02")]
    was = placement_at(store, "pump-7", T0 + 15_000)
    assert was is not None
    assert (was.event, was.room) == ("entered", "A3-W3-R01")
    assert placement_at(store, "pump-7", T0 - 1) is None
    assert [a.id for a in state.assets.list(room="A3-W3-R02")] == ["pump-7"]
    assert state.assets.location("wc-1") is None  # never seen


def test_exit_lost_and_battery_alerts_raise_and_resolve(site: Site, state: State) -> None:
    service = FacilitiesService(site, state, settings=SETTINGS)
    stored = service.stored  # the core step the bus adapter runs
    assert stored(lambda: service.handle(walk("rdr-1", "AC233F000001", T0, 6), T0)) == []
    exit_alerts = stored(lambda: service.handle(walk("rdr-exit", "AC233F000001", T0 + 6_000, 14), T0))
    assert [(a.type, a.state, a.priority, a.source, a.unit) for a in exit_alerts] == [
        ("asset.exit", "active", "high", "wc-1", "W3")]
    assert "A1-MAIN-EXIT" in exit_alerts[0].message
    back = stored(lambda: service.handle(walk("rdr-1", "AC233F000001", T0 + 20_000, 14), T0))
    assert [(a.type, a.state) for a in back] == [("asset.exit", "resolved")]
    # Not seen for the wheelchair timeout (60 s): lost once, found again on reads that place it.
    last = T0 + 33_000
    assert stored(lambda: service.tick(last + 59_000)) == []
    lost = stored(lambda: service.tick(last + 60_000))
    assert [(a.type, a.state, a.source) for a in lost] == [("asset.lost", "active", "wc-1")]
    assert stored(lambda: service.tick(last + 120_000)) == []
    found = stored(lambda: service.handle(walk("rdr-2", "AC233F000001", last + 130_000, 6), T0))
    assert [(a.type, a.state) for a in found] == [("asset.lost", "resolved")]
    # Battery: low once (not per read), resolved once charged again.
    low = stored(lambda: service.handle([tag("rdr-2", "AC233F000001", last + 136_000 + i, battery=15)
                                         for i in range(3)], T0))
    assert [(a.type, a.state, a.value) for a in low] == [("tag.battery_low", "active", 15.0)]
    assert stored(lambda: service.handle([tag("rdr-2", "AC233F000001", last + 140_000, battery=25)], T0)) == []
    charged = stored(lambda: service.handle([tag("rdr-2", "AC233F000001", last + 150_000, battery=95)], T0))
    assert [(a.type, a.state) for a in charged] == [("tag.battery_low", "resolved")]
    assert state.alerts.open() == []
    assert {a.type for a in state.alerts.log()} == {"asset.exit", "asset.lost", "tag.battery_low"}


def test_par_level_shortfall_raises_and_clears(site: Site, state: State) -> None:
    service = FacilitiesService(site, state, settings=SETTINGS)
    state.assets.set_par("W3", "wheelchair", 2, now=T0)
    state.assets.set_par("ICU", "infusion_pump", 1, now=T0)
    service.handle(walk("rdr-icu", "E2000007", T0, 6), T0)  # the W3 pump is in the ICU: counts for the ICU
    service.flush()
    alerts = {a.id: a for a in service.stored(lambda: service.check_par(T0 + 1))}
    assert set(alerts) == {"fac.par.W3.wheelchair"}
    assert (alerts["fac.par.W3.wheelchair"].value, alerts["fac.par.W3.wheelchair"].state) == (1.0, "active")
    assert service.stored(lambda: service.check_par(T0 + 2)) == []  # unchanged: no repeat
    state.assets.upsert("wc-2", now=T0, tag="AC233F000002", type="wheelchair", unit="W3")
    cleared = service.stored(lambda: service.check_par(T0 + 3))
    assert [(a.id, a.state) for a in cleared] == [("fac.par.W3.wheelchair", "resolved")]
    state.assets.upsert("pump-7", now=T0, status="dirty")  # a dirty pump is not available
    short = service.stored(lambda: service.check_par(T0 + 4))
    assert [(a.id, a.value) for a in short] == [("fac.par.ICU.infusion_pump", 0.0)]


def test_restart_keeps_locations_and_open_alerts(site: Site, state: State) -> None:
    store = MemoryStore()
    first = FacilitiesService(site, state, settings=SETTINGS, store=store)
    first.stored(lambda: first.handle(walk("rdr-exit", "E2000007", T0, 6), T0))
    first.flush()
    first.write_history()
    second = FacilitiesService(site, state, settings=SETTINGS, store=store)
    assert set(second.alarms.open) == {"fac.exit.pump-7"}
    assert second.handle(walk("rdr-exit", "E2000007", T0 + 6000, 3), T0) == []  # no new entry, no new alert
    second.flush()
    second.write_history()
    assert [e.event for e in placements(store, "pump-7", T0, T0 + 10_000)] == ["entered"]


def test_utilisation_counts_time_in_use_within_the_period() -> None:
    assets = [Asset("p1", "t1", "infusion_pump", "clean", "ICU", None, T0),
              Asset("p2", "t2", "infusion_pump", "clean", "ICU", None, T0),
              Asset("w1", "t3", "wheelchair", "clean", "W3", None, T0)]
    lines = [AssetEvent("p2", T0 + 250, "status", status="dirty"),
             AssetEvent("p1", T0 + 500, "status", status="in_use"),
             AssetEvent("p1", T0 + 2_000, "status", status="dirty")]  # after the period
    used = {(u.type, u.unit): u for u in utilisation(assets, lines, {"p2": "in_use"}, T0, T0 + 1000)}
    assert used["infusion_pump", "ICU"].in_use_ms == 250 + 500
    assert used["infusion_pump", "ICU"].ratio == 0.375
    assert used["wheelchair", "W3"].ratio == 0.0
    with pytest.raises(ValueError, match="period"):
        utilisation(assets, lines, {}, T0, T0)
