"""Alarm settings in the state (SQLite and PostgreSQL): rule set per unit, unit and bed overrides, old and new."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from state import State
from state.alarm_settings import DEFAULT_RULESET
from tests.test_state import T0, pg, pg_shared, state  # noqa: F401 (fixtures: SQLite and PostgreSQL)


def test_ruleset_per_unit_with_old_and_new(state: State) -> None:  # noqa: F811
    settings = state.alarm_settings
    assert (settings.ruleset("ICU"), settings.rulesets()) == (DEFAULT_RULESET, {})
    assert settings.set_ruleset("ICU", "neonatal", "c-cat", T0) == ("adult", "neonatal")
    assert settings.set_ruleset("ICU", "paediatric", "c-cat", T0 + 1) == ("neonatal", "paediatric")
    assert (settings.ruleset("ICU"), settings.ruleset("W3"), settings.rulesets()) == \
        ("paediatric", "adult", {"ICU": "paediatric"})


def test_overrides_merge_order_and_remove(state: State) -> None:  # noqa: F811
    settings = state.alarm_settings
    assert settings.set_override("ICU", "ICU-03", "spo2_low", {"limit": 85}, "n-ann", T0) == (None, {"limit": 85})
    assert settings.set_override("ICU", "ICU-03", "spo2_low", {"delay_s": 20}, "n-bob", T0 + 1) == \
        ({"limit": 85}, {"limit": 85, "delay_s": 20})
    settings.set_override("ICU", None, "spo2_low", {"limit": 88}, "c-cat", T0 + 2)
    settings.set_override("W3", "W3-01", "hr_high", {"enabled": False}, "n-wes", T0 + 3)
    found = [(o.unit, o.bed, o.rule, o.settings, o.updated_by) for o in settings.overrides("ICU")]
    assert found == [("ICU", None, "spo2_low", {"limit": 88}, "c-cat"),  # unit-wide before the bed's
                     ("ICU", "ICU-03", "spo2_low", {"limit": 85, "delay_s": 20}, "n-bob")]
    assert len(settings.overrides()) == 3
    assert settings.set_override("ICU", "ICU-03", "spo2_low", {}, "n-ann", T0 + 4) == \
        ({"limit": 85, "delay_s": 20}, None)
    assert settings.set_override("ICU", "ICU-03", "spo2_low", {}, "n-ann", T0 + 5) == (None, None)
    assert [o.bed for o in settings.overrides("ICU")] == [None]


def test_concurrent_changes_of_one_existing_override_lose_nothing(state: State) -> None:  # noqa: F811
    settings = state.alarm_settings
    settings.set_override("ICU", "ICU-03", "spo2_low", {"limit": 85}, "n-ann", T0)
    fields = [{"delay_s": 20}, {"priority": "medium"}, {"hysteresis": 3}, {"enabled": True}]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: settings.set_override("ICU", "ICU-03", "spo2_low", f, "n-ann", T0 + 1), fields))
    [override] = settings.overrides("ICU")
    assert override.settings == {"limit": 85, "delay_s": 20, "priority": "medium", "hysteresis": 3, "enabled": True}



def test_concurrent_first_overrides_of_one_rule_lose_nothing(state: State) -> None:  # noqa: F811
    settings = state.alarm_settings
    fields = [{"limit": 85}, {"delay_s": 20}, {"priority": "medium"}, {"hysteresis": 3}]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: settings.set_override("ICU", "ICU-04", "spo2_low", f, "n-ann", T0), fields))
    [override] = settings.overrides("ICU")
    assert override.settings == {"limit": 85, "delay_s": 20, "priority": "medium", "hysteresis": 3}


def test_concurrent_first_choices_of_a_rule_set_do_not_collide(state: State) -> None:  # noqa: F811
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda name: state.alarm_settings.set_ruleset("W3", name, "c-wil", T0),
                             ["neonatal", "paediatric", "neonatal", "paediatric"]))
    assert [old for old, _ in done].count("adult") == 1  # writers are serialised: one saw no choice yet
    assert state.alarm_settings.ruleset("W3") in {"neonatal", "paediatric"}
