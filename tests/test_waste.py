"""Medical-waste custody and alerts: simulated scan points on a real Mosquitto, through the waste driver, into
the tracker and the relational state (SQLite); time-driven rules with explicit times."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from devices.contract import Alert, Observation, WasteEvent
from devices.site import Site, Unit
from facilities.sitemap import load_site_map
from facilities.waste import HOUR_MS, WasteSettings, WasteTracker, retained_until
from gateway.drivers.waste_mqtt.driver import WasteMqttDriver
from simulators.modbus.devices import WasteStoreLogger
from simulators.mqtt_devices.waste import JOURNEY, ScanPointSim, WasteRound
from state.db import State, open_state
from tests.conftest import Mosquitto
from tests.test_driver_mqtt_devices import ListSink, connected, running, wait_for, waste_spec

CHINA = timezone(timedelta(hours=8))
SITE = Site(id="demo", name="demo", units=[Unit("ICU", "ICU", ["ICU-01"]), Unit("W3", "3 West", ["W3-01"])],
            gateways=[])


def at(day: int, hour: float) -> int:
    """Milliseconds of a local (UTC+8) time on January ``day``, 2026."""
    moment = datetime(2026, 1, day, tzinfo=CHINA) + timedelta(hours=hour)
    return int(moment.astimezone(UTC).timestamp() * 1000)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    relational = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    yield relational
    relational.close()


def scan(bag: str, point: str, ts: int, *, weight: float = 1000.0, handler: str = "", unit: str = "W3",
         manifest: str | None = None, category: str = "infectious") -> WasteEvent:
    return WasteEvent(device=f"wst-{point}", stream="waste", seq=0, ts=ts, bag=bag, category=category,  # type: ignore[arg-type]
                      weight_g=weight, point=point, handler=handler or f"H-{point}", unit=unit,  # type: ignore[arg-type]
                      manifest=manifest if manifest is not None else ("ZY-1" if point == "disposer" else None))


def types(alerts: list[Alert]) -> list[str]:
    return [a.type for a in alerts]


# -- the real path: simulators -> Mosquitto -> waste driver -> tracker -----------------------------------

@contextlib.asynccontextmanager
async def scan_points(mosquitto: Mosquitto) -> AsyncIterator[tuple[list[ScanPointSim], ListSink]]:
    """The four scan points of a bag's journey and their drivers on one broker."""
    sink = ListSink()
    drivers = [WasteMqttDriver(waste_spec(f"wst-{p}", {"broker": mosquitto.address.url, "point": p,
                                                        "topic": f"waste/wst-{p}/scan", "reconnect_max_s": 0.5}), sink)
               for p in JOURNEY]
    points = [ScanPointSim(f"wst-{p}", p, host="127.0.0.1", port=mosquitto.port, topic=f"waste/wst-{p}/scan",
                           seed=i + 3) for i, p in enumerate(JOURNEY)]
    async with running(*(d.run for d in drivers), *(p.run for p in points)):
        await connected(*drivers)
        await wait_for(lambda: all(p.connected for p in points), 5, "scan points online")
        yield points, sink


def feed(tracker: WasteTracker, sink: ListSink, start: int = 0) -> list[Alert]:
    """Hand the driver's waste events from ``start`` to the tracker, in the order the scans were made."""
    alerts: list[Alert] = []
    for event in sorted(sink.waste()[start:], key=lambda e: e.device_ts or 0):
        alerts += tracker.handle(event, event.ts)
    return alerts


async def test_honest_journeys_record_every_step_with_who_and_when_and_raise_nothing(
        mosquitto: Mosquitto, state: State) -> None:
    tracker = WasteTracker(SITE, state)
    async with scan_points(mosquitto) as (points, sink):
        waste_round = WasteRound(points, department="W3", seed=11)
        await waste_round.run(10, leg_s=0.1, between_s=0.0)  # legs are minutes on a real ward
        await wait_for(lambda: len(sink.waste()) == 40, 5, "every scan")
    alerts = feed(tracker, sink)
    assert alerts == [], "no weight alert within tolerance, no order alert for honest journeys"
    bags = sorted({e.bag for e in sink.waste()})
    assert len(bags) == 10
    for bag in bags:
        sealed = state.waste.bag(bag)
        assert sealed is not None
        assert sealed.unit == "W3"
        assert sealed.sealed_by == "N-1042"
        chain = state.waste.chain(bag)
        assert [(h.from_point, h.to_point) for h in chain] == [("ward", "collector"), ("collector", "storage"),
                                                                ("storage", "disposer")]
        assert [h.handler for h in chain] == ["C-0007", "S-0003", "DISP-LIC-4401"]
        assert chain[-1].manifest == f"ZY-{bag}"
        assert all(a.at <= b.at for a, b in itertools.pairwise(chain))
        weights = [sealed.weight_g, *(h.weight_g for h in chain)]
        assert max(weights) - min(weights) <= 0.02 * min(weights)
    assert state.waste.holding("storage") == []


async def test_intake_beyond_tolerance_is_flagged_and_a_skipped_point_is_caught(
        mosquitto: Mosquitto, state: State) -> None:
    tracker = WasteTracker(SITE, state)
    async with scan_points(mosquitto) as (points, sink):
        ward, collector, storage, disposer = points
        waste_round = WasteRound(points, department="W3", seed=5)
        heavy = waste_round.new_bag("infectious")
        ward.scan(heavy, "N-1042")
        await wait_for(lambda: len(sink.waste()) == 1, 5, "ward scan")  # a real leg takes minutes
        collector.scan(heavy, "C-0007")
        await wait_for(lambda: len(sink.waste()) == 2, 5, "collector scan")
        assert feed(tracker, sink) == []
        storage.scan(dataclasses.replace(heavy, weight_g=heavy.weight_g * 1.05), "S-0003")  # 5% more arrives
        await wait_for(lambda: len(sink.waste()) == 3, 5, "storage scan")
        flagged = feed(tracker, sink, 2)
        skipping = waste_round.new_bag("sharps")
        ward.scan(skipping, "N-1042")
        await wait_for(lambda: len(sink.waste()) == 4, 5, "ward scan")
        storage.scan(skipping, "S-0003")  # never scanned by a collector
        disposer.scan(heavy, "DISP-LIC-4401")
        await wait_for(lambda: len(sink.waste()) == 6, 5, "the rest")
        later = feed(tracker, sink, 3)
    assert types(flagged) == ["waste.weight_mismatch"]
    assert flagged[0].source == heavy.bag
    assert flagged[0].unit == "W3"
    assert 4.0 < (flagged[0].value or 0) < 6.0
    assert "intake flagged" in flagged[0].message
    assert len(state.waste.chain(heavy.bag)) == 3, "the flagged intake is still on record: the bag is there"
    assert types(later) == ["waste.missing_step"]
    assert later[0].source == skipping.bag
    assert "no collector scan" in later[0].message
    assert state.waste.chain(skipping.bag) == [], "a refused scan is not recorded"


def test_weight_limits_are_exact_at_the_tolerance(state: State) -> None:
    tracker = WasteTracker(SITE, state)
    t0 = at(5, 8)
    for bag, stored in (("B-IN", 1020.0), ("B-LOW", 980.0), ("B-OUT", 1020.5), ("B-NEG", 979.0)):
        tracker.handle(scan(bag, "ward", t0), t0)
        tracker.handle(scan(bag, "collector", t0 + 1), t0 + 1)
        alerts = tracker.handle(scan(bag, "storage", t0 + 2, weight=stored), t0 + 2)
        assert types(alerts) == ([] if bag in ("B-IN", "B-LOW") else ["waste.weight_mismatch"]), bag


def test_out_of_order_scans_and_repeated_deliveries(state: State) -> None:
    tracker = WasteTracker(SITE, state)
    t0 = at(5, 8)
    assert types(tracker.handle(scan("B1", "collector", t0), t0)) == ["waste.missing_step"]  # never sealed
    tracker.handle(scan("B2", "ward", t0), t0)
    collected = scan("B2", "collector", t0 + 1000)
    assert tracker.handle(collected, t0 + 1000) == []
    assert tracker.handle(collected, t0 + 2000) == [], "the same scan delivered twice is no new step"
    assert tracker.handle(scan("B2", "ward", t0), t0 + 2000) == [], "nor is the seal"
    tracker.handle(scan("B2", "storage", t0 + 3000), t0 + 3000)
    late = tracker.handle(scan("B2", "collector", t0 + 4000, handler="C-9"), t0 + 4000)
    assert types(late) == ["waste.out_of_order"]
    assert late[0].source == "B2"
    earlier = tracker.handle(scan("B2", "disposer", t0 + 2500), t0 + 5000)
    assert types(earlier) == ["waste.out_of_order"], "a step earlier than the one before"
    no_manifest = tracker.handle(scan("B2", "disposer", t0 + 6000, manifest=""), t0 + 6000)
    assert types(no_manifest) == ["waste.missing_step"]
    assert "manifest" in no_manifest[0].message
    assert [h.to_point for h in state.waste.chain("B2")] == ["collector", "storage", "disposer"]


def test_storage_beyond_48_hours_escalates_in_three_levels_and_resolves_when_disposed(state: State) -> None:
    tracker = WasteTracker(SITE, state)
    t0 = at(5, 8)
    tracker.handle(scan("B1", "ward", t0), t0)
    tracker.handle(scan("B1", "collector", t0 + 60_000), t0 + 60_000)
    stored = t0 + 120_000
    tracker.handle(scan("B1", "storage", stored), stored)
    assert "waste.storage_overdue" not in types(tracker.tick(stored + 47 * HOUR_MS))
    assert "waste.storage_overdue" not in types(tracker.tick(stored + 48 * HOUR_MS))
    overdue = [a for a in tracker.tick(stored + 48 * HOUR_MS + 60_000) if a.type == "waste.storage_overdue"]
    assert len(overdue) == 1
    assert overdue[0].source == "B1"
    assert overdue[0].priority == "low"
    assert overdue[0].message.startswith("[level 1: handler]")
    assert overdue[0].onset == stored + 48 * HOUR_MS
    alert_id = overdue[0].id
    assert tracker.level(alert_id) == "handler"
    again = tracker.tick(stored + 48 * HOUR_MS + 120_000)
    assert alert_id not in {a.id for a in again}, "an open alert is not raised twice"
    second = [a for a in tracker.tick(stored + 49 * HOUR_MS + 1) if a.id == alert_id]
    assert second[0].priority == "medium"
    assert second[0].message.startswith("[level 2: department head]")
    third = [a for a in tracker.tick(stored + 52 * HOUR_MS + 1) if a.id == alert_id]
    assert third[0].priority == "high"
    assert tracker.level(alert_id) == "hospital"
    assert "[level 2" not in third[0].message
    gone = tracker.handle(scan("B1", "disposer", stored + 53 * HOUR_MS), stored + 53 * HOUR_MS)
    assert [(a.id, a.state) for a in gone] == [(alert_id, "resolved")]
    restarted = WasteTracker(SITE, state, WasteSettings(storage_max_h=24))
    tracker_after = restarted.tick(stored + 60 * HOUR_MS)
    assert "waste.storage_overdue" not in types(tracker_after), "nothing held: nothing overdue"


def test_a_restarted_tracker_raises_the_overdue_alert_at_the_level_its_age_gives(state: State) -> None:
    t0 = at(5, 8)
    tracker = WasteTracker(SITE, state, WasteSettings(storage_max_h=12))
    for point, dt in (("ward", 0), ("collector", 1), ("storage", 2)):
        tracker.handle(scan("B1", point, t0 + dt), t0 + dt)
    restarted = WasteTracker(SITE, state, WasteSettings(storage_max_h=12))
    overdue = [a for a in restarted.tick(t0 + 2 + 12 * HOUR_MS + 2 * HOUR_MS) if a.type == "waste.storage_overdue"]
    assert overdue[0].priority == "medium", "two hours past the limit: department head already"


def test_a_bag_left_on_the_ward_is_a_missing_step(state: State) -> None:
    tracker = WasteTracker(SITE, state)
    t0 = at(5, 8)
    tracker.handle(scan("B-LEFT", "ward", t0), t0)
    tracker.handle(scan("B-TAKEN", "ward", t0), t0)
    tracker.handle(scan("B-TAKEN", "collector", t0 + 1000), t0 + 1000)
    assert "waste.missing_step" not in types(tracker.tick(t0 + 23 * HOUR_MS))
    missing = [a for a in tracker.tick(t0 + 25 * HOUR_MS) if a.type == "waste.missing_step"]
    assert [a.source for a in missing] == ["B-LEFT"]
    resolved = tracker.handle(scan("B-LEFT", "collector", t0 + 26 * HOUR_MS), t0 + 26 * HOUR_MS)
    assert [(a.source, a.state) for a in resolved] == [("B-LEFT", "resolved")]


def test_a_ward_with_no_handover_that_day(state: State) -> None:
    tracker = WasteTracker(SITE, state)
    tracker.handle(scan("B1", "ward", at(5, 9)), at(5, 9))
    tracker.handle(scan("B1", "collector", at(5, 10)), at(5, 10))  # W3 handed over; ICU did not
    assert "waste.no_handover" not in types(tracker.tick(at(5, 19.9))), "not before the day's check hour"
    alerts = [a for a in tracker.tick(at(5, 20.5)) if a.type == "waste.no_handover"]
    assert [(a.source, a.unit) for a in alerts] == [("ICU", "ICU")]
    assert "2026-01-05" in alerts[0].message
    assert [a for a in tracker.tick(at(5, 20.9)) if a.type == "waste.no_handover"] == [], "raised once a day"
    escalated = [a for a in tracker.tick(at(5, 21)) if a.type == "waste.no_handover"]
    assert [a.priority for a in escalated] == ["medium"], "an hour later: the department head"
    next_day = tracker.tick(at(6, 20.5))
    assert sorted(a.source for a in next_day if a.id.endswith("2026-01-06")) == ["ICU", "W3"], \
        "yesterday's handover does not count today"
    assert [a.priority for a in next_day if a.id.endswith("ICU:2026-01-05")] == ["high"], "unanswered for a day"


def test_storage_room_above_20_c_while_holding_waste(state: State) -> None:
    tracker = WasteTracker(SITE, state, site_map=load_site_map())  # the demo map puts temp-waste-store there
    t0 = at(5, 8)

    def reading(value: float, ts: int, device: str = "temp-waste-store",
                metric: str = "WARDLINK_TEMP_FRIDGE_AIR") -> Observation:
        return Observation(device=device, stream="numerics", seq=0, ts=ts, metric=metric, value=value, unit="Cel")

    assert tracker.handle(reading(24.0, t0), t0) == [], "nothing held: no alert"
    assert tracker.handle(reading(30.0, t0, "fridge-icu"), t0) == [], "a logger elsewhere is not the store"
    arrived = [a for point, dt in (("ward", 0), ("collector", 1), ("storage", 2))
               for a in tracker.handle(scan("B1", point, t0 + dt), t0 + dt)]
    assert types(arrived) == ["waste.storage_temperature"], "waste arrived in a warm store"
    assert tracker.tick(t0 + 3) == [], "and it stays open"
    assert tracker.handle(reading(21.0, t0 + 10), t0 + 10) == [], "already open"
    assert [a.state for a in tracker.handle(reading(19.5, t0 + 20), t0 + 20)] == ["resolved"]
    assert tracker.handle(reading(20.0, t0 + 30), t0 + 30) == [], "20 C is not above 20 C"
    raised = tracker.handle(reading(20.6, t0 + 40), t0 + 40)
    assert types(raised) == ["waste.storage_temperature"]
    assert raised[0].value == 20.6
    # The logger's second probe lags behind the air: the store is as warm as its warmest probe (no flapping).
    assert tracker.handle(reading(18.0, t0 + 41, metric="WARDLINK_TEMP_FRIDGE_PRODUCT"), t0 + 41) == []
    assert tracker.handle(reading(20.4, t0 + 42), t0 + 42) == []
    resolved = tracker.handle(scan("B1", "disposer", t0 + 50), t0 + 50)
    assert [(a.type, a.state) for a in resolved] == [("waste.storage_temperature", "resolved")], "store emptied"


def test_settings_never_keep_records_less_than_three_years() -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError, match="retention_years"):
        msgspec.convert({"retention_years": 2}, WasteSettings)
    settings = WasteSettings(retention_years=5)
    sealed = at(5, 8)
    assert retained_until(sealed, settings) >= sealed + 5 * 365 * 24 * HOUR_MS + 2 * 24 * HOUR_MS
    with pytest.raises(ValueError, match="escalate_after_min"):
        msgspec.convert({"escalate_after_min": [240, 60]}, WasteSettings)


def test_the_demo_waste_store_logger_warms_above_20_c_while_its_cooling_fails() -> None:
    logger = WasteStoreLogger(_start=0.0, _last=0.0)  # monotonic seconds from its start
    air = []
    for second in range(0, 1201, 5):
        logger.registers(float(second))
        air.append((second, logger.air_c))
    warm = [s for s, c in air if c > 20.0 and s < 1000]
    assert warm, "the failure window takes the store above the waste limit"
    assert 420 < warm[0] < 540, "from the failing minutes (7 to 10) on"
    assert warm[-1] < 720, "until shortly after the cooling is back"
    assert max(c for s, c in air if s < 1000) == pytest.approx(24.0, abs=0.3)
    assert all(14.0 <= c <= 16.0 for s, c in air if s <= 420 or 780 <= s <= 1020), "held at 15 C otherwise"
    assert any(c > 20.0 for s, c in air if s > 1020), "and again in the next cycle"
