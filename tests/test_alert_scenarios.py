"""Scenario tests with simulated patients (simulators/bedside/patient.py) through the pure engine and the adult set."""

from __future__ import annotations

import pytest

from alerts.engine import AlertEngine
from alerts.ruleset import RuleBook
from devices import mdc
from devices.contract import FLAG_DEMO, Alert, Observation
from simulators.bedside.patient import PatientModel
from state import lifecycle
from wardlink.config import load

SITE = load(env={}).site
BEDS = {bed: unit.id for unit in SITE.units for bed in unit.beds}
BED = "ICU-03"
MEASURED = ("hr", "spo2", "rr", "temp", "nibp_sys")  # what a bedside monitor sends that the rules read


def readings(t: int, vitals: dict[str, float], flags: int = 0) -> list[Observation]:
    return [Observation(device="mon-icu-03", stream="numerics", seq=t, ts=t * 1000, metric=mdc.resolve(name),
                        value=round(vitals[name], 1), unit="", bed=BED, flags=flags) for name in MEASURED]


def run(vitals_at: dict[int, dict[str, float]], flags: int = 0) -> tuple[AlertEngine, list[tuple[int, Alert]]]:
    """Feed one reading per second per metric; every alert transition with the second it happened."""
    engine = AlertEngine(SITE, RuleBook(BEDS))
    seen = [(t, a) for t, vitals in vitals_at.items() for a in engine.process(readings(t, vitals, flags), now=t * 1000)]
    return engine, seen


def deteriorating(seed: int, seconds: int = 420, recovers_at: int = 300) -> dict[int, dict[str, float]]:
    """SpO2 falls from 30 s, then the heart rate falls from 60 s (desaturation with bradycardia); recovery later."""
    desat = PatientModel("desaturating", seed)
    brady = PatientModel("bradycardic", seed, onset_s=60)
    stable = PatientModel("stable", seed)
    return {t: stable.vitals(t) if t >= recovers_at else {**desat.vitals(t), "hr": brady.vitals(t)["hr"]}
            for t in range(seconds)}


def onsets(seen: list[tuple[int, Alert]]) -> list[tuple[int, str, str]]:
    """(second, rule, priority) of each new alert, in order."""
    first: dict[str, tuple[int, str, str]] = {}
    for t, alert in seen:
        first.setdefault(alert.id, (t, alert.type, alert.priority))
    return list(first.values())


def test_deterioration_raises_the_expected_alerts_in_order_and_latches_the_high_ones() -> None:
    vitals = deteriorating(seed=2)
    engine, seen = run(vitals)
    below_90 = next(t for t, v in vitals.items() if round(v["spo2"], 1) < 90)
    assert onsets(seen)[:5] == [
        (below_90 + 10, "spo2_low", "high"),  # after its 10 s persistence delay, not before
        (81, "desat_bradycardia", "high"),  # once the heart rate has fallen 10 /min with SpO2 still low
        (96, "hr_low", "high"),
        (97, "hr_falling_fast", "medium"),
        (101, "news2", "medium"),  # SpO2 85 (3) + pulse 40 (3) after its 60 s delay
    ]
    assert all(a.state == "active" for t, a in seen if t < 124)  # nothing resolves while the patient worsens
    # recovery at 300 s: the high (latching) alerts stay until a nurse acknowledges them; the others resolve
    still_open = {a.type: a for a in engine.open.values() if a.alarm_kind == "physiological"}
    assert sorted(still_open) == ["desat_bradycardia", "hr_low", "spo2_low"]
    assert all(a.latched and a.condition_cleared and a.state == "active" for a in still_open.values())
    assert [lifecycle.acknowledge(a, "n-ann", 421_000).state for a in still_open.values()] == ["resolved"] * 3
    resolved = {a.type for _, a in seen if a.state == "resolved"}
    assert {"hr_falling_fast", "news2"} <= resolved


@pytest.mark.parametrize("seed", [1, 3, 4, 5, 6])
def test_every_deteriorating_patient_alarms_spo2_first_then_the_combination(seed: int) -> None:
    vitals = deteriorating(seed, seconds=200, recovers_at=200)
    _, seen = run(vitals)
    below_90 = next(t for t, v in vitals.items() if round(v["spo2"], 1) < 90)
    first, second = onsets(seen)[:2]
    assert first == (below_90 + 10, "spo2_low", "high")
    assert second[1:] == ("desat_bradycardia", "high")
    assert 60 < second[0] < 100  # the heart rate starts to fall at 60 s


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_artefact_dips_and_a_stable_patient_raise_nothing(seed: int) -> None:
    artefact = PatientModel("artefact", seed, onset_s=30, period_s=20)  # a 2 s dip to ~78 % every 20 s
    vitals = {t: artefact.vitals(t) for t in range(400)}
    assert sum(1 for v in vitals.values() if v["spo2"] < 80) >= 30  # the dips are there, and deep
    assert run(vitals)[1] == []
    stable = PatientModel("stable", seed)
    assert run({t: stable.vitals(t) for t in range(400)})[1] == []


def test_a_demo_flagged_deterioration_raises_no_physiological_alarm() -> None:
    engine, seen = run(deteriorating(seed=2), flags=FLAG_DEMO)
    assert seen == []
    assert engine.open == {}
