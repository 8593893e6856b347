"""Persistence delay, hysteresis and flags in the alert rules and engine."""

from __future__ import annotations

import msgspec

from alerts.engine import AlertEngine
from alerts.rules import Evaluator, LimitRule
from devices.contract import FLAG_DEMO, FLAG_INVALID, DeviceEvent, Observation
from wardlink.config import load

SPO2 = LimitRule(name="spo2_low", metric="spo2", direction="below", limit=90, delay_s=10, hysteresis=2)


def reading(t_s: float, value: float, flags: int = 0, bed: str = "ICU-03") -> Observation:
    return Observation(device="mon-icu-03", stream="numerics", seq=int(t_s), ts=int(t_s * 1000),
                       metric="MDC_PULS_OXIM_SAT_O2", value=value, unit="%", code=150456, bed=bed, flags=flags)


def run(evaluator: Evaluator, series: list[tuple[float, float]], flags: int = 0) -> list[tuple[str, int]]:
    out = []
    for t, v in series:
        verdict = evaluator.observe("ICU-03", reading(t, v, flags))
        if verdict:
            out.append((verdict.action, verdict.onset_ms))
    return out


def test_sustained_desaturation_fires_after_the_delay_with_its_onset() -> None:
    series = [(t, 96.0) for t in range(5)] + [(t, 85.0) for t in range(5, 30)]
    assert run(Evaluator(SPO2), series) == [("fire", 5000)]


def test_fires_exactly_when_the_delay_has_passed() -> None:
    evaluator = Evaluator(SPO2)
    assert run(evaluator, [(t, 85.0) for t in range(10)]) == []  # 0..9 s: 9 s of violation
    assert evaluator.observe("ICU-03", reading(10, 85.0)) is not None


def test_two_second_artefact_dip_does_not_fire() -> None:
    series = [(t, 97.0) for t in range(20)] + [(20, 78.0), (21, 78.0)] + [(t, 97.0) for t in range(22, 60)]
    assert run(Evaluator(SPO2), series) == []


def test_repeated_short_dips_do_not_add_up() -> None:
    series = []
    for start in range(0, 100, 5):
        series += [(start, 80.0), (start + 1, 80.0), (start + 2, 80.0), (start + 3, 96.0), (start + 4, 96.0)]
    assert run(Evaluator(SPO2), series) == []


def test_clears_only_past_the_hysteresis() -> None:
    series = [(t, 85.0) for t in range(12)] + [(12, 91.0), (13, 91.5), (14, 92.0)]
    assert run(Evaluator(SPO2), series) == [("fire", 0), ("clear", 0)]
    assert run(Evaluator(SPO2), [(t, 85.0) for t in range(12)] + [(12, 91.0)]) == [("fire", 0)]


def test_flagged_readings_never_fire() -> None:
    series = [(t, 80.0) for t in range(30)]
    assert run(Evaluator(SPO2), series, flags=FLAG_DEMO) == []
    assert run(Evaluator(SPO2), series, flags=FLAG_INVALID) == []


def test_engine_keeps_one_open_alert_per_source_and_type() -> None:
    site = load(env={}).site
    engine = AlertEngine(site, [SPO2])
    fired = engine.process([reading(t, 84.0) for t in range(15)], now=20_000)
    assert [(a.state, a.bed, a.unit, a.priority) for a in fired] == [("active", "ICU-03", "ICU", "high")]
    assert engine.process([reading(t, 84.0) for t in range(15, 30)], now=31_000) == []
    cleared = engine.process([reading(31, 95.0)], now=32_000)
    # high priority latches: the condition cleared, the alert stays until someone acknowledges it
    assert [(a.id, a.state, a.latched, a.condition_cleared) for a in cleared] == [(fired[0].id, "active", True, True)]
    assert engine.process([reading(32, 96.0)], now=33_000) == []


def test_a_medium_alert_does_not_latch_and_resolves_when_the_condition_clears() -> None:
    engine = AlertEngine(load(env={}).site, [msgspec.structs.replace(SPO2, priority="medium")])
    [fired] = engine.process([reading(t, 84.0) for t in range(15)], now=20_000)
    assert not fired.latched
    assert [(a.id, a.state) for a in engine.process([reading(31, 95.0)], now=32_000)] == [(fired.id, "resolved")]


def test_device_technical_events_open_and_close_an_alert() -> None:
    engine = AlertEngine(load(env={}).site, [SPO2])
    start = DeviceEvent(device="mon-icu-01", stream="link", seq=1, ts=5, event="device.disconnected",
                        alarm_kind="technical", priority="medium", bed="ICU-01")
    opened = engine.process([start], now=6)
    assert [(a.alarm_kind, a.state, a.source) for a in opened] == [("technical", "active", "mon-icu-01")]
    again = engine.process([start], now=7)
    assert [a.id for a in again] == [opened[0].id]  # a repeat updates the same alert
    end = DeviceEvent(device="mon-icu-01", stream="link", seq=2, ts=9, event="device.disconnected",
                      alarm_kind="technical", priority="medium", phase="end", bed="ICU-01")
    assert [a.state for a in engine.process([end], now=10)] == ["resolved"]


def test_restored_open_alert_is_not_raised_twice() -> None:
    site = load(env={}).site
    first = AlertEngine(site, [SPO2])
    [alert] = first.process([reading(t, 84.0) for t in range(12)], now=13_000)
    second = AlertEngine(site, [SPO2])
    second.restore([alert])
    assert second.process([reading(t, 84.0) for t in range(12, 40)], now=41_000) == []
    assert [(a.state, a.condition_cleared) for a in second.process([reading(41, 96.0)], now=42_000)] == \
        [("active", True)]


def test_device_alarms_in_demo_mode_never_raise_and_alert_uuids_keep_alarms_apart() -> None:
    engine = AlertEngine(load(env={}).site, [SPO2])

    def event(uuid: str, phase: str = "start", flags: int = 0) -> DeviceEvent:
        return DeviceEvent(device="mon-icu-02", stream="alarms", seq=1, ts=5, event="MDC_EVT_HI",
                           alarm_kind="physiological", priority="high", phase=phase,  # type: ignore[arg-type]
                           alert_uuid=uuid, bed="ICU-02", flags=flags)

    assert engine.process([event("u-1", flags=FLAG_DEMO)], now=6) == []
    first, second = engine.process([event("u-1"), event("u-2")], now=7)
    assert first.id != second.id
    assert [(a.device_alert, a.state) for a in engine.process([event("u-1", "end")], now=8)] == [("u-1", "resolved")]
    assert [a.device_alert for a in engine.open.values()] == ["u-2"]


def test_two_probes_of_one_device_raising_the_same_event_are_two_alerts() -> None:
    engine = AlertEngine(load(env={}).site, [SPO2])

    def probe(source: str, phase: str = "start") -> DeviceEvent:
        return DeviceEvent(device="mon-icu-04", stream="alarms", seq=1, ts=5, event="fridge.out_of_range",
                           alarm_kind="technical", priority="medium", phase=phase,  # type: ignore[arg-type]
                           source=source)

    assert len(engine.process([probe("upper"), probe("lower")], now=6)) == 2
    assert len(engine.open) == 2
    assert [a.metric for a in engine.process([probe("upper", "end")], now=7)] == ["upper"]
    assert [a.metric for a in engine.open.values()] == ["lower"]
