"""The alert benchmark's pieces: its configuration is a valid one, its figures and table come out right."""

from __future__ import annotations

from pathlib import Path

from wardlink import bench
from wardlink.bench_alerts import BED, SPO2_RULE, _percentiles, bench_config, bench_site, table
from wardlink.config import load


def test_the_bench_configuration_is_one_the_services_accept(tmp_path: Path) -> None:
    config = load(overrides=bench_config(tmp_path, 18080), env={})
    assert config.site.unit_of_bed(BED) == "ICU"
    assert len(config.site.devices) == len(bench_site().devices) == 8 + 100 * 100
    (rule,) = [r for r in config.alerts.rules if r.name == SPO2_RULE]
    assert rule.delay_s == 0  # the figure is the system's own delay, not the rule's
    assert config.alerts.delivery.routing.confirm_s == 0
    assert not config.simulation.enabled


def test_percentiles_and_table() -> None:
    figures = _percentiles("loaded_alarm_ws", [float(n) for n in range(1, 101)])
    assert figures == {"loaded_alarm_ws_p50_ms": 50.0, "loaded_alarm_ws_p99_ms": 99.0, "loaded_alarm_ws_max_ms": 100.0,
                       "loaded_alarm_ws_samples": 100.0}
    figures |= {"load_obs_per_s": 50_000.0, "loaded_data_timeouts": 1.0}
    text = table(figures)
    assert "50,000 observations/s" in text
    assert "loaded: device alarm -> nurse's WebSocket" in text
    assert "the lane fell behind" in text
    assert bench.BENCHES["alerts"] is bench.alerts
