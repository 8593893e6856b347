"""Rate-of-change, combined and NEWS2 rules, the clinical default sets and per-unit / per-bed overrides."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from alerts import news2
from alerts.engine import AlertEngine
from alerts.news2 import News2Rule
from alerts.rules import CombinedRule, Condition, Evaluator, LimitRule, RateRule
from alerts.ruleset import RuleBook, apply, catalogue, default_rulesets
from alerts.vitals import Vitals
from devices import mdc
from devices.contract import FLAG_DEMO, Observation
from state.alarm_settings import LimitOverride
from wardlink.config import load

BED = "ICU-03"


def obs(t_s: float, metric: str, value: float, flags: int = 0, bed: str = BED) -> Observation:
    return Observation(device="mon-icu-03", stream=metric, seq=int(t_s * 10), ts=int(t_s * 1000),
                       metric=mdc.resolve(metric), value=value, unit="", bed=bed, flags=flags)


def beds() -> dict[str, str]:
    return {bed: unit.id for unit in load(env={}).site.units for bed in unit.beds}


def test_rate_rule_fires_on_a_fast_fall_not_on_a_slow_drift() -> None:
    rule = RateRule(name="hr_falling_fast", metric="hr", direction="falling", per_min=30, window_s=60)
    fast = Evaluator(rule)
    verdicts = [fast.observe(BED, obs(t, "hr", 100 - t)) for t in range(0, 61)]  # 60 /min down
    fired = [v for v in verdicts if v is not None]
    assert [v.action for v in fired] == ["fire"]
    assert fired[0].value == pytest.approx(-60.0)
    slow = Evaluator(rule)
    assert all(slow.observe(BED, obs(t, "hr", 100 - t / 6)) is None for t in range(0, 121))  # 10 /min


def test_combined_rule_needs_low_spo2_with_falling_hr() -> None:
    rule = CombinedRule(name="desat_bradycardia", delay_s=0, all=[
        Condition(metric="spo2", test="below", value=90), Condition(metric="hr", test="falling", value=10)])
    engine = AlertEngine(load(env={}).site, [rule])
    low_spo2_steady_hr = [o for t in range(60) for o in (obs(t, "spo2", 85), obs(t, "hr", 80))]
    assert engine.process(low_spo2_steady_hr, now=60_000) == []
    falling = [o for t in range(60, 120) for o in (obs(t, "spo2", 85), obs(t, "hr", 80 - (t - 60) * 0.5))]
    fired = engine.process(falling, now=120_000)
    assert [(a.type, a.priority, a.state, a.metric) for a in fired] == \
        [("desat_bradycardia", "high", "active", None)]


@pytest.mark.parametrize(("fn", "cases"), [
    (news2.score_rr, [(8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3)]),
    (news2.score_spo2, [(91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0)]),
    (news2.score_systolic, [(90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3)]),
    (news2.score_pulse, [(40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2), (130, 2),
                         (131, 3)]),
    (news2.score_temp, [(35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1), (39.1, 2)]),
])
def test_news2_table_boundaries(fn: Callable[[float], int], cases: list[tuple[float, int]]) -> None:
    assert [fn(v) for v, _ in cases] == [points for _, points in cases]


def _vitals(**values: float) -> Vitals:
    vitals = Vitals()
    for name, value in values.items():
        vitals.add(obs(0, name, value))
    return vitals


def test_news2_levels_and_missing_parameters() -> None:
    rule = News2Rule()
    normal = rule.assess(_vitals(rr=16, spo2=97, nibp_sys=125, hr=75, temp=37.0))
    assert normal is not None
    assert (normal.violated, normal.value) == (False, 0.0)
    four = rule.assess(_vitals(rr=22, spo2=94, nibp_sys=105, hr=75, temp=37.0))  # 2 + 1 + 1
    assert four is not None
    assert (four.value, four.violated) == (4.0, False)
    five = rule.assess(_vitals(rr=22, spo2=93, nibp_sys=105, hr=75, temp=37.0))
    assert five is not None
    assert (five.value, five.priority, five.violated) == (5.0, "medium", True)
    high = rule.assess(_vitals(rr=26, spo2=91, nibp_sys=105, hr=115, temp=38.5))
    assert high is not None
    assert (high.value, high.priority) == (10.0, "high")
    single = rule.assess(_vitals(rr=16, spo2=97, nibp_sys=125, hr=35, temp=37.0))
    assert single is not None
    assert (single.priority, single.violated) == ("low", True)
    assert rule.assess(_vitals(rr=16, spo2=97, hr=75)) is None  # three of five: no score
    partial = rule.assess(_vitals(rr=16, spo2=97, nibp_sys=125, hr=75))
    assert partial is not None
    assert "not measured: temp" in partial.text


def test_news2_alert_rises_after_its_delay_and_its_priority_follows_the_score() -> None:
    engine = AlertEngine(load(env={}).site, [News2Rule(delay_s=60)])
    assert engine.process([obs(0, "nibp_sys", 105), obs(0, "temp", 37.0)], now=0) == []
    medium = [o for t in range(1, 62) for o in (obs(t, "rr", 22), obs(t, "spo2", 93), obs(t, "hr", 75))]
    fired = engine.process(medium, now=62_000)
    assert [(a.type, a.priority, a.value) for a in fired] == [("news2", "medium", 5.0)]
    worse = engine.process([obs(62, "hr", 115), obs(63, "spo2", 91)], now=64_000)
    assert [(a.id, a.priority, a.value) for a in worse] == [(fired[0].id, "high", 7.0)]  # 2 + 2 + 1 + 2


def test_default_sets_differ_by_age_and_load_cleanly() -> None:
    sets = default_rulesets()
    assert set(sets) == {"adult", "paediatric", "neonatal"}
    limits = {name: {r.name: r for r in s.limit} for name, s in sets.items()}
    assert limits["adult"]["hr_low"].limit == 40
    assert limits["paediatric"]["hr_low"].limit == 60
    assert limits["neonatal"]["hr_low"].limit == 100
    assert limits["neonatal"]["spo2_low"].limit == 85
    assert "spo2_high" in limits["neonatal"]
    assert sets["adult"].news2.enabled
    assert not sets["neonatal"].news2.enabled
    assert {"spo2_low", "desat_bradycardia", "news2"} <= set(catalogue()["adult"])


def _limit(rules: dict[str, object], name: str) -> tuple[float, str]:
    rule = rules[name]
    assert isinstance(rule, LimitRule)
    return rule.limit, rule.priority


def test_unit_ruleset_and_overrides_per_unit_and_bed() -> None:
    units = beds()
    icu = [b for b, u in units.items() if u == "ICU"]
    book = RuleBook(units, rulesets={"ICU": "neonatal"}, overrides=[
        LimitOverride("ICU", None, "spo2_low", {"limit": 88}, 1, "n-ann"),
        LimitOverride("ICU", icu[0], "spo2_low", {"limit": 80, "priority": "medium"}, 2, "n-ann"),
        LimitOverride("ICU", None, "hr_high", {"enabled": False}, 3, "n-ann"),
        LimitOverride("ICU", None, "nope", {"limit": 1}, 4, "n-ann"),
    ])
    first: dict[str, object] = {r.name: r for r in book.rules_for(icu[0])}
    second: dict[str, object] = {r.name: r for r in book.rules_for(icu[1])}
    assert _limit(first, "spo2_low") == (80, "medium")
    assert _limit(second, "spo2_low") == (88, "high")
    assert "hr_high" not in first
    assert "spo2_high" in first
    assert book.errors == ["ICU/*: no rule 'nope'"]
    other = next(b for b, u in units.items() if u != "ICU")
    assert _limit({r.name: r for r in book.rules_for(other)}, "spo2_low") == (90, "high")  # adult default


def test_overrides_refuse_unknown_fields_and_bad_values() -> None:
    spo2 = default_rulesets()["adult"].limit[0]
    with pytest.raises(ValueError, match="cannot override metric"):
        apply(spo2, {"metric": "hr"})
    with pytest.raises(ValueError, match="spo2_low"):
        apply(spo2, {"priority": "urgent"})


def test_engine_uses_the_bed_override() -> None:
    book = RuleBook(beds(), overrides=[LimitOverride("ICU", BED, "spo2_low", {"limit": 80}, 1, "n-ann")])
    engine = AlertEngine(load(env={}).site, book)
    assert [a for a in engine.process([obs(t, "spo2", 85) for t in range(30)], now=30_000)
            if a.type == "spo2_low"] == []
    fired = engine.process([obs(t, "spo2", 78) for t in range(30, 45)], now=45_000)
    assert [a.type for a in fired] == ["spo2_low"]


def test_prepared_beds_are_indexed_before_their_first_reading_and_alarm_the_same() -> None:
    book = RuleBook(beds(), overrides=[LimitOverride("ICU", BED, "spo2_low", {"limit": 80}, 1, "n-ann")])
    prepared, lazy = AlertEngine(load(env={}).site, book), AlertEngine(load(env={}).site, book)
    assert prepared.prepare([*beds(), "no-such-bed"]) == len(beds())  # a bed the book does not know is left out
    index = prepared._sources[BED]
    series = [obs(t, "spo2", 85 if t < 30 else 78) for t in range(45)] + [obs(45, "hr", 150)]
    assert prepared.process(series, now=45_000) == lazy.process(series, now=45_000)
    assert prepared._sources[BED] is index  # the first reading found its index ready: nothing built under load
    assert prepared.prepare(beds()) == 0


def test_flagged_readings_never_feed_limits_rates_combinations_or_news2() -> None:
    engine = AlertEngine(load(env={}).site, RuleBook(beds()))
    flagged = [o for t in range(0, 300) for o in (
        obs(t, "spo2", 70, FLAG_DEMO), obs(t, "hr", 150 - t / 2, FLAG_DEMO), obs(t, "rr", 35, FLAG_DEMO),
        obs(t, "nibp_sys", 80, FLAG_DEMO), obs(t, "temp", 40, FLAG_DEMO))]
    assert [a for a in engine.process(flagged, now=300_000) if a.alarm_kind == "physiological"] == []


def test_news2_priority_has_hysteresis_on_a_boundary() -> None:
    def priorities(rule: News2Rule) -> list[str]:
        engine = AlertEngine(load(env={}).site, [rule])
        base = [obs(0, "rr", 16), obs(0, "nibp_sys", 125), obs(0, "temp", 37.0)]
        flips = [o for t in range(1, 40) for o in (obs(t, "hr", 35), obs(t, "spo2", 93 if t % 2 else 94))]  # 5, 4, 5
        recovers = [o for t in range(40, 45) for o in (obs(t, "hr", 35), obs(t, "spo2", 96))]  # 3: the single 3 only
        return [a.priority for a in engine.process(base + flips + recovers, now=45_000) if a.type == "news2"]

    # low on the pulse's 3, up to medium at 5, held there while the score sits at 4-5, low again at 3
    assert priorities(News2Rule(delay_s=0)) == ["low", "medium", "low"]
    flapping = priorities(News2Rule(delay_s=0, hysteresis=0))  # as before: every flip republished
    assert flapping[:4] == ["low", "medium", "low", "medium"]
    assert len(flapping) > 30


def test_a_reload_applies_changed_limits_and_keeps_the_onset_of_a_condition_being_timed() -> None:
    def override(**settings: object) -> RuleBook:
        return RuleBook(beds(), overrides=[LimitOverride("ICU", BED, "spo2_low", dict(settings), 1, "n-ann")])

    engine = AlertEngine(load(env={}).site, RuleBook(beds()))
    assert engine.process([obs(t, "spo2", 85) for t in range(0, 6)], now=6_000) == []
    engine.reload(override(hysteresis=3))  # still violated: the 10 s delay counts from t = 0
    fired = [a for a in engine.process([obs(t, "spo2", 85) for t in range(6, 11)], now=11_000) if a.type == "spo2_low"]
    assert [(a.onset, a.state) for a in fired] == [(0, "active")]

    lowered = AlertEngine(load(env={}).site, RuleBook(beds()))
    lowered.process([obs(t, "spo2", 85) for t in range(0, 6)], now=6_000)
    lowered.reload(override(limit=80))
    lowered.reload(override(limit=80))  # a poll that changed nothing
    assert [a for a in lowered.process([obs(t, "spo2", 85) for t in range(6, 30)], now=30_000)
            if a.type == "spo2_low"] == []
    lowered.reload(RuleBook(beds()))
    fired = [a for a in lowered.process([obs(t, "spo2", 85) for t in range(30, 41)], now=41_000)
             if a.type == "spo2_low"]
    assert [a.onset for a in fired] == [30_000]
