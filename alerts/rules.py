"""Alarm rules with a persistence delay and hysteresis: pure logic, driven by reading timestamps.

Rule kinds: a limit (``spo2`` below 90), a rate of change (``hr`` falling by 20 /min over 60 s), a
combination (low SpO2 *with* falling HR) and the NEWS2 early-warning score (:mod:`alerts.news2`).

A condition must hold for ``delay_s`` before the alarm fires, so a 2-second artefact dip does not
page a nurse. A limit clears only when the value is back past the limit by ``hysteresis``. Readings
flagged demo, unverified, invalid or implausible are never evidence for a physiological alarm: they
never enter a patient's :class:`Vitals`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import msgspec

from alerts.news2 import News2Rule
from alerts.vitals import Assessment, Vitals
from devices import mdc
from devices.contract import Observation, Priority


class _OneMetric(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A rule about one metric."""

    name: str
    metric: str  # MDC reference id or alias (spo2, hr, ...)

    @property
    def refid(self) -> str:
        """The metric's MDC reference id."""
        return mdc.resolve(self.metric)

    @property
    def metrics(self) -> frozenset[str]:
        """Metrics whose readings are evaluated against this rule."""
        return frozenset({self.refid})


class LimitRule(_OneMetric, frozen=True, forbid_unknown_fields=True):
    """``metric`` below (or above) ``limit`` for ``delay_s`` raises an alarm of ``priority``."""

    direction: Literal["below", "above"]
    limit: float
    priority: Priority = "high"
    delay_s: float = 10.0
    hysteresis: float = 1.0
    enabled: bool = True

    def violated(self, value: float) -> bool:
        """True when ``value`` is past the limit."""
        return value < self.limit if self.direction == "below" else value > self.limit

    def cleared(self, value: float) -> bool:
        """True when ``value`` is back inside by at least the hysteresis."""
        if self.direction == "below":
            return value >= self.limit + self.hysteresis
        return value <= self.limit - self.hysteresis

    def assess(self, vitals: Vitals) -> Assessment | None:
        """Judge the latest reading of the metric."""
        latest = vitals.latest(self.refid)
        if latest is None:
            return None
        value = latest[1]
        return Assessment(self.violated(value), self.cleared(value), value, self.priority,
                          f"{self.name}: {self.refid} {value:g} {self.direction} {self.limit:g}")


class RateRule(_OneMetric, frozen=True, forbid_unknown_fields=True):
    """``metric`` rising (or falling) by at least ``per_min`` per minute, measured over ``window_s``."""

    direction: Literal["rising", "falling"]
    per_min: float
    window_s: float = 60.0
    priority: Priority = "medium"
    delay_s: float = 0.0
    hysteresis: float = 0.0  # in the rule's unit per minute
    enabled: bool = True

    def signed(self, slope: float) -> float:
        """The slope in the rule's direction (positive means the rule's way)."""
        return slope if self.direction == "rising" else -slope

    def assess(self, vitals: Vitals) -> Assessment | None:
        """Judge the slope of the metric over the window (None until the window is half covered)."""
        slope = vitals.slope_per_min(self.refid, int(self.window_s * 1000))
        if slope is None:
            return None
        toward = self.signed(slope)
        return Assessment(toward >= self.per_min, toward < self.per_min - self.hysteresis, slope, self.priority,
                          f"{self.name}: {self.refid} {self.direction} {abs(slope):.1f}/min "
                          f"(limit {self.per_min:g}/min over {self.window_s:g} s)")


class Condition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One part of a combined rule: a limit (below/above ``value``) or a rate (rising/falling ``value`` per min)."""

    metric: str
    test: Literal["below", "above", "rising", "falling"]
    value: float
    window_s: float = 60.0

    def holds(self, vitals: Vitals) -> bool | None:
        """Whether the condition holds now (None when the data to judge it is missing)."""
        refid = mdc.resolve(self.metric)
        if self.test in ("below", "above"):
            latest = vitals.latest(refid, max_age_ms=int(self.window_s * 1000))
            if latest is None:
                return None
            return latest[1] < self.value if self.test == "below" else latest[1] > self.value
        slope = vitals.slope_per_min(refid, int(self.window_s * 1000))
        if slope is None:
            return None
        return slope >= self.value if self.test == "rising" else -slope >= self.value


class CombinedRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every condition of ``all`` holding together (e.g. low SpO2 with falling HR) raises one alarm."""

    name: str
    all: list[Condition]
    priority: Priority = "high"
    delay_s: float = 5.0
    enabled: bool = True
    hysteresis: float = 0.0  # unused: a combination clears when any part stops holding

    @property
    def metrics(self) -> frozenset[str]:
        """Metrics whose readings re-evaluate the combination."""
        return frozenset(mdc.resolve(c.metric) for c in self.all)

    def assess(self, vitals: Vitals) -> Assessment | None:
        """All parts must hold; any part known to be false clears it."""
        verdicts = [c.holds(vitals) for c in self.all]
        if all(v is True for v in verdicts):
            return Assessment(True, False, None, self.priority,
                              f"{self.name}: " + " and ".join(f"{c.metric} {c.test} {c.value:g}" for c in self.all))
        return Assessment(False, any(v is False for v in verdicts), None, self.priority, self.name)


@dataclass(slots=True)
class Verdict:
    """What one reading did to one rule's state: fire, update (priority changed while firing) or clear."""

    action: Literal["fire", "update", "clear"]
    onset_ms: int
    value: float | None
    priority: Priority = "high"
    text: str = ""


@dataclass(slots=True)
class _Track:
    since: int | None = None  # first reading of the current violation
    firing: bool = False
    priority: Priority | None = None
    vitals: Vitals = field(default_factory=Vitals)  # used only by Evaluator.observe


class Evaluator:
    """Per-source state of one rule: persistence delay before firing, hysteresis before clearing."""

    def __init__(self, rule: Rule) -> None:
        """Start with no source violating."""
        self.rule = rule
        self.metrics = rule.metrics
        self.refid = next(iter(self.metrics)) if len(self.metrics) == 1 else ""
        self._tracks: dict[str, _Track] = {}

    def observe(self, source: str, obs: Observation) -> Verdict | None:
        """Feed one reading for ``source`` (the evaluator keeps its vitals); return a verdict if the state changed."""
        track = self._tracks.setdefault(source, _Track())
        if not track.vitals.add(obs):
            return None  # a replayed older reading, or data that must never raise an alarm
        return self.step(source, track.vitals, obs.ts)

    def step(self, source: str, vitals: Vitals, ts: int) -> Verdict | None:
        """Judge ``source``'s vitals at reading time ``ts``; return a verdict if the alarm state changed."""
        track = self._tracks.setdefault(source, _Track())
        rule = self.rule
        judged = rule.assess(vitals)
        if judged is None:
            return None
        if judged.violated:
            if track.since is None:
                track.since = ts
            if not track.firing and ts - track.since >= rule.delay_s * 1000:
                track.firing, track.priority = True, judged.priority
                return Verdict("fire", track.since, judged.value, judged.priority, judged.text)
            if track.firing and judged.priority != track.priority:
                track.priority = judged.priority
                return Verdict("update", track.since, judged.value, judged.priority, judged.text)
            return None
        if track.firing:
            if judged.cleared:
                onset = track.since if track.since is not None else ts
                track.firing, track.since, track.priority = False, None, None
                return Verdict("clear", onset, judged.value, judged.priority, judged.text)
            return None
        track.since = None  # the condition ended before the delay ran out: no alarm
        return None

    def restore(self, source: str, onset_ms: int) -> None:
        """Mark ``source`` as already firing (after a restart with an open alarm)."""
        track = self._tracks.setdefault(source, _Track())
        track.since, track.firing, track.priority = onset_ms, True, self.rule.priority

    def forget(self, source: str) -> None:
        """Drop ``source``'s state (its alert was resolved by staff; a continuing condition fires anew)."""
        track = self._tracks.get(source)
        if track is not None:
            track.since, track.firing, track.priority = None, False, None


Rule = LimitRule | RateRule | CombinedRule | News2Rule
"""Any alarm rule."""
