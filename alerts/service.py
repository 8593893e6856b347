"""The alert service: reads gateway batches off the bus, runs the engine, publishes alert transitions.

It does not wait for the store: it subscribes to the same gateway topics as ingest. Open alerts are
published retained on their own topic, so any subscriber (the API) sees the current set at once; a
resolved alert is published once, then its retained copy is cleared.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import aiomqtt
import msgspec

from alerts.delivery import DeliverySettings, Dispatcher
from alerts.engine import AlertEngine
from alerts.rules import LimitRule
from devices import bus, topics
from devices.clock import now_ms
from devices.contract import Alert, ContractError, Priority, ServiceStatus, decode_batch, encode
from devices.site import Site
from state.db import State

log = logging.getLogger(__name__)

DEFAULT_RULES = (
    LimitRule(name="spo2_low", metric="spo2", direction="below", limit=90, priority="high", delay_s=10, hysteresis=2),
    LimitRule(name="hr_high", metric="hr", direction="above", limit=130, priority="medium", delay_s=10, hysteresis=5),
    LimitRule(name="hr_low", metric="hr", direction="below", limit=40, priority="high", delay_s=10, hysteresis=5),
)


class AlertSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The rule set (clinical defaults unless configured)."""

    rules: list[LimitRule] = msgspec.field(default_factory=lambda: list(DEFAULT_RULES))
    heartbeat_s: float = 5.0
    delivery: DeliverySettings = DeliverySettings()  # routing, escalation and channels (docs/alerting-delivery.md)


class AlertService:
    """Bus adapter around :class:`AlertEngine` with durable state."""

    def __init__(self, site: Site, state: State, address: bus.BrokerAddress,
                 settings: AlertSettings | None = None, instance: str = "alerts-1") -> None:
        """Load persisted alerts (the relational state: SQLite or PostgreSQL) into a fresh engine."""
        self.site = site
        self.address = address
        self.instance = instance
        self.settings = settings or AlertSettings()
        self.alerts = state.alerts
        self.engine = AlertEngine(site, self.settings.rules)
        self.engine.restore(self.alerts.open())
        self.counters: dict[str, int] = defaultdict(int)
        self._status_topic = topics.service_topic(site.id, "alerts", instance)
        self._client: aiomqtt.Client | None = None
        self.dispatch = Dispatcher(site.id, state, self.settings.delivery, self._raise_technical)

    async def run(self) -> None:
        """Run until cancelled."""
        await bus.supervise(f"alerts {self.instance}", self._session)

    def _status(self, state: str) -> bytes:
        return encode(ServiceStatus(service="alerts", instance=self.instance,
                                    state="online" if state == "online" else "offline", ts=now_ms(),
                                    counters=dict(self.counters)))

    async def _session(self) -> None:
        will = aiomqtt.Will(self._status_topic, self._status("offline"), qos=1, retain=True)
        async with bus.client(self.address, f"wardlink-{self.instance}", will=will, clean_session=False) as client:
            self._client = client
            for channel in ("alarm", "data"):
                await client.subscribe(topics.gateway_filter(self.site.id, channel), qos=1)
            for alert in self.engine.open.values():  # make sure the retained set matches our state
                await client.publish(topics.alert_topic(self.site.id, alert.id), encode(alert), qos=1, retain=True)
            log.info("alerts %s: %d rules, %d open alerts", self.instance, len(self.settings.rules),
                     len(self.engine.open))
            async with asyncio.TaskGroup() as group:
                group.create_task(bus.heartbeat(client, self._status_topic, lambda: self._status("online"),
                                                self.settings.heartbeat_s))
                group.create_task(self._receive(client))
                group.create_task(self.dispatch.run(client))

    async def _receive(self, client: aiomqtt.Client) -> None:
        for_us = (topics.gateway_filter(self.site.id, "data"), topics.gateway_filter(self.site.id, "alarm"))
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes) or not any(message.topic.matches(f) for f in for_us):
                continue
            try:
                batch = decode_batch(payload)
            except ContractError:
                self.counters["undecodable"] += 1  # ingest quarantines it; nothing to alarm on
                continue
            for alert in self.engine.process(batch.items, now_ms()):
                await self._publish(client, alert)

    async def _publish(self, client: aiomqtt.Client, alert: Alert) -> None:
        await asyncio.to_thread(self.alerts.save, alert)
        self.counters[f"alerts_{alert.state}"] += 1
        topic = topics.alert_topic(self.site.id, alert.id)
        if alert.state == "resolved":
            await client.publish(topic, encode(alert), qos=1)
            await client.publish(topic, b"", qos=1, retain=True)  # clear the retained copy
            log.info("alert resolved: %s %s (%s)", alert.source, alert.type, alert.id)
        else:
            await client.publish(topic, encode(alert), qos=1, retain=True)
            log.warning("ALERT %s %s %s: %s", alert.priority.upper(), alert.source, alert.type, alert.message)
        await self.dispatch.on_alert(alert)

    async def _raise_technical(self, source: str, type_: str, priority: Priority, message: str, *,
                               bed: str | None, unit: str | None) -> None:
        """Raise a technical alarm of the alarm system itself (delivery failure, no receiver) and publish it."""
        if self._client is None:
            return
        now = now_ms()
        alert = self.engine._raise(source, type_, "technical", priority, now, now, message, bed, None, None)
        if unit is not None and alert.unit is None:
            alert = msgspec.structs.replace(alert, unit=unit)
            self.engine.open[(source, type_, None)] = alert
        await self._publish(self._client, alert)
