"""`wardlink bench ingest` in quick mode: every figure is produced and the ratios are consistent (no timing checks)."""

from __future__ import annotations

import math

import pytest

from devices.contract import check_item, decode_batch
from wardlink import bench
from wardlink.bench_ingest import OBS_PER_MESSAGE, QUICK, STORES, Frames

pytestmark = pytest.mark.slow  # starts Mosquitto, victoria-metrics and a publisher process


@pytest.fixture(scope="module")
def figures() -> dict[str, float]:
    return bench.BENCHES["ingest"](True)


def test_the_stream_is_valid_contract_with_unique_keys_and_timestamps() -> None:
    frames = Frames("s", 20, t0=1_700_000_000_000)
    items = [item for _ in range(6) for item in decode_batch(frames.next_message()).items]
    assert len(items) == 6 * OBS_PER_MESSAGE
    for item in items:
        check_item(item)
    assert len({(i.device, i.stream, i.seq) for i in items}) == len(items)
    assert len({(i.device, i.stream, i.metric, i.ts) for i in items}) == len(items)  # type: ignore[union-attr]


def test_every_store_and_curve_point_has_its_figures(figures: dict[str, float]) -> None:
    for name in ("baseline_raw_msgs_per_s", "baseline_raw_obs_per_s", "baseline_raw_obs_per_cpu_s",
                 "baseline_rss_mb", "victoria_server_rss_mb"):
        assert name in figures
    for store in STORES:
        for suffix in ("obs_per_s", "obs_per_cpu_s", "cpu_share", "vs_baseline", "rss_mb"):
            assert f"{store}_{suffix}" in figures
    for store in QUICK.curve_stores:
        for beds in QUICK.curve_beds:
            for suffix in ("offered_per_s", "stored_per_s", "cpu_share", "lag_ms_p50", "lag_ms_max"):
                assert f"curve_{store}_{beds}_{suffix}" in figures


def test_every_figure_is_positive_and_finite(figures: dict[str, float]) -> None:
    bad = {name: value for name, value in figures.items() if not (math.isfinite(value) and value > 0)}
    assert bad == {}


def test_ratios_are_the_figure_over_the_raw_baseline(figures: dict[str, float]) -> None:
    baseline = figures["baseline_raw_obs_per_s"]
    assert baseline == pytest.approx(figures["baseline_raw_msgs_per_s"] * OBS_PER_MESSAGE, rel=1e-12)
    ratios = [name for name in figures if name.endswith("_vs_baseline")]
    assert len(ratios) == len(STORES)
    for name in ratios:
        rate = figures[name.removesuffix("_vs_baseline") + "_obs_per_s"]
        assert figures[name] == pytest.approx(rate / baseline, rel=1e-12), name


def test_offered_load_is_ten_observations_per_bed(figures: dict[str, float]) -> None:
    for beds in QUICK.curve_beds:
        assert figures[f"curve_duckdb_{beds}_offered_per_s"] == 10 * beds


def test_table_shows_every_store_the_baseline_and_the_curve(figures: dict[str, float]) -> None:
    text = bench.table("ingest", figures)
    assert "baseline: bare paho subscriber" in text
    for what in STORES.values():
        assert what in text
    assert "2,000 beds" in text
