"""Limit rules with a persistence delay and hysteresis: pure logic, driven by reading timestamps.

A condition must hold for ``delay_s`` before the alarm fires, so a 2-second artefact dip does not
page a nurse. It clears only when the value is back past the limit by ``hysteresis``. Readings
flagged demo, unverified, invalid or implausible are never evidence for a physiological alarm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from devices import mdc
from devices.contract import FLAG_NO_ALARM, Observation, Priority


class LimitRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``metric`` below (or above) ``limit`` for ``delay_s`` raises an alarm of ``priority``."""

    name: str
    metric: str  # MDC reference id or alias (spo2, hr, ...)
    direction: Literal["below", "above"]
    limit: float
    priority: Priority = "high"
    delay_s: float = 10.0
    hysteresis: float = 1.0

    @property
    def refid(self) -> str:
        """The metric's MDC reference id."""
        return mdc.resolve(self.metric)

    def violated(self, value: float) -> bool:
        """True when ``value`` is past the limit."""
        return value < self.limit if self.direction == "below" else value > self.limit

    def cleared(self, value: float) -> bool:
        """True when ``value`` is back inside by at least the hysteresis."""
        if self.direction == "below":
            return value >= self.limit + self.hysteresis
        return value <= self.limit - self.hysteresis


@dataclass(slots=True)
class Verdict:
    """What one reading did to one rule's state: fire, clear, or nothing (None)."""

    action: Literal["fire", "clear"]
    onset_ms: int
    value: float


@dataclass(slots=True)
class _Track:
    since: int | None = None  # first reading of the current violation
    firing: bool = False
    last_ts: int = 0


class Evaluator:
    """Per-source state of one rule."""

    def __init__(self, rule: LimitRule) -> None:
        """Start with no source violating."""
        self.rule = rule
        self.refid = rule.refid
        self._tracks: dict[str, _Track] = {}

    def observe(self, source: str, obs: Observation) -> Verdict | None:
        """Feed one reading of this rule's metric for ``source``; return a verdict if the state changed."""
        track = self._tracks.setdefault(source, _Track())
        if obs.ts < track.last_ts or obs.flags & FLAG_NO_ALARM:
            return None  # a replayed older reading, or data that must never raise an alarm
        track.last_ts = obs.ts
        rule = self.rule
        if rule.violated(obs.value):
            if track.since is None:
                track.since = obs.ts
            if not track.firing and obs.ts - track.since >= rule.delay_s * 1000:
                track.firing = True
                return Verdict("fire", track.since, obs.value)
            return None
        if track.firing:
            if rule.cleared(obs.value):
                onset = track.since if track.since is not None else obs.ts
                track.firing = False
                track.since = None
                return Verdict("clear", onset, obs.value)
            return None
        track.since = None  # the dip ended before the delay ran out: no alarm
        return None

    def restore(self, source: str, onset_ms: int) -> None:
        """Mark ``source`` as already firing (after a restart with an open alarm)."""
        self._tracks[source] = _Track(since=onset_ms, firing=True, last_ts=onset_ms)
