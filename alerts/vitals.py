"""A patient's (or device's) recent valid readings, and a rule's judgement of them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from devices.contract import FLAG_NO_ALARM, Observation, Priority

HISTORY_MS = 15 * 60_000  # readings kept per metric and source, for rates and the early-warning score


@dataclass(slots=True)
class Assessment:
    """One rule's judgement of a source's vitals now."""

    violated: bool
    cleared: bool
    value: float | None
    priority: Priority
    text: str


@dataclass(slots=True)
class Vitals:
    """Recent valid readings of one source (bed or device), per metric, oldest first."""

    series: dict[str, deque[tuple[int, float]]] = field(default_factory=dict)
    now: int = 0

    def add(self, obs: Observation) -> bool:
        """Keep a reading; False (ignored) for flagged data or a reading older than the last of its metric."""
        if obs.flags & FLAG_NO_ALARM:
            return False
        series = self.series.setdefault(obs.metric, deque())
        if series and obs.ts < series[-1][0]:
            return False
        series.append((obs.ts, obs.value))
        while series and series[0][0] < obs.ts - HISTORY_MS:
            series.popleft()
        self.now = max(self.now, obs.ts)
        return True

    def latest(self, refid: str, max_age_ms: int | None = None) -> tuple[int, float] | None:
        """The newest ``(ts, value)`` of a metric, if any (and not older than ``max_age_ms``)."""
        series = self.series.get(refid)
        if not series:
            return None
        ts, value = series[-1]
        if max_age_ms is not None and self.now - ts > max_age_ms:
            return None
        return ts, value

    def slope_per_min(self, refid: str, window_ms: int) -> float | None:
        """Least-squares slope per minute over the last ``window_ms`` (None until half the window is covered)."""
        series = self.series.get(refid)
        if not series:
            return None
        start = series[-1][0] - window_ms
        points = [(t, v) for t, v in series if t >= start]
        if len(points) < 3 or points[-1][0] - points[0][0] < window_ms / 2:
            return None
        mean_t = sum(t for t, _ in points) / len(points)
        mean_v = sum(v for _, v in points) / len(points)
        var = sum((t - mean_t) ** 2 for t, _ in points)
        if var == 0:
            return None
        slope_per_ms = sum((t - mean_t) * (v - mean_v) for t, v in points) / var
        return slope_per_ms * 60_000
