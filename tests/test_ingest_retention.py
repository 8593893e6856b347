"""Retention and 1-minute rollups of the embedded store and its twin, with fake time."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.contract import DeviceEvent, DeviceInfo, Observation
from storage.base import DAY_MS, Retention
from storage.duckdb import DuckDbStore
from storage.memory import MemoryStore

T0 = 1_700_000_040_000  # a minute boundary
RETENTION = Retention(raw_days=1, rollup_days=10, events_days=10)


def obs(seq: int, ts: int, value: float) -> Observation:
    return Observation(device="mon-icu-01", stream="numerics", seq=seq, ts=ts, metric="MDC_PULSE", value=value,
                       unit="/min", bed="ICU-01")


@pytest.fixture(params=["duckdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> DuckDbStore | MemoryStore:
    if request.param == "duckdb":
        return DuckDbStore(tmp_path / "s.duckdb", retention=RETENTION)
    return MemoryStore(retention=RETENTION)


def test_old_raw_rows_become_rollups_and_history_reads_them(store: DuckDbStore | MemoryStore) -> None:
    # 3 minutes of one reading every 10 s, two days ago; and one recent minute.
    old = [obs(i, T0 + i * 10_000, float(60 + i)) for i in range(18)]
    recent = [obs(100 + i, T0 + 2 * DAY_MS + i * 10_000, 80.0) for i in range(6)]
    store.write([*old, *recent])
    store.write([DeviceEvent(device="mon-icu-01", stream="alarms", seq=1, ts=T0, event="MDC_EVT_LEAD_OFF",
                             alarm_kind="technical", priority="low"),
                 DeviceInfo(device="mon-icu-01", stream="info", seq=1, ts=T0, driver="bedside_serial")])
    before = store.history(bed="ICU-01", metric="MDC_PULSE", start_ms=T0, end_ms=T0 + 3 * DAY_MS, step_ms=60_000)
    result = store.maintain(T0 + 2 * DAY_MS + 60_000)
    assert result.rolled_up == 18
    assert store.stats().observations == 6
    assert store.history(bed="ICU-01", metric="MDC_PULSE", start_ms=T0, end_ms=T0 + DAY_MS) == []  # raw is gone
    after = store.history(bed="ICU-01", metric="MDC_PULSE", start_ms=T0, end_ms=T0 + 3 * DAY_MS, step_ms=60_000)
    assert after == before  # mean/min/max/count per minute unchanged, recent minute still from raw
    assert [(p.count, p.min, p.max) for p in after] == [(6, 60, 65), (6, 66, 71), (6, 72, 77), (6, 80, 80)]
    hourly = store.history(device="mon-icu-01", metric="MDC_PULSE", start_ms=T0 - T0 % 3_600_000,
                           end_ms=T0 + DAY_MS, step_ms=3_600_000)
    assert [p.count for p in hourly] == [18]
    assert hourly[0].value == pytest.approx(sum(range(60, 78)) / 18)
    # Late readings of an already rolled-up minute are added to it at the next maintenance.
    store.write([obs(50, T0 + 5_000, 100.0)])
    store.maintain(T0 + 2 * DAY_MS + 120_000)
    first = store.history(bed="ICU-01", metric="MDC_PULSE", start_ms=T0, end_ms=T0 + 60_000, step_ms=60_000)[0]
    assert (first.count, first.max) == (7, 100.0)
    # Past the rollup retention rollups and events go, but a device's identity stays.
    store.maintain(T0 + 20 * DAY_MS)
    assert store.history(bed="ICU-01", metric="MDC_PULSE", start_ms=T0, end_ms=T0 + 3 * DAY_MS, step_ms=60_000) == []
    assert [e.__struct_config__.tag for e in store.events(start_ms=0, end_ms=2**62)] == ["dev"]
    store.close()


def test_maintenance_of_fresh_data_changes_nothing(store: DuckDbStore | MemoryStore) -> None:
    store.write([obs(i, T0 + i * 1000, 70.0) for i in range(10)])
    assert store.maintain(T0 + 60_000).deleted == 0
    assert store.stats().observations == 10
    store.close()
