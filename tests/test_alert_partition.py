"""Alert services partitioned by care unit: each instance reads its units' gateways and owns their alerts only."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerts.service import AlertService, AlertSettings, Partition
from devices.bus import BrokerAddress
from devices.contract import Alert
from state import open_state
from wardlink.config import load

SITE = load(env={}).site


def _alert(source: str, unit: str | None) -> Alert:
    return Alert(id=f"al-{source}", type="t", source=source, alarm_kind="technical", priority="medium",
                 state="active", onset=0, updated=0, message="", unit=unit)


def test_an_instance_subscribes_to_its_units_gateways_and_owns_their_alerts() -> None:
    icu = Partition(SITE, ["ICU"])
    assert icu.filters(SITE.id, "data") == [f"wardlink/v1/{SITE.id}/gw/gw-icu/data"]
    assert icu.owns(_alert("ICU-01", "ICU"))
    assert icu.owns(_alert("gw-icu", None))  # a gateway's alert has no unit: it is its gateway's
    assert icu.owns(_alert("mon-icu-02", None))
    assert not icu.owns(_alert("gw-w3", None))
    assert not icu.owns(_alert("W3-01", "W3"))


def test_no_units_means_every_unit_and_an_unknown_unit_is_refused() -> None:
    everything = Partition(SITE, AlertSettings().units)
    assert everything.filters(SITE.id, "alarm") == [f"wardlink/v1/{SITE.id}/gw/+/alarm"]
    assert everything.owns(_alert("anything", None))
    with pytest.raises(ValueError, match="no unit NOPE"):
        Partition(SITE, ["ICU", "NOPE"])


def test_a_partitioned_instance_is_named_after_its_units(tmp_path: Path) -> None:
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        address = BrokerAddress("127.0.0.1", 1883)
        assert AlertService(SITE, state, address, AlertSettings(units=["ICU"])).instance == "alerts-ICU"
        assert AlertService(SITE, state, address, AlertSettings()).instance == "alerts-1"
    finally:
        state.close()
