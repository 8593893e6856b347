"""The API's live view of the system, kept from the bus: alerts, gateway and service status.

Services meet only through the bus, so the API learns alerts and health by subscribing, like any
other consumer. WebSocket clients each get a bounded queue; one that cannot keep up is cut off
rather than allowed to grow memory or delay the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt
import msgspec

from devices import bus, topics
from devices.clock import now_ms
from devices.contract import Alert, GatewayStatus, Notification, Presence, ServiceStatus, encode

log = logging.getLogger(__name__)

GaugeSample = tuple[str, str, dict[str, str], float]
"""One gauge sample another part of the API exposes on /metrics: family, help text, labels, value."""

RECENT_RESOLVED = 500
CLIENT_QUEUE = 256


@dataclass(slots=True, eq=False)
class Subscriber:
    """One live WebSocket client: alert transitions, and notifications (an escalation step fired)."""

    queue: asyncio.Queue[Alert | Notification] = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))
    overflowed: bool = False


@dataclass(slots=True, eq=False)
class StaffSubscriber:
    """One member of staff's live stream: the notifications sent to them and the later states of those alerts."""

    staff: str
    queue: asyncio.Queue[Alert | Notification] = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))
    alerts: set[str] = field(default_factory=set)  # alerts notified to this stream: their transitions follow
    overflowed: bool = False


class LiveView:
    """Alerts and health as last heard on the bus."""

    def __init__(self, site_id: str, address: bus.BrokerAddress, *, embedded_broker: bool = False) -> None:
        """Empty view; :meth:`run` fills it."""
        self.site_id = site_id
        self.address = address
        self.embedded_broker = embedded_broker
        self.connected = False
        self.alerts: dict[str, Alert] = {}  # open alerts by id
        self.resolved: OrderedDict[str, Alert] = OrderedDict()  # bounded recent history
        self.gateways: dict[str, GatewayStatus] = {}
        # When each gateway was last heard: its newest status time. A last will carries the time its session
        # began (fixed at connect), so it must not move this back.
        self.gateway_heard: dict[str, int] = {}
        self.services: dict[str, ServiceStatus] = {}
        # Called with every gateway status heard (the fleet recorder keeps connection changes from them).
        self.gateway_listeners: list[Callable[[GatewayStatus], None]] = []
        # Extra gauges for /metrics (the fleet's figures), called with the time; they must not block.
        self.gauge_sources: list[Callable[[int], list[GaugeSample]]] = []
        self.subscribers: set[Subscriber] = set()
        self.staff_streams: dict[str, set[StaffSubscriber]] = {}
        self.dropped_clients = 0
        self._alert = msgspec.json.Decoder(Alert)
        self._gateway = msgspec.json.Decoder(GatewayStatus)
        self._service = msgspec.json.Decoder(ServiceStatus)
        self._notification = msgspec.json.Decoder(Notification)
        self.instance = f"api-{uuid.uuid4().hex[:12]}"
        self._presence_topic = topics.presence_topic(site_id, self.instance)
        self._client: aiomqtt.Client | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Follow the bus until cancelled."""
        await bus.supervise("api view", self._session)

    async def _session(self) -> None:
        try:
            will = aiomqtt.Will(self._presence_topic, encode(Presence(self.instance, [], now_ms())), qos=1,
                                retain=True)
            async with bus.client(self.address, f"wardlink-{self.instance}", will=will) as client:
                self._client = client
                await self._publish_presence()
                await client.subscribe(topics.alert_filter(self.site_id), qos=1)
                await client.subscribe(topics.gateway_filter(self.site_id, "status"), qos=1)
                await client.subscribe(topics.service_filter(self.site_id), qos=1)
                await client.subscribe(topics.notify_filter(self.site_id), qos=1)
                self.connected = True
                async for message in bus.messages(client):
                    if isinstance(message.payload, bytes):
                        self.apply(str(message.topic), message.payload)
        finally:
            self.connected = False
            self._client = None

    def apply(self, topic: str, payload: bytes) -> None:
        """Update the view from one bus message (bad messages are logged and ignored)."""
        if not payload:
            return  # a cleared retained message
        try:
            parsed = topics.parse(topic)
            if parsed.area == "alert":
                self._apply_alert(self._alert.decode(payload))
            elif parsed.area == "gw" and parsed.channel == "status":
                status = self._gateway.decode(payload)
                self.gateways[status.gateway] = status
                self.gateway_heard[status.gateway] = max(status.ts, self.gateway_heard.get(status.gateway, 0))
                for listener in self.gateway_listeners:
                    listener(status)
            elif parsed.area == "notify":
                self._apply_notification(self._notification.decode(payload))
            elif parsed.area == "svc":
                service = self._service.decode(payload)
                self.services[f"{service.service}/{service.instance}"] = service
        except (topics.TopicError, msgspec.DecodeError) as exc:
            log.warning("api view: ignoring message on %s: %s", topic, exc)

    def _apply_alert(self, alert: Alert) -> None:
        known = self.alerts.get(alert.id) or self.resolved.get(alert.id)
        if known is not None and known.updated > alert.updated:
            return  # an older state arriving late (retained copy after a live update)
        if alert.state == "resolved":
            self.alerts.pop(alert.id, None)
            self.resolved[alert.id] = alert
            while len(self.resolved) > RECENT_RESOLVED:
                self.resolved.popitem(last=False)
        else:
            self.alerts[alert.id] = alert
        for streams in list(self.staff_streams.values()):
            for stream in list(streams):
                if alert.id in stream.alerts:
                    self._offer(stream, alert)
        self._broadcast(alert)

    def _broadcast(self, item: Alert | Notification) -> None:
        for subscriber in list(self.subscribers):
            try:
                subscriber.queue.put_nowait(item)
            except asyncio.QueueFull:
                subscriber.overflowed = True  # the handler closes this client
                self.subscribers.discard(subscriber)
                self.dropped_clients += 1

    def _apply_notification(self, notification: Notification) -> None:
        for stream in list(self.staff_streams.get(notification.staff, ())):
            stream.alerts.add(notification.alert.id)
            self._offer(stream, notification)
        self._broadcast(notification)  # the alert streams show each alert's escalation as it moves

    def _offer(self, stream: StaffSubscriber, item: Alert | Notification) -> None:
        try:
            stream.queue.put_nowait(item)
        except asyncio.QueueFull:
            stream.overflowed = True  # the handler closes this client; its deliveries stay unconfirmed
            self.unsubscribe_staff(stream)
            self.dropped_clients += 1

    def subscribe_staff(self, staff: str) -> StaffSubscriber:
        """Register a member of staff's live stream."""
        stream = StaffSubscriber(staff)
        first = staff not in self.staff_streams
        self.staff_streams.setdefault(staff, set()).add(stream)
        if first:
            self._presence_changed()
        return stream

    def unsubscribe_staff(self, stream: StaffSubscriber) -> None:
        """Forget a member of staff's stream."""
        streams = self.staff_streams.get(stream.staff)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self.staff_streams[stream.staff]
                self._presence_changed()

    def _presence_changed(self) -> None:
        """Tell the alert service who can be reached here now (it fails deliveries to nobody at once)."""
        task = asyncio.get_running_loop().create_task(self._publish_presence())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_presence(self) -> None:
        client = self._client
        if client is None:
            return  # published on (re)connect
        payload = encode(Presence(self.instance, sorted(self.staff_streams), now_ms()))
        with contextlib.suppress(aiomqtt.MqttError):  # the connection broke: the session restarts and republishes
            await client.publish(self._presence_topic, payload, qos=1, retain=True)

    def subscribe(self) -> Subscriber:
        """Register a live client."""
        subscriber = Subscriber()
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a client."""
        self.subscribers.discard(subscriber)
