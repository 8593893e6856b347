"""Delivery: new alerts go to their first recipients, deadlines escalate them, unconfirmed deliveries raise alarms.

The dispatcher runs inside the alert service. It starts an escalation for every new active alert,
checks the persisted deadlines every ``poll_s`` (so a restart keeps them), and sends each step on the
configured channels. A delivery its receiver does not confirm within ``confirm_s`` is itself a
technical alarm ("delivery.unconfirmed"), routed to the next step of the chain, and the escalation
moves on at once; an alert nobody is assigned to raises "delivery.no_receiver".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Protocol

import aiomqtt
import msgspec

from alerts.channels.pcd04_out import Pcd04Out, Pcd04Settings
from alerts.channels.webhook import WebhookChannel, WebhookSettings
from alerts.channels.websocket import WebSocketChannel
from alerts.escalation import NO_RECEIVER, Escalator
from alerts.routing import Router, RoutingSettings
from devices.clock import now_ms
from devices.contract import UNDECODABLE, Alert, Presence, Priority
from state.db import State
from state.escalations import Delivery, Escalations, Fired

log = logging.getLogger(__name__)

UNCONFIRMED = "delivery.unconfirmed"
NO_RECEIVER_TYPE = "delivery.no_receiver"


class DeliverySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Routing and escalation, and the channels beyond the per-user WebSocket stream."""

    routing: RoutingSettings = RoutingSettings()
    webhooks: list[WebhookSettings] = msgspec.field(default_factory=list)
    pcd04: Pcd04Settings = Pcd04Settings()


class RaiseTechnical(Protocol):
    """How the dispatcher raises a technical alarm (the service runs it through the engine and publishes it)."""

    def __call__(self, source: str, type_: str, priority: Priority, message: str, *, bed: str | None,
                 unit: str | None) -> Awaitable[None]:
        """Raise (or repeat) the technical alarm ``type_`` of ``source``."""


class ClearTechnical(Protocol):
    """How the dispatcher ends a technical alarm it raised (the service resolves it through the engine)."""

    def __call__(self, source: str, type_: str) -> Awaitable[None]:
        """The condition ``type_`` of ``source`` is over."""


class Dispatcher:
    """Escalation and channels of the alert service."""

    def __init__(self, site_id: str, state: State, settings: DeliverySettings,
                 raise_technical: RaiseTechnical, clear_technical: ClearTechnical | None = None) -> None:
        """Wire the escalator to the state and the channels to their settings."""
        self.settings = settings
        self.escalations = Escalations(state.sessions)
        self.escalator = Escalator(self.escalations, Router(state.assignments), settings.routing)
        self.websocket = WebSocketChannel(site_id)
        self.webhooks = [WebhookChannel(w, self.escalations) for w in settings.webhooks]
        self.pcd04 = Pcd04Out(settings.pcd04, raise_technical) if settings.pcd04.host else None
        self._raise_technical = raise_technical
        self._clear_technical = clear_technical
        self._because: dict[tuple[str, str], set[str]] = {}  # a delivery alarm -> the alerts it is about
        self._started: set[str] = set()  # alerts whose escalation this process has started or seen
        self._first_step: dict[tuple[str, str], int] = {}  # a delivery alarm starts at the next step of its chain
        self._client: aiomqtt.Client | None = None
        self._wake = asyncio.Event()
        self._live: dict[str, set[str]] = {}  # API instance -> staff with a live stream there
        self._presence = msgspec.json.Decoder(Presence)

    async def run(self, client: aiomqtt.Client) -> None:
        """Check deadlines and confirmations until cancelled (one bus session)."""
        self._client = client
        poll = self.settings.routing.poll_s
        async with asyncio.TaskGroup() as group:
            if self.pcd04 is not None:
                group.create_task(self.pcd04.run())
            while True:
                await self.tick(now_ms())
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), poll)

    async def resume(self, client: aiomqtt.Client, alerts: list[Alert]) -> None:
        """After a (re)start: route the open alerts that never were (the start is idempotent per alert)."""
        self._client = client
        for alert in alerts:
            if alert.state == "active" and alert.id not in self._started:
                await self.on_alert(alert)

    async def on_alert(self, alert: Alert) -> None:
        """An alert transition published by the service: start, or stop, its escalation."""
        if self.pcd04 is not None:
            self.pcd04.report(alert)
        if alert.state == "active" and alert.id not in self._started:
            self._started.add(alert.id)
            first = self._first_step.pop((alert.source, alert.type), 0)
            started = await asyncio.to_thread(self.escalator.start, alert, now_ms(), first)
            if started == NO_RECEIVER:
                await self._no_receiver(alert)
            elif isinstance(started, Fired):
                await self._send(started)
        elif alert.state in ("acknowledged", "resolved"):
            await asyncio.to_thread(self.escalations.stop, alert.id, alert.state, now_ms())
            if alert.state == "resolved":
                self._started.discard(alert.id)
            await self._settled(alert.id)

    async def _settled(self, alert_id: str) -> None:
        """An alert was taken care of: end the delivery alarms raised only because of it."""
        for key, about in list(self._because.items()):
            about.discard(alert_id)
            if not about:
                del self._because[key]
                if self._clear_technical is not None:
                    await self._clear_technical(*key)

    def presence(self, topic: str, payload: bytes) -> None:
        """An API instance's live streams (an empty retained payload: the instance is gone)."""
        if not payload:
            self._live.pop(topic, None)
            return
        try:
            live = self._presence.decode(payload)
        except UNDECODABLE:
            log.warning("ignoring an unreadable presence message on %s", topic)
            return
        self._live[topic] = set(live.staff)

    def live(self, staff: str) -> bool | None:
        """Whether ``staff`` has a live stream on some API instance; None when no API has said (unknown)."""
        if not self._live:
            return None
        return any(staff in streams for streams in self._live.values())

    async def tick(self, now: int) -> None:
        """Fire due steps and give up on unconfirmed deliveries (each at most once, across instances too)."""
        for delivery in await asyncio.to_thread(self.escalations.unconfirmed, now):
            await self._failed(delivery, now, f"not confirmed within {self.settings.routing.confirm_s:g} s")
        for escalation in await asyncio.to_thread(self.escalations.due, now):
            fired = await asyncio.to_thread(self.escalator.advance, escalation, now)
            if isinstance(fired, Fired):
                await self._send(fired)

    async def _failed(self, delivery: Delivery, now: int, why: str) -> None:
        """A delivery nobody will confirm: the technical alarm to the next step, and the alert moves on now."""
        if not await asyncio.to_thread(self.escalations.give_up, delivery.id, now, why):
            return  # already given up (by another instance, or confirmed meanwhile)
        escalation = await asyncio.to_thread(self.escalations.get, delivery.alert_id)
        await asyncio.to_thread(self.escalations.hasten, delivery.alert_id, now)
        self._wake.set()
        if escalation is not None:
            self._first_step[(delivery.staff, UNCONFIRMED)] = delivery.step + 1
            self._because.setdefault((delivery.staff, UNCONFIRMED), set()).add(delivery.alert_id)
            await self._raise_technical(
                delivery.staff, UNCONFIRMED, "high",
                f"alert {delivery.alert_id} to {delivery.staff} ({delivery.channel}): {why}",
                bed=escalation.bed, unit=escalation.unit)

    async def _no_receiver(self, alert: Alert) -> None:
        if alert.type in (NO_RECEIVER_TYPE, UNCONFIRMED):
            return  # a delivery alarm nobody can take: published on the bus (and PCD-04), not raised again
        where = alert.unit or alert.bed or alert.source
        log.error("alert %s (%s %s): nobody is assigned to receive it", alert.id, where, alert.type)
        self._because.setdefault((where, NO_RECEIVER_TYPE), set()).add(alert.id)
        await self._raise_technical(where, NO_RECEIVER_TYPE, "high", f"no receiver for {alert.type} of {where}",
                                    bed=None, unit=alert.unit)

    async def _send(self, fired: Fired) -> None:
        """Send a fired step on every channel."""
        alert = msgspec.convert(fired.alert, Alert)
        if self._client is not None:
            await self.websocket.send(self._client, fired, alert)
        for delivery in fired.deliveries:  # nobody to show it to: no need to wait for the confirmation bound
            if delivery.channel == self.websocket.name and self.live(delivery.staff) is False:
                await self._failed(delivery, delivery.sent_at, "no live stream")
        for webhook in self.webhooks:
            webhook.send(fired, alert)
        if self.pcd04 is not None and fired.step.step > 0:
            self.pcd04.report(alert, escalated_to=fired.step.recipients)

    def wake(self) -> None:
        """Check deadlines now rather than at the next poll."""
        self._wake.set()

