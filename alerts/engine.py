"""The alert engine: turns readings and device events into alerts, one open alert per (source, type).

Pure and synchronous: it takes contract items and returns the alerts whose state changed, which the
service persists and publishes. A repeat of an open condition updates the open alert instead of
creating another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

from alerts.rules import Evaluator, LimitRule
from devices.contract import FLAG_NO_ALARM, AlarmKind, Alert, DeviceEvent, Item, Observation, Priority
from devices.site import Site


def alert_id(source: str, type_: str, onset: int, device_alert: str | None = None) -> str:
    """A stable, topic-safe id for one alert episode."""
    digest = hashlib.sha1(f"{source}|{type_}|{onset}|{device_alert or ''}".encode(),
                          usedforsecurity=False).hexdigest()[:16]
    return f"al-{digest}"


class AlertEngine:
    """Rules and device events in, alert transitions out."""

    def __init__(self, site: Site, rules: Iterable[LimitRule]) -> None:
        """Index rules by metric and beds by unit."""
        self.site = site
        self.devices = site.device_index()
        self._by_metric: dict[str, list[Evaluator]] = {}
        for rule in rules:
            evaluator = Evaluator(rule)
            self._by_metric.setdefault(evaluator.refid, []).append(evaluator)
        # (source, type, device alert uuid or metric) -> the open alert: one per condition, a repeat updates it
        self.open: dict[tuple[str, str, str | None], Alert] = {}

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Reload open alerts after a restart so a continuing condition is not raised twice."""
        for alert in alerts:
            if alert.state == "resolved":
                continue
            self.open[(alert.source, alert.type, alert.device_alert or alert.metric)] = alert
            for evaluators in self._by_metric.values():
                for evaluator in evaluators:
                    if evaluator.rule.name == alert.type:
                        evaluator.restore(alert.source, alert.onset)

    def process(self, items: Iterable[Item], now: int) -> list[Alert]:
        """Feed items; return the alerts that changed, in order."""
        changed: list[Alert] = []
        for item in items:
            if isinstance(item, Observation):
                for evaluator in self._by_metric.get(item.metric, ()):
                    verdict = evaluator.observe(self._source(item.device, item.bed), item)
                    if verdict is None:
                        continue
                    rule = evaluator.rule
                    source = self._source(item.device, item.bed)
                    if verdict.action == "fire":
                        text = (f"{rule.name}: {item.metric} {verdict.value:g} {item.unit} {rule.direction} "
                                f"{rule.limit:g} for {rule.delay_s:g} s")
                        changed.append(self._raise(source, rule.name, "physiological", rule.priority, verdict.onset_ms,
                                                   now, text, item.bed, item.metric, verdict.value))
                    else:
                        changed.extend(self._resolve(source, rule.name, now, verdict.value, metric=item.metric))
            elif isinstance(item, DeviceEvent):
                changed.extend(self._device_event(item, now))
        return changed

    def _source(self, device: str, bed: str | None) -> str:
        """Physiological alarms belong to the bed (the patient), technical ones to the device."""
        return bed or device

    def _device_event(self, event: DeviceEvent, now: int) -> list[Alert]:
        type_ = event.event
        if event.phase == "end":
            return self._resolve(event.device, type_, now, None, event.alert_uuid, event.source)
        if event.flags & FLAG_NO_ALARM:
            return []  # a device in demo mode, or an unverified report: never an alarm
        return [self._raise(event.device, type_, event.alarm_kind, event.priority, event.ts, now,
                            event.text or type_, event.bed, event.source, None, event.alert_uuid)]

    def _raise(self, source: str, type_: str, kind: AlarmKind, priority: Priority, onset: int, now: int, message: str,
               bed: str | None, metric: str | None, value: float | None, device_alert: str | None = None) -> Alert:
        key = (source, type_, device_alert or metric)  # a fridge's high and low probes are two conditions
        existing = self.open.get(key)
        if existing is not None:  # a repeat updates the open alert
            alert = msgspec.structs.replace(existing, updated=now, message=message, value=value,
                                            priority=priority)
        else:
            unit = self.site.unit_of_bed(bed) if bed else None
            alert = Alert(id=alert_id(source, type_, onset, device_alert), type=type_, source=source,
                          alarm_kind=kind, priority=priority, state="active",
                          onset=onset, updated=now, message=message, bed=bed, unit=unit,
                          metric=metric, value=value, device_alert=device_alert)
        self.open[key] = alert
        return alert

    def _resolve(self, source: str, type_: str, now: int, value: float | None,
                 device_alert: str | None = None, metric: str | None = None) -> list[Alert]:
        existing = self.open.pop((source, type_, device_alert or metric), None)
        if existing is None:
            return []
        return [msgspec.structs.replace(existing, state="resolved", updated=now,
                                        value=value if value is not None else existing.value)]
