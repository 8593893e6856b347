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
from alerts.ruleset import RuleBook
from devices import bus, gcwatch, topics
from devices.clock import now_ms
from devices.contract import (
    UNDECODABLE,
    Alert,
    ContractError,
    GatewayStatus,
    Priority,
    ServiceStatus,
    decode_batch,
    encode,
)
from devices.site import Site
from devices.topics import GatewayChannel
from state.db import State

log = logging.getLogger(__name__)

DATA_SLICE = 100  # readings of a telemetry batch evaluated between two looks at the alarm lane



class AlertSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The rules: a clinical default set per unit (``ruleset`` unless the unit chose), site rules on top."""

    ruleset: str = "adult"  # alerts/rulesets/<name>.toml for units that chose none
    rules: list[LimitRule] = []  # site-wide rules applied over every set (same name replaces)
    heartbeat_s: float = 5.0
    silent_after_s: float = 30.0  # no reading from a device this long: "device.silent"
    gateway_stale_s: float = 30.0  # no status from a gateway this long: "gateway.offline"
    tick_s: float = 1.0  # timers (silences, liveness) and staff actions are looked at this often
    settings_poll_s: float = 5.0  # unit rule sets and limit overrides are reloaded this often
    delivery: DeliverySettings = DeliverySettings()  # routing, escalation and channels (docs/alerting-delivery.md)
    units: list[str] = []  # the care units this instance serves (their gateways' topics only); empty: every unit


class Partition:
    """The share of a site one alert service instance serves: some care units, their gateways and devices."""

    def __init__(self, site: Site, units: list[str]) -> None:
        """Every unit when ``units`` is empty; raise ``ValueError`` for a unit the site does not have."""
        known = {unit.id for unit in site.units}
        unknown = sorted(set(units) - known)
        if unknown:
            raise ValueError(f"alerts.units: no unit {', '.join(unknown)} in site {site.id}")
        self.units = frozenset(units or known)
        self.everything = not units or self.units == known
        self.gateways = sorted(g.id for g in site.gateways if g.unit in self.units)
        ours = set(self.gateways)
        self.sources = self.units | ours | {d.id for d in site.devices if d.gateway in ours} | \
            {bed for unit in site.units if unit.id in self.units for bed in unit.beds}

    def filters(self, site: str, channel: GatewayChannel) -> list[str]:
        """Subscription filters of a gateway channel: the wildcard, or one topic per gateway of the units."""
        if self.everything:
            return [topics.gateway_filter(site, channel)]
        return [topics.gateway_topic(site, gateway, channel) for gateway in self.gateways]

    def owns(self, alert: Alert) -> bool:
        """True for an alert of one of the units (by unit, or by its bed, device or gateway)."""
        return self.everything or alert.unit in self.units or alert.source in self.sources


class AlertService:
    """Bus adapter around :class:`AlertEngine` with durable state."""

    def __init__(self, site: Site, state: State, address: bus.BrokerAddress,
                 settings: AlertSettings | None = None, instance: str = "alerts-1") -> None:
        """Load persisted alerts (the relational state: SQLite or PostgreSQL) into a fresh engine."""
        self.site = site
        self.address = address
        self.settings = settings or AlertSettings()
        self.partition = Partition(site, self.settings.units)
        if instance == "alerts-1" and not self.partition.everything:  # partitions need distinct client ids
            instance = "alerts-" + "-".join(sorted(self.partition.units))
        self.instance = instance
        self.alerts = state.alerts
        self.alarm_settings = state.alarm_settings
        self.engine = AlertEngine(site, self._book(), silent_after_s=self.settings.silent_after_s,
                                  gateway_stale_s=self.settings.gateway_stale_s)
        # open, latched and silenced alerts of our units, with their deadlines
        self.engine.restore(a for a in self.alerts.open() if self.partition.owns(a))
        # Every bed's rule index now, not under the first minute of load (see devices/gcwatch.py).
        self.engine.prepare(bed for unit in site.units if unit.id in self.partition.units for bed in unit.beds)
        self._log_mark = self.alerts.last_log_n()
        self.counters: dict[str, int] = defaultdict(int)
        self._status_topic = topics.service_topic(site.id, "alerts", instance)
        self._client: aiomqtt.Client | None = None
        self._alarm_lane_idle = asyncio.Event()  # cleared while the alarm lane handles a batch: telemetry waits
        self._alarm_lane_idle.set()
        self.dispatch = Dispatcher(site.id, state, self.settings.delivery, self._raise_technical,
                                   self._clear_technical)

    async def run(self) -> None:
        """Run until cancelled."""
        await bus.supervise(f"alerts {self.instance}", self._session, max_backoff=bus.RECONNECT_MAX_S)

    def _status(self, state: str) -> bytes:
        return encode(ServiceStatus(service="alerts", instance=self.instance,
                                    state="online" if state == "online" else "offline", ts=now_ms(),
                                    counters=dict(self.counters) | gcwatch.WATCH.counters()))

    async def _session(self) -> None:
        will = aiomqtt.Will(self._status_topic, self._status("offline"), qos=1, retain=True)
        # Alarms have their own lane: a connection (and so a broker queue and a client queue) of their own, so a
        # device alarm never waits behind queued telemetry; the data lane yields between slices of a batch.
        async with bus.client(self.address, f"wardlink-{self.instance}", will=will, clean_session=False) as client, \
                bus.client(self.address, f"wardlink-{self.instance}-alarm", clean_session=False) as alarm_client:
            self._client = client
            for connection in (client, alarm_client):
                bus.no_delay(connection)
            for channel in ("data", "status"):  # the units' gateways only, when the site is partitioned
                for topic in self.partition.filters(self.site.id, channel):
                    await client.subscribe(topic, qos=1)
            for topic in self.partition.filters(self.site.id, "alarm"):
                await alarm_client.subscribe(topic, qos=1)
            await alarm_client.subscribe(topics.presence_filter(self.site.id), qos=1)  # who has a live stream
            for alert in self.engine.open.values():  # make sure the retained set matches our state
                await client.publish(topics.alert_topic(self.site.id, alert.id), encode(alert), qos=1, retain=True)
            log.info("alerts %s: rule set %s, units %s, %d open alerts", self.instance, self.settings.ruleset,
                     "all" if self.partition.everything else ", ".join(sorted(self.partition.units)),
                     len(self.engine.open))
            await self.dispatch.resume(client, list(self.engine.open.values()))  # saved, never routed (a crash)
            async with asyncio.TaskGroup() as group:
                group.create_task(bus.heartbeat(client, self._status_topic, lambda: self._status("online"),
                                                self.settings.heartbeat_s))
                group.create_task(self._receive(client))
                group.create_task(self._receive_alarms(alarm_client, client))
                group.create_task(self._clock(client))
                group.create_task(self.dispatch.run(client))

    async def _receive(self, client: aiomqtt.Client) -> None:
        for_us = (topics.gateway_filter(self.site.id, "data"),)
        status = topics.gateway_filter(self.site.id, "status")
        status_decoder = msgspec.json.Decoder(GatewayStatus)
        async for message in bus.messages(client):
            payload = message.payload
            if isinstance(payload, bytes) and payload and message.topic.matches(status):
                try:
                    gateway = status_decoder.decode(payload)
                except UNDECODABLE:
                    self.counters["undecodable"] += 1
                    continue
                for alert in self.engine.gateway_status(gateway, now_ms()):
                    await self._publish(client, alert)
                continue
            if not isinstance(payload, bytes) or not any(message.topic.matches(f) for f in for_us):
                continue
            try:
                batch = decode_batch(payload)
            except ContractError:
                self.counters["undecodable"] += 1  # ingest quarantines it; nothing to alarm on
                continue
            for start in range(0, len(batch.items), DATA_SLICE):
                await self._alarm_lane_idle.wait()  # an alarm being handled has the CPU (and the GIL) to itself
                for alert in self.engine.process(batch.items[start:start + DATA_SLICE], now_ms()):
                    await self._publish(client, alert)
                await asyncio.sleep(0)  # let the alarm lane in between slices of a large telemetry batch

    async def _receive_alarms(self, alarm_client: aiomqtt.Client, client: aiomqtt.Client) -> None:
        """The alarm lane: device alarms, processed as they arrive (published on the main connection)."""
        for_us = topics.gateway_filter(self.site.id, "alarm")
        presence = topics.presence_filter(self.site.id)
        async for message in bus.messages(alarm_client):
            if isinstance(message.payload, bytes) and message.topic.matches(presence):
                self.dispatch.presence(str(message.topic), message.payload)
                continue
            if not isinstance(message.payload, bytes) or not message.topic.matches(for_us):
                continue
            try:
                batch = decode_batch(message.payload)
            except ContractError:
                self.counters["undecodable"] += 1
                continue
            self._alarm_lane_idle.clear()
            try:
                for alert in self.engine.process(batch.items, now_ms()):
                    await self._publish(client, alert)
            finally:
                self._alarm_lane_idle.set()

    async def _clock(self, client: aiomqtt.Client) -> None:
        """Timers (silences running out, silent devices and gateways), staff actions, and changed limits."""
        last_reload = now_ms()
        while True:
            await asyncio.sleep(self.settings.tick_s)
            now = now_ms()
            for alert in self.engine.tick(now):
                await self._publish(client, alert)
            await self._adopt_staff_actions(client)
            if now - last_reload >= self.settings.settings_poll_s * 1000:
                last_reload = now
                self.engine.reload(await asyncio.to_thread(self._book))

    def _book(self) -> RuleBook:
        """The rule book of the site's beds with each unit's chosen set and the stored overrides."""
        beds = {bed: unit.id for unit in self.site.units for bed in unit.beds}
        return RuleBook(beds, default=self.settings.ruleset, site_rules=self.settings.rules,
                        rulesets=self.alarm_settings.rulesets(), overrides=self.alarm_settings.overrides())

    async def _adopt_staff_actions(self, client: aiomqtt.Client) -> None:
        """Acknowledgements and silences committed by staff (through the API) since last looked: adopt, publish."""
        lines = await asyncio.to_thread(self.alerts.staff_actions, self._log_mark)
        for line in lines:
            self._log_mark = max(self._log_mark, line.n)
            current = await asyncio.to_thread(self.alerts.get, line.alert_id)
            if current is not None and self.partition.owns(current) and line.event in ("acknowledged", "silenced"):
                self.engine.adopt(current)
                await self._announce(client, current)

    async def _publish(self, client: aiomqtt.Client, alert: Alert) -> None:
        alert = await asyncio.to_thread(self.alerts.save, alert)
        self.engine.adopt(alert)  # what was stored: committed staff actions win over our copy
        await self._announce(client, alert)

    async def _announce(self, client: aiomqtt.Client, alert: Alert) -> None:
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
        alert = self.engine.raise_technical(source, type_, priority, message, now_ms(), bed=bed, unit=unit)
        await self._publish(self._client, alert)

    async def _clear_technical(self, source: str, type_: str) -> None:
        """End a technical alarm of the alarm system itself (the alert it was about was taken care of)."""
        if self._client is None:
            return
        for alert in self.engine.clear_technical(source, type_, now_ms()):
            await self._publish(self._client, alert)
