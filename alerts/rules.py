"""Alarm rules with a persistence delay and hysteresis: pure logic, driven by reading timestamps.

Rule kinds: a limit (``spo2`` below 90), a rate of change (``hr`` falling by 20 /min over 60 s), a
combination (low SpO2 *with* falling HR) and the NEWS2 early-warning score (:mod:`alerts.news2`).

A condition must hold for ``delay_s`` before the alarm fires, so a 2-second artefact dip does not
page a nurse. A limit clears only when the value is back past the limit by ``hysteresis``. Readings
flagged demo, unverified, invalid or implausible are never evidence for a physiological alarm: they
never enter a patient's :class:`Vitals`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

import msgspec

from alerts.news2 import News2Rule
from alerts.vitals import Assessment, Vitals
from devices import mdc
from devices.contract import Observation, Priority

Judged = tuple[bool, bool, float | None, Priority]
"""A rule's cheap judgement: (violated, cleared, value, priority); the text is made only for a verdict."""

refid_of = cache(mdc.resolve)  # rules name metrics by alias; resolved once per name, not per reading


class _OneMetric(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A rule about one metric."""

    name: str
    metric: str  # MDC reference id or alias (spo2, hr, ...)

    @property
    def refid(self) -> str:
        """The metric's MDC reference id."""
        return refid_of(self.metric)

    @property
    def metrics(self) -> frozenset[str]:
        """Metrics whose readings are evaluated against this rule."""
        return frozenset({self.refid})

    @property
    def windows(self) -> tuple[tuple[str, int], ...]:
        """The (metric, window ms) rate windows this rule reads."""
        return ()

    def assess(self, vitals: Vitals) -> Assessment | None:
        """Judge the vitals, with the text (the engine's hot path uses ``judge`` and ``describe``)."""
        judged = self.judge(vitals, None)
        return None if judged is None else Assessment(*judged, self.describe(vitals))

    def judge(self, vitals: Vitals, held: Priority | None) -> Judged | None:
        """Violated, cleared, value and priority now (``held``: the priority of the firing alarm, if any)."""
        raise NotImplementedError

    def describe(self, vitals: Vitals) -> str:
        """The alarm's text for the vitals now."""
        raise NotImplementedError


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

    def judge(self, vitals: Vitals, held: Priority | None) -> Judged | None:
        """Judge the latest reading of the metric."""
        latest = vitals.last.get(refid_of(self.metric))
        if latest is None:
            return None
        value = latest[1]  # violated() and cleared() inlined: this runs for every reading of the metric
        if self.direction == "below":
            return value < self.limit, value >= self.limit + self.hysteresis, value, self.priority
        return value > self.limit, value <= self.limit - self.hysteresis, value, self.priority

    def describe(self, vitals: Vitals) -> str:
        """``spo2_low: MDC_... 85 below 90``."""
        latest = vitals.last.get(self.refid)
        value = latest[1] if latest is not None else float("nan")
        return f"{self.name}: {self.refid} {value:g} {self.direction} {self.limit:g}"


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

    @property
    def windows(self) -> tuple[tuple[str, int], ...]:
        """The rate window this rule reads."""
        return ((self.refid, int(self.window_s * 1000)),)

    def judge(self, vitals: Vitals, held: Priority | None) -> Judged | None:
        """Judge the slope of the metric over the window (None until the window is half covered)."""
        slope = vitals.slope_per_min(refid_of(self.metric), int(self.window_s * 1000))
        if slope is None:
            return None
        toward = slope if self.direction == "rising" else -slope
        return toward >= self.per_min, toward < self.per_min - self.hysteresis, slope, self.priority

    def describe(self, vitals: Vitals) -> str:
        """``hr_falling_fast: MDC_... falling 35.0/min (limit 30/min over 60 s)``."""
        slope = vitals.slope_per_min(self.refid, int(self.window_s * 1000)) or 0.0
        return (f"{self.name}: {self.refid} {self.direction} {abs(slope):.1f}/min "
                f"(limit {self.per_min:g}/min over {self.window_s:g} s)")


class Condition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One part of a combined rule: a limit (below/above ``value``) or a rate (rising/falling ``value`` per min)."""

    metric: str
    test: Literal["below", "above", "rising", "falling"]
    value: float
    window_s: float = 60.0

    def holds(self, vitals: Vitals) -> bool | None:
        """Whether the condition holds now (None when the data to judge it is missing)."""
        refid = refid_of(self.metric)
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
        return frozenset(refid_of(c.metric) for c in self.all)

    @property
    def windows(self) -> tuple[tuple[str, int], ...]:
        """The rate windows of its rate conditions."""
        return tuple((refid_of(c.metric), int(c.window_s * 1000)) for c in self.all if c.test in ("rising", "falling"))

    def assess(self, vitals: Vitals) -> Assessment | None:
        """All parts must hold; any part known to be false clears it."""
        judged = self.judge(vitals, None)
        return None if judged is None else Assessment(*judged, self.describe(vitals) if judged[0] else self.name)

    def judge(self, vitals: Vitals, held: Priority | None) -> Judged:
        """All parts must hold; any part known to be false clears it."""
        all_hold, any_false = True, False
        for condition in self.all:
            verdict = condition.holds(vitals)
            if verdict is not True:
                all_hold = False
                any_false = any_false or verdict is False
        return all_hold, not all_hold and any_false, None, self.priority

    def describe(self, vitals: Vitals) -> str:
        """``desat_bradycardia: spo2 below 90 and hr falling 10``."""
        return f"{self.name}: " + " and ".join(f"{c.metric} {c.test} {c.value:g}" for c in self.all)


@dataclass(slots=True)
class Verdict:
    """What one reading did to one rule's state: fire, update (priority changed while firing) or clear."""

    action: Literal["fire", "update", "clear"]
    onset_ms: int
    value: float | None
    priority: Priority = "high"
    text: str = ""


@dataclass(slots=True)
class Track:
    """One source's alarm state under one rule."""

    since: int | None = None  # first reading of the current violation
    firing: bool = False
    priority: Priority | None = None
    vitals: Vitals | None = None  # used only by Evaluator.observe


class Evaluator:
    """Per-source state of one rule: persistence delay before firing, hysteresis before clearing."""

    def __init__(self, rule: Rule) -> None:
        """Start with no source violating."""
        self.rule = rule
        self._tracks: dict[str, Track] = {}

    def _track(self, source: str) -> Track:
        track = self._tracks.get(source)
        if track is None:
            track = self._tracks[source] = Track()
        return track

    def observe(self, source: str, obs: Observation) -> Verdict | None:
        """Feed one reading for ``source`` (the evaluator keeps its vitals); return a verdict if the state changed."""
        track = self._track(source)
        if track.vitals is None:
            track.vitals = Vitals()
            for refid, window_ms in self.rule.windows:
                track.vitals.watch(refid, window_ms)
        if not track.vitals.add(obs):
            return None  # a replayed older reading, or data that must never raise an alarm
        return self.step(source, track.vitals, obs.ts)

    def step(self, source: str, vitals: Vitals, ts: int) -> Verdict | None:
        """Judge ``source``'s vitals at reading time ``ts``; return a verdict if the alarm state changed.

        The hot path: a cheap judgement per reading, the alarm's text only when a verdict is returned.
        """
        return self.step_track(self._tracks.get(source) or self._track(source), vitals, ts)

    def track(self, source: str) -> Track:
        """``source``'s state (the engine keeps it beside its index, saving a lookup per reading)."""
        return self._track(source)

    def step_track(self, track: Track, vitals: Vitals, ts: int) -> Verdict | None:
        """:meth:`step` with the source's state already at hand."""
        rule = self.rule
        judged = rule.judge(vitals, track.priority if track.firing else None)
        if judged is None:
            return None
        violated, cleared, value, priority = judged
        if violated:
            if track.since is None:
                track.since = ts
            if not track.firing and ts - track.since >= rule.delay_s * 1000:
                track.firing, track.priority = True, priority
                return Verdict("fire", track.since, value, priority, rule.describe(vitals))
            if track.firing and priority != track.priority:
                track.priority = priority
                return Verdict("update", track.since, value, priority, rule.describe(vitals))
            return None
        if track.firing:
            if cleared:
                onset = track.since if track.since is not None else ts
                track.firing, track.since, track.priority = False, None, None
                return Verdict("clear", onset, value, priority, rule.describe(vitals))
            return None
        track.since = None  # the condition ended before the delay ran out: no alarm
        return None

    def restore(self, source: str, onset_ms: int) -> None:
        """Mark ``source`` as already firing (after a restart with an open alarm)."""
        track = self._track(source)
        track.since, track.firing, track.priority = onset_ms, True, self.rule.priority

    def forget(self, source: str) -> None:
        """Drop ``source``'s state (its alert was resolved by staff; a continuing condition fires anew)."""
        track = self._tracks.get(source)
        if track is not None:
            track.since, track.firing, track.priority = None, False, None


Rule = LimitRule | RateRule | CombinedRule | News2Rule
"""Any alarm rule."""
