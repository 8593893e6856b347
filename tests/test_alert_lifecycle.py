"""Alert lifecycle: latching, acknowledgement by unit staff (final in the state), silence, comments, restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from alerts.engine import AlertEngine
from alerts.rules import LimitRule
from devices.contract import DeviceEvent, GatewayStatus, Observation
from state import State, open_state
from state.alerts import NotAllowed
from wardlink.config import load

SPO2 = LimitRule(name="spo2_low", metric="spo2", direction="below", limit=90, delay_s=10, hysteresis=2)


def reading(t_s: float, value: float, bed: str = "ICU-03") -> Observation:
    return Observation(device="mon-icu-03", stream="numerics", seq=int(t_s), ts=int(t_s * 1000),
                       metric="MDC_PULS_OXIM_SAT_O2", value=value, unit="%", bed=bed)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    opened = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    yield opened
    opened.close()


def test_latched_alert_resolves_on_acknowledgement_after_its_condition_cleared(state: State) -> None:
    engine = AlertEngine(load(env={}).site, [SPO2])
    [alert] = engine.process([reading(t, 84.0) for t in range(12)], now=12_000)
    state.alerts.save(alert)
    [cleared] = engine.process([reading(13, 96.0)], now=13_000)
    assert (cleared.state, cleared.condition_cleared) == ("active", True)
    state.alerts.save(cleared)
    acked, won = state.alerts.acknowledge(alert.id, "n-ann", 14_000, units={"ICU"})
    assert (won, acked.state, acked.acknowledged_by) == (True, "resolved", "n-ann")
    assert [t.event for t in state.alerts.transitions(alert.id)] == ["onset", "condition_cleared", "acknowledged"]


def test_acknowledge_only_by_staff_of_the_unit_and_idempotent(state: State) -> None:
    engine = AlertEngine(load(env={}).site, [SPO2])
    [alert] = engine.process([reading(t, 84.0) for t in range(12)], now=12_000)
    state.alerts.save(alert)
    with pytest.raises(NotAllowed):
        state.alerts.acknowledge(alert.id, "n-ward", 13_000, units={"WARD"})
    assert state.alerts.is_acknowledged(alert.id) is False
    first = state.alerts.acknowledge(alert.id, "n-ann", 13_000, units={"ICU"})
    again = state.alerts.acknowledge(alert.id, "n-bob", 13_500, units={"ICU"})
    assert (first[1], again[1], again[0].acknowledged_by) == (True, False, "n-ann")
    assert state.alerts.is_acknowledged(alert.id) is True


def test_a_committed_acknowledgement_survives_a_stale_engine_save(state: State) -> None:
    engine = AlertEngine(load(env={}).site, [SPO2])
    [alert] = engine.process([reading(t, 84.0) for t in range(12)], now=12_000)
    state.alerts.save(alert)
    state.alerts.acknowledge(alert.id, "n-ann", 13_000)
    [stale] = engine.process([reading(t, 96.0) for t in range(13, 14)], now=14_000)
    assert (stale.state, stale.condition_cleared) == ("active", True)  # the engine has not heard of the ack
    stored = state.alerts.save(stale)
    assert (stored.state, stored.acknowledged_by) == ("resolved", "n-ann")  # acknowledged + cleared = resolved
    engine.adopt(stored)
    assert engine.open == {}


def test_silence_lapses_by_itself_and_comments_are_logged(state: State) -> None:
    engine = AlertEngine(load(env={}).site, [SPO2])
    [alert] = engine.process([reading(t, 84.0) for t in range(12)], now=12_000)
    state.alerts.save(alert)
    silenced = state.alerts.silence(alert.id, "n-ann", 60_000, "repositioning the probe", 13_000)
    assert (silenced.silenced_until, silenced.silence_reason) == (60_000, "repositioning the probe")
    engine.adopt(silenced)
    assert [a for a in engine.tick(59_000) if a.type == "spo2_low"] == []
    [heard] = [a for a in engine.tick(60_000) if a.type == "spo2_low"]
    assert (heard.id, heard.silenced_until) == (alert.id, None)
    state.alerts.comment(alert.id, "n-ann", "probe replaced", 61_000)
    assert [(c.by, c.text) for c in state.alerts.comments(alert.id)] == [("n-ann", "probe replaced")]


def test_restart_restores_latched_and_silenced_alerts(state: State) -> None:
    site = load(env={}).site
    first = AlertEngine(site, [SPO2])
    [alert] = first.process([reading(t, 84.0) for t in range(12)], now=12_000)
    state.alerts.save(alert)
    state.alerts.silence(alert.id, "n-ann", 90_000, "family visit", 13_000)
    second = AlertEngine(site, [SPO2])
    second.restore(state.alerts.open())
    assert second.process([reading(t, 84.0) for t in range(14, 40)], now=40_000) == []  # no duplicate
    assert [(a.id, a.silenced_until) for a in second.tick(90_000) if a.type == "spo2_low"] == [(alert.id, None)]


def test_technical_alarms_device_silent_gateway_offline_data_gap_and_raised_by_others() -> None:
    engine = AlertEngine(load(env={}).site, [SPO2], silent_after_s=30, gateway_stale_s=30)
    engine.process([reading(0, 97.0)], now=1_000)
    assert engine.tick(30_000) == []
    [silent] = engine.tick(31_001)
    assert (silent.type, silent.alarm_kind, silent.source, silent.latched) == \
        ("device.silent", "technical", "mon-icu-03", False)
    assert [a.state for a in engine.process([reading(32, 97.0)], now=32_000)] == ["resolved"]

    [offline] = engine.gateway_status(GatewayStatus(gateway="gw-icu", state="offline", ts=1), now=40_000)
    assert (offline.type, offline.priority) == ("gateway.offline", "high")
    assert [a.state for a in engine.gateway_status(GatewayStatus(gateway="gw-icu", state="online", ts=2),
                                                   now=41_000)] == ["resolved"]
    assert [a.type for a in engine.tick(41_000 + 31_000) if a.type == "gateway.offline"] == ["gateway.offline"]

    gap = DeviceEvent(device="mon-icu-03", stream="ingest.gap.numerics", seq=5, ts=50_000, event="ingest.data_gap",
                      alarm_kind="technical", priority="medium", text="data gap")
    [raised] = engine.process([gap], now=50_000)
    assert (raised.latched, raised.condition_cleared) == (True, True)  # waits for an acknowledgement

    failed = engine.raise_technical("ICU", "delivery.failed", None, "nobody confirmed", 60_000, unit="ICU")
    assert (failed.priority, failed.unit, failed.alarm_kind) == ("high", "ICU", "technical")
    assert [a.state for a in engine.clear_technical("ICU", "delivery.failed", 61_000)] == ["resolved"]
