"""The alert engine: turns readings and device events into alerts, one open alert per (source, type).

Pure and synchronous: it takes contract items (and the time) and returns the alerts whose state
changed, which the service persists and publishes. A repeat of an open condition updates the open
alert instead of creating another. The lifecycle (latching, silencing, acknowledgement) follows
:mod:`state.lifecycle`; staff actions committed in the state are adopted with :meth:`AlertEngine.adopt`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

from alerts import technical
from alerts.news2 import News2Rule
from alerts.rules import CombinedRule, Evaluator, LimitRule, RateRule, Rule, Track, Verdict
from alerts.ruleset import RuleBook, RuleSet
from alerts.vitals import Vitals
from devices.contract import FLAG_NO_ALARM, AlarmKind, Alert, DeviceEvent, GatewayStatus, Item, Observation, Priority
from devices.site import Site
from state import lifecycle

Key = tuple[str, str, str | None]


class _Source:
    """One bed's (or bedless device's) vitals and its rules indexed by metric, built once per rule book."""

    __slots__ = ("by_metric", "generation", "rules", "vitals")

    def __init__(self, rules: list[Rule], vitals: Vitals, by_metric: dict[str, list[tuple[Rule, Evaluator, Track]]],
                 generation: int) -> None:
        self.rules = rules  # the rules in force when indexed
        self.vitals = vitals
        self.by_metric = by_metric  # metric -> the rules (and their evaluators) its readings re-evaluate
        self.generation = generation


def alert_id(source: str, type_: str, onset: int, device_alert: str | None = None) -> str:
    """A stable, topic-safe id for one alert episode."""
    digest = hashlib.sha1(f"{source}|{type_}|{onset}|{device_alert or ''}".encode(),
                          usedforsecurity=False).hexdigest()[:16]
    return f"al-{digest}"


def _custom_book(site: Site, rules: Iterable[Rule]) -> RuleBook:
    """A book in which every bed has exactly ``rules``."""
    rules = list(rules)
    scores = [r for r in rules if isinstance(r, News2Rule)]
    ruleset = RuleSet(name="custom", limit=[r for r in rules if isinstance(r, LimitRule)],
                      rate=[r for r in rules if isinstance(r, RateRule)],
                      combined=[r for r in rules if isinstance(r, CombinedRule)],
                      news2=scores[0] if scores else News2Rule(enabled=False))
    return RuleBook(_beds(site), default="custom", sets={"custom": ruleset})


def _beds(site: Site) -> dict[str, str]:
    return {bed: unit.id for unit in site.units for bed in unit.beds}


class AlertEngine:
    """Rules, device events and liveness in, alert transitions out."""

    def __init__(self, site: Site, rules: Iterable[Rule] | RuleBook, *, silent_after_s: float = 30.0,
                 gateway_stale_s: float = 30.0) -> None:
        """Use a rule book (per-unit sets and overrides) or one list of rules for every bed."""
        self.site = site
        self.devices = site.device_index()
        self.book = rules if isinstance(rules, RuleBook) else _custom_book(site, rules)
        self.liveness = technical.Liveness(int(silent_after_s * 1000), int(gateway_stale_s * 1000))
        self._sources: dict[str, _Source] = {}
        self._generation = 0  # bumped by reload: every source re-indexes its rules on its next reading
        self._shapes: dict[int, tuple[frozenset[str], tuple[tuple[str, int], ...]]] = {}  # rule -> metrics, windows
        self._evaluators: dict[tuple[str, str], Evaluator] = {}
        # (source, type, device alert uuid or metric) -> the open alert: one per condition, a repeat updates it
        self.open: dict[Key, Alert] = {}

    # --- rules -------------------------------------------------------------------------------------------------

    def reload(self, book: RuleBook) -> None:
        """Use new rules (a limit changed); conditions being timed keep their onset.

        A reload that changes nothing (the service polls every few seconds) keeps the book and its indexes;
        otherwise each source looks at its rules again on its next reading, and re-indexes only if they changed.
        """
        if book.same_rules(self.book):
            return
        self.book = book
        self._generation += 1
        self._shapes.clear()

    def _evaluator(self, source: str, rule: Rule) -> Evaluator:
        evaluator = self._evaluators.get((source, rule.name))
        if evaluator is None:
            evaluator = self._evaluators[(source, rule.name)] = Evaluator(rule)
        elif evaluator.rule is not rule:
            evaluator.rule = rule
        return evaluator

    # --- restart -----------------------------------------------------------------------------------------------

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Reload open alerts after a restart, so a continuing condition is not raised twice.

        Latched, silenced (with their deadline) and acknowledged alerts come back as they were.
        """
        for alert in alerts:
            if alert.state == "resolved":
                continue
            self.open[self._key_of(alert)] = alert
            if alert.alarm_kind == "technical" or alert.condition_cleared:
                continue
            bed = alert.bed if alert.bed in self.book.unit_of_bed else None
            for rule in self.book.rules_for(bed):
                if rule.name == alert.type:
                    self._evaluator(alert.source, rule).restore(alert.source, alert.onset)

    def adopt(self, alert: Alert) -> None:
        """Take the committed state of an alert (staff acknowledged, silenced, or the state resolved it)."""
        key = self._key_of(alert)
        if alert.state == "resolved":
            if key in self.open and self.open[key].id == alert.id:
                del self.open[key]
                evaluator = self._evaluators.get((alert.source, alert.type))
                if evaluator is not None and not alert.condition_cleared:
                    evaluator.forget(alert.source)  # a condition still present is a new episode
            return
        current = self.open.get(key)
        if current is None or current.id == alert.id:
            self.open[key] = alert

    @staticmethod
    def _key_of(alert: Alert) -> Key:
        return alert.source, alert.type, alert.device_alert or alert.metric

    # --- input -------------------------------------------------------------------------------------------------

    def process(self, items: Iterable[Item], now: int) -> list[Alert]:
        """Feed items; return the alerts that changed, in order."""
        changed: list[Alert] = []
        for item in items:
            if isinstance(item, Observation):
                self._observation(item, now, changed)
            elif isinstance(item, DeviceEvent):
                changed.extend(self._device_event(item, now))
        return changed

    def prepare(self, beds: Iterable[str]) -> int:
        """Index every bed's rules now, before readings arrive; return how many were indexed.

        Indexing is what a source's first reading would do. Done at start-up, the hundreds of thousands of
        long-lived objects of a large hospital exist before the service goes live (where the service can
        freeze them out of the garbage collector's way) instead of appearing under the first minute of load,
        when each growth step made a full collection pause the loop for up to half a second (10,000 beds).
        """
        done = 0
        for bed in beds:
            if bed in self.book.unit_of_bed and bed not in self._sources:
                self._source(bed, bed, None)
                done += 1
        return done

    def _source(self, source: str, bed: str | None, known: _Source | None) -> _Source:
        """Index the rules in force at ``source`` by metric (and watch their rate windows) for this book."""
        bed = bed if bed in self.book.unit_of_bed else None
        rules = self.book.rules_for(bed)
        if known is not None and known.rules == rules:  # a reload that changed other beds' rules
            known.generation = self._generation
            return known
        vitals = known.vitals if known is not None else Vitals()
        by_metric: dict[str, list[tuple[Rule, Evaluator, Track]]] = {}
        for rule in rules:
            evaluator = self._evaluator(source, rule)
            track = evaluator.track(source)
            shape = self._shapes.get(id(rule))  # the book holds its rules: an id is not reused while cached
            if shape is None:
                shape = self._shapes[id(rule)] = (rule.metrics, rule.windows)
            for metric in shape[0]:
                by_metric.setdefault(metric, []).append((rule, evaluator, track))
            for refid, window_ms in shape[1]:
                vitals.watch(refid, window_ms)
        made = self._sources[source] = _Source(rules, vitals, by_metric, self._generation)
        return made

    def _observation(self, obs: Observation, now: int, changed: list[Alert]) -> None:
        self.liveness.device_heard(obs.device, obs.bed, now)
        if (obs.device, technical.DEVICE_SILENT, None) in self.open:
            changed.extend(self._resolve(obs.device, technical.DEVICE_SILENT, now, None))
        source = obs.bed or obs.device
        state = self._sources.get(source)
        if state is None or state.generation != self._generation:
            state = self._source(source, obs.bed, state)
        vitals = state.vitals
        if not vitals.add(obs):
            return  # flagged (demo, invalid, implausible, unverified) or replayed: never evidence
        rules = state.by_metric.get(obs.metric)
        if not rules:
            return  # a metric no rule reads
        ts = obs.ts
        for rule, evaluator, track in rules:
            verdict = evaluator.step_track(track, vitals, ts)
            if verdict is not None:
                changed.extend(self._verdict(source, rule, verdict, obs, now))

    def _verdict(self, source: str, rule: Rule, verdict: Verdict, obs: Observation, now: int) -> list[Alert]:
        metric = rule.refid if isinstance(rule, LimitRule | RateRule) else None
        if verdict.action == "clear":
            return self._resolve(source, rule.name, now, verdict.value, metric=metric)
        text = f"{verdict.text} for {rule.delay_s:g} s" if rule.delay_s else verdict.text
        return [self._raise(source, rule.name, "physiological", verdict.priority, verdict.onset_ms, now, text,
                            obs.bed, metric, verdict.value, delay_ms=int(rule.delay_s * 1000), latch=True)]

    def _device_event(self, event: DeviceEvent, now: int) -> list[Alert]:
        type_ = event.event
        if event.phase == "end":
            return self._resolve(event.device, type_, now, None, event.alert_uuid, event.source)
        if event.flags & FLAG_NO_ALARM:
            return []  # a device in demo mode, or an unverified report: never an alarm
        alert = self._raise(event.device, type_, event.alarm_kind, event.priority, event.ts, now,
                            event.text or type_, event.bed, event.source, None, event.alert_uuid)
        if technical.one_shot(type_) and not alert.condition_cleared:
            # a past fact (a data gap): nothing will end it, so it waits for an acknowledgement
            alert = msgspec.structs.replace(alert, latched=True, condition_cleared=True)
            self.open[self._key_of(alert)] = alert
        return [alert]

    def gateway_status(self, status: GatewayStatus, now: int) -> list[Alert]:
        """A gateway's birth, heartbeat or last will: offline raises "gateway.offline", online clears it."""
        self.liveness.gateway_heard(status.gateway, status.state == "online", now)
        if status.state == "online":
            return self._resolve(status.gateway, technical.GATEWAY_OFFLINE, now, None)
        return [self.raise_technical(status.gateway, technical.GATEWAY_OFFLINE, "high",
                                     f"gateway {status.gateway} offline (last will)", now)]

    # --- time --------------------------------------------------------------------------------------------------

    def tick(self, now: int) -> list[Alert]:
        """Advance time: silences that ran out, devices gone silent, gateways whose heartbeat stopped."""
        changed: list[Alert] = []
        for key, alert in list(self.open.items()):
            if lifecycle.silence_lapsed(alert, now):
                self.open[key] = lifecycle.unsilence(alert, now)
                changed.append(self.open[key])
        for device, bed, last in self.liveness.silent_devices(now):
            if (device, technical.DEVICE_SILENT, None) not in self.open:
                changed.append(self.raise_technical(
                    device, technical.DEVICE_SILENT, "medium",
                    f"{device}: no data for {(now - last) // 1000} s", now, bed=bed, onset=last))
        for gateway, last in self.liveness.offline_gateways(now):
            if (gateway, technical.GATEWAY_OFFLINE, None) not in self.open:
                changed.append(self.raise_technical(
                    gateway, technical.GATEWAY_OFFLINE, "high",
                    f"gateway {gateway}: no heartbeat for {(now - last) // 1000} s", now, onset=last))
        return changed

    # --- technical alarms raised by other parts --------------------------------------------------------------

    def raise_technical(self, source: str, type_: str, priority: Priority | None, message: str, now: int, *,
                        bed: str | None = None, unit: str | None = None, onset: int | None = None) -> Alert:
        """Raise (or repeat) a technical alarm about ``source`` (a device, gateway, unit or channel).

        For conditions found outside the engine, such as ``delivery.failed`` (no live receiver, an
        unconfirmed notification). ``priority`` None takes the catalogue's. Clear it with
        :meth:`clear_technical`. Returns the alert to persist and publish.
        """
        alert = self._raise(source, type_, "technical", priority or technical.default_priority(type_),
                            now if onset is None else onset, now, message, bed, None, None)
        if unit is not None and alert.unit is None:
            alert = msgspec.structs.replace(alert, unit=unit)
            self.open[self._key_of(alert)] = alert
        return alert

    def clear_technical(self, source: str, type_: str, now: int) -> list[Alert]:
        """The technical condition has ended: the alerts that changed (resolved), if it was open."""
        return self._resolve(source, type_, now, None)

    # --- transitions -------------------------------------------------------------------------------------------

    def _raise(self, source: str, type_: str, kind: AlarmKind, priority: Priority, onset: int, now: int, message: str,
               bed: str | None, metric: str | None, value: float | None, device_alert: str | None = None, *,
               delay_ms: int = 0, latch: bool = False) -> Alert:
        """Open or repeat an alert; with ``latch`` high priority latches (our rules; devices latch their own)."""
        key = (source, type_, device_alert or metric)  # a fridge's high and low probes are two conditions
        existing = self.open.get(key)
        if existing is not None:  # a repeat updates the open alert
            alert = lifecycle.repeat(existing, now, message, value, priority)
        else:
            unit = self.site.unit_of_bed(bed) if bed else None
            alert = Alert(id=alert_id(source, type_, onset, device_alert), type=type_, source=source,
                          alarm_kind=kind, priority=priority, state="active",
                          onset=onset, updated=now, message=message, bed=bed, unit=unit,
                          metric=metric, value=value, device_alert=device_alert, delay_ms=delay_ms)
            alert = msgspec.structs.replace(alert, latched=latch and lifecycle.latches(alert))
        self.open[key] = alert
        return alert

    def _resolve(self, source: str, type_: str, now: int, value: float | None,
                 device_alert: str | None = None, metric: str | None = None) -> list[Alert]:
        key = (source, type_, device_alert or metric)
        existing = self.open.get(key)
        if existing is None or existing.condition_cleared:
            return []
        alert = lifecycle.clear(existing, now, value)
        if alert.state == "resolved":
            del self.open[key]
        else:
            self.open[key] = alert
        return [alert]
