"""Rate windows: the O(1) running least-squares slope equals the straightforward refit over the window."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts import news2
from alerts.vitals import HISTORY_MS, SlopeWindow, Vitals, least_squares_slope
from devices.contract import FLAG_DEMO, Observation

VALUES = st.one_of(st.integers(0, 300).map(float), st.floats(0, 300, allow_nan=False).map(lambda v: round(v, 1)),
                   st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([1e-30, 5e-324, 0.0]))
STEPS = st.lists(st.tuples(st.integers(0, 20_000), VALUES), min_size=1, max_size=150)
WINDOWS = st.sampled_from([0, 1_000, 10_000, 30_000, 60_000, 300_000, HISTORY_MS + 60_000])


def exact_slope(points: list[tuple[int, float]], window_ms: int) -> float | None:
    """The definition in rational arithmetic, rounded once."""
    start = points[-1][0] - min(window_ms, HISTORY_MS)
    chosen = [(Fraction(t), Fraction(v)) for t, v in points if t >= start]
    if len(chosen) < 3 or chosen[-1][0] - chosen[0][0] < Fraction(window_ms, 2):
        return None
    n = len(chosen)
    mean_t = sum(t for t, _ in chosen) / n
    mean_v = sum(v for _, v in chosen) / n
    var = sum((t - mean_t) ** 2 for t, _ in chosen)
    if var == 0:
        return None
    return float(sum((t - mean_t) * (v - mean_v) for t, v in chosen) / var * 60_000)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS, window_ms=WINDOWS, start=st.integers(0, 2_000_000_000_000))
def test_running_slope_is_the_refit_slope_after_every_reading(steps: list[tuple[int, float]], window_ms: int,
                                                             start: int) -> None:
    window = SlopeWindow(window_ms)
    points: list[tuple[int, float]] = []
    ts = start
    for gap, value in steps:
        ts += gap
        points.append((ts, value))
        window.add(ts, value)
        running, refit = window.slope_per_min(), least_squares_slope(points, window_ms)
        assert (running is None) == (refit is None)
        if running is not None and refit is not None:
            exact = exact_slope(points, window_ms)
            if all((v * 2.0**80).is_integer() for _, v in points):
                assert running == exact  # exact sums: the true slope, rounded once
            assert running == pytest.approx(refit, rel=1e-9, abs=1e-9 * max(1.0, *(abs(v) for _, v in points)))


def test_vitals_keep_only_valid_in_order_readings_and_their_windows() -> None:
    vitals = Vitals()
    vitals.watch("MDC_ECG_HEART_RATE", 60_000)

    def hr(t_s: int, value: float, flags: int = 0) -> Observation:
        return Observation(device="m", stream="s", seq=t_s, ts=t_s * 1000, metric="MDC_ECG_HEART_RATE", value=value,
                           unit="", flags=flags)

    assert [vitals.add(hr(t, 100 - t)) for t in range(0, 40)] == [True] * 40
    assert not vitals.add(hr(10, 0))  # older than the last: a replay
    assert not vitals.add(hr(41, 0, FLAG_DEMO))
    assert vitals.latest("MDC_ECG_HEART_RATE") == (39_000, 61.0)
    assert vitals.slope_per_min("MDC_ECG_HEART_RATE", 60_000) == -60.0


SCORED = st.sampled_from([news2.RR, news2.SPO2, news2.TEMP, *news2.SYSTOLIC, *news2.PULSE])


@settings(max_examples=300, deadline=None)
@given(readings=st.lists(st.tuples(SCORED, st.integers(0, 6_000), st.sampled_from([8.0, 16.0, 35.0, 93.0, 97.0])),
                         min_size=1, max_size=80), max_age_ms=st.sampled_from([5_000, 10_000, 3_600_000]))
def test_news2_memo_scores_what_a_fresh_look_scores(readings: list[tuple[str, int, float]], max_age_ms: int) -> None:
    vitals = Vitals()
    ts = 0
    for metric, step, value in readings:
        ts += step - 1_000  # sometimes a late reading of another metric
        vitals.add(Observation(device="m", stream="s", seq=0, ts=max(0, ts), metric=metric, value=value, unit=""))
        assert news2.tally_of(vitals, max_age_ms) == news2.tally(news2.inputs(vitals, max_age_ms))
