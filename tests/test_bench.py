"""`wardlink bench gateway` in quick mode: every figure is produced and the ratios are consistent (no timing checks)."""

from __future__ import annotations

import math

import pytest

from wardlink import bench
from wardlink.bench_gateway import KINDS, STAGES

pytestmark = pytest.mark.slow  # starts a broker and a helper process and runs every driver kind for a moment


@pytest.fixture(scope="module")
def figures() -> dict[str, float]:
    return bench.BENCHES["gateway"](True)


def test_every_kind_and_stage_has_its_figures(figures: dict[str, float]) -> None:
    expected = {f"{kind}_{stage}_{suffix}" for kind in KINDS for stage in STAGES
                for suffix in ("per_s", "per_cpu_s", "vs_baseline")}
    assert expected <= set(figures)
    for name in ("baseline_broker_msgs_per_s", "baseline_broker_obs_per_s", "baseline_broker_obs_per_cpu_s",
                 "baseline_sqlite_rows_per_s", "baseline_sqlite_rows_per_cpu_s"):
        assert name in figures


def test_every_figure_is_positive_and_finite(figures: dict[str, float]) -> None:
    bad = {name: value for name, value in figures.items() if not (math.isfinite(value) and value > 0)}
    assert bad == {}


def test_ratios_are_the_figure_over_the_broker_baseline(figures: dict[str, float]) -> None:
    baseline = figures["baseline_broker_obs_per_s"]
    assert figures["baseline_broker_obs_per_s"] == pytest.approx(figures["baseline_broker_msgs_per_s"] * 100)
    ratios = [name for name in figures if name.endswith("_vs_baseline")]
    assert len(ratios) == len(KINDS) * len(STAGES)
    for name in ratios:
        rate = figures[name.removesuffix("_vs_baseline") + "_per_s"]
        assert figures[name] == pytest.approx(rate / baseline, rel=1e-12), name


def test_table_shows_every_kind_and_the_baseline(figures: dict[str, float]) -> None:
    text = bench.table("gateway", figures)
    assert "baseline: broker" in text
    for kind in KINDS:
        assert kind in text
    assert text.count("full path") == len(KINDS)
