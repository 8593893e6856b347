"""A patient's (or device's) latest valid readings, running least-squares windows for rates, and a rule's judgement.

Rates are kept incrementally: a :class:`SlopeWindow` per (metric, window) holds running sums of the
points in its window (added on arrival, evicted when they leave), so a slope costs O(1) per reading
instead of a refit over the window. The sums are exact integers (time in ms, values scaled by 2**80,
which every physiological reading fits exactly), so the slope is the exact least-squares slope,
rounded once; :func:`least_squares_slope` is the straightforward definition it is tested against.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from devices.contract import FLAG_NO_ALARM, Observation, Priority

HISTORY_MS = 15 * 60_000  # the longest window a rate looks back over
_SCALE_BITS = 80  # values are kept as exact integers v * 2**80 (any float with no bits below 2**-80)
_SCALE = float(2**_SCALE_BITS)


@dataclass(slots=True)
class Assessment:
    """One rule's judgement of a source's vitals now."""

    violated: bool
    cleared: bool
    value: float | None
    priority: Priority
    text: str


def least_squares_slope(points: Iterable[tuple[int, float]], window_ms: int) -> float | None:
    """The straightforward definition: slope per minute of ``points`` (oldest first) within ``window_ms`` of the last.

    None with fewer than 3 points, less than half the window covered, or no spread in time.
    """
    series = list(points)
    if not series:
        return None
    start = series[-1][0] - min(window_ms, HISTORY_MS)
    chosen = [(t, v) for t, v in series if t >= start]
    if len(chosen) < 3 or chosen[-1][0] - chosen[0][0] < window_ms / 2:
        return None
    mean_t = sum(t for t, _ in chosen) / len(chosen)
    mean_v = sum(v for _, v in chosen) / len(chosen)
    var = sum((t - mean_t) ** 2 for t, _ in chosen)
    if var == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in chosen) / var * 60_000


class SlopeWindow:
    """The points of one metric within ``window_ms`` of its latest, with exact running least-squares sums."""

    __slots__ = ("_inexact", "_origin", "_points", "_st", "_stt", "_stv", "_sv", "keep_ms", "window_ms")

    def __init__(self, window_ms: int) -> None:
        """An empty window."""
        self.window_ms = window_ms
        self.keep_ms = min(window_ms, HISTORY_MS)
        self._points: deque[tuple[int, float, int | None]] = deque()  # (ts, value, value * 2**80 or None)
        self._origin: int | None = None  # times are summed relative to this (smaller integers, same slope)
        self._st = self._stt = self._sv = self._stv = 0
        self._inexact = 0  # points whose value has no exact scaled integer (tiny, inf, nan): refit while any

    def add(self, ts: int, value: float) -> None:
        """A new latest point (``ts`` not older than the last); points that left the window are evicted."""
        points = self._points
        start = ts - self.keep_ms
        while points and points[0][0] < start:
            self._drop(*points.popleft())
        if self._origin is None:
            self._origin = ts
        scaled_f = value * _SCALE
        scaled = int(scaled_f) if scaled_f.is_integer() else None
        points.append((ts, value, scaled))
        t = ts - self._origin
        self._st += t
        self._stt += t * t
        if scaled is None:
            self._inexact += 1
        else:
            self._sv += scaled
            self._stv += t * scaled

    def _drop(self, ts: int, _value: float, scaled: int | None) -> None:
        t = ts - (self._origin or 0)
        self._st -= t
        self._stt -= t * t
        if scaled is None:
            self._inexact -= 1
        else:
            self._sv -= scaled
            self._stv -= t * scaled

    def slope_per_min(self) -> float | None:
        """Least-squares slope per minute (None until half the window is covered, as :func:`least_squares_slope`)."""
        points = self._points
        n = len(points)
        if n < 3 or 2 * (points[-1][0] - points[0][0]) < self.window_ms:
            return None
        if self._inexact:
            return least_squares_slope(((t, v) for t, v, _ in points), self.window_ms)
        den = n * self._stt - self._st * self._st
        if den == 0:
            return None
        # exact rational slope per ms, scaled back and rounded once (int / int is correctly rounded)
        return (n * self._stv - self._st * self._sv) * 60_000 / (den << _SCALE_BITS)


@dataclass(slots=True)
class Vitals:
    """The latest valid reading of one source (bed or device) per metric, and its rate windows."""

    last: dict[str, tuple[int, float]] = field(default_factory=dict)
    windows: dict[str, list[SlopeWindow]] = field(default_factory=dict)  # metric -> its windows
    now: int = 0
    # Scores memoised on the latest values (alerts.news2.tally_of): ``version`` moves when a reading may change
    # them (a new value, a new metric, or a metric back after more than ``fresh_ms`` without a reading).
    version: int = 0
    fresh_ms: int = 2**62
    memo: dict[int, tuple[int, int, tuple[int, int, bool]]] = field(default_factory=dict)

    def watch(self, refid: str, window_ms: int) -> SlopeWindow:
        """The rate window of a metric, started now if new (seeded with the latest reading)."""
        windows = self.windows.setdefault(refid, [])
        for window in windows:
            if window.window_ms == window_ms:
                return window
        window = SlopeWindow(window_ms)
        latest = self.last.get(refid)
        if latest is not None:
            window.add(*latest)
        windows.append(window)
        return window

    def add(self, obs: Observation) -> bool:
        """Keep a reading; False (ignored) for flagged data or a reading older than the last of its metric."""
        if obs.flags & FLAG_NO_ALARM:
            return False
        metric, ts = obs.metric, obs.ts
        latest = self.last.get(metric)
        if latest is not None and ts < latest[0]:
            return False
        value = obs.value
        if latest is None or latest[1] != value or self.now - latest[0] > self.fresh_ms:
            self.version += 1
        self.last[metric] = (ts, value)
        windows = self.windows.get(metric)
        if windows:
            for window in windows:
                window.add(ts, value)
        if ts > self.now:
            self.now = ts
        return True

    def latest(self, refid: str, max_age_ms: int | None = None) -> tuple[int, float] | None:
        """The newest ``(ts, value)`` of a metric, if any (and not older than ``max_age_ms``)."""
        latest = self.last.get(refid)
        if latest is None or (max_age_ms is not None and self.now - latest[0] > max_age_ms):
            return None
        return latest

    def slope_per_min(self, refid: str, window_ms: int) -> float | None:
        """Least-squares slope per minute over the last ``window_ms`` (None until half the window is covered).

        A window not watched before starts with the latest reading (the engine watches its rules' windows
        before the first reading, so nothing is missed).
        """
        return self.watch(refid, window_ms).slope_per_min()
