"""One device's subscription on an edge MQTT broker; shared by the MQTT device drivers (rfid_mqtt, waste_mqtt).

The feed owns the transport and the bookkeeping every MQTT device driver needs, so a driver is only
its parser and a handler:

- it connects with :func:`devices.bus.client`, subscribes the device's topic and reconnects with
  jittered, capped backoff when the broker goes away; library errors become :class:`BusError` here;
- link state: connected once subscribed, lost when the connection drops (or, with ``silence_s``, when
  the device stops publishing), through :class:`gateway.driver.Link` and its technical events;
- low-priority items are gathered into fewer ``sink.accept`` calls (``batch_max``, ``linger_s``);
- a rejected payload is counted (``link.frames_bad`` and by reason), logged once per burst with the
  device named, and raises the technical event ``device.bad_payload`` at most once a minute.

Memory stays bounded: aiomqtt's incoming queue is capped by the bus client, and a payload is handed to
the parser, which refuses anything above the device's ``max_payload`` before decoding it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from devices import bus
from devices.bus import BrokerAddress, BusError
from devices.contract import DeviceEvent, Item, Phase
from devices.site import DeviceSpec
from gateway.driver import Link, Sink, now_ms

log = logging.getLogger(__name__)

INITIAL_BACKOFF_S: Final = 0.5
STABLE_SESSION_S: Final = 10.0  # a session that stayed up this long starts the backoff over
LOG_EVERY_S: Final = 10.0  # rejected payloads: one warning per burst, at most this often
EVENT_EVERY_S: Final = 60.0  # device.bad_payload: at most once a minute; ends after a clean minute
TICK_S: Final = 0.1
BAD_PAYLOAD: Final = "device.bad_payload"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a handler refused a payload: a short reason to count by and a message naming device and field."""

    reason: str
    message: str


Handler = Callable[[bytes, int], Sequence[Item] | Rejection]


def check_topic_filter(topic: str) -> str:
    """Return ``topic`` if it is a valid MQTT subscription filter; raise ValueError saying why not."""
    if not topic or len(topic.encode()) > 65_535 or "\x00" in topic:
        raise ValueError(f"topic {topic!r}: empty, too long or containing NUL")
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"topic {topic!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"topic {topic!r}: '+' must be a whole level")
    return topic


def endpoint(broker: str, topic: str) -> tuple[BrokerAddress, str]:
    """A device's edge broker and topic filter from its ``connection`` table; ValueError naming the field."""
    if not broker:
        raise ValueError("field broker is missing (mqtt://HOST:PORT)")
    return BrokerAddress.parse(broker), check_topic_filter(topic)


def _refused(code: int | ReasonCode) -> bool:
    """A SUBACK code of 0x80 or above means the broker refused the subscription."""
    return (code.value if isinstance(code, ReasonCode) else code) >= 0x80


class MqttFeed:
    """Subscribes one device's topic and feeds its payloads to the driver's handler, until cancelled."""

    def __init__(
        self,
        spec: DeviceSpec,
        sink: Sink,
        handler: Handler,
        *,
        broker: BrokerAddress,
        topic: str,
        qos: int,
        clean_session: bool,
        batch_max: int = 1,
        linger_s: float = 0.0,
        silence_s: float = 0.0,
        reconnect_max_s: float = 15.0,
    ) -> None:
        """Bind the feed to a device; nothing connects before :meth:`run`."""
        self.spec = spec
        self.sink = sink
        self.handler = handler
        self.broker = broker
        self.topic = check_topic_filter(topic)
        self.qos = qos
        self.clean_session = clean_session
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.silence_s = silence_s
        self.reconnect_max_s = reconnect_max_s
        # Stable per device, so a persistent session (clean_session=False) finds its queued messages again.
        self.client_id = f"wardlink-dev-{spec.gateway}-{spec.id}"  # "wardlink-gw-..." is the uplink's
        self.link = Link(spec, sink, stream="link")
        self.rejected: collections.Counter[str] = collections.Counter()
        self.retained_ignored = 0
        self._buffer: list[Item] = []
        self._buffered_at = 0.0
        self._last_message = time.monotonic()
        self._log_at = -LOG_EVERY_S
        self._unlogged = 0
        self._bad_raised = False
        self._bad_event_at = 0.0
        self._last_bad = 0.0
        self._bad_in_episode = 0
        self._failures = 0

    # -- I/O-free part: one payload in --------------------------------------------------------------
    def offer(self, payload: bytes, received: int) -> None:
        """Hand one payload to the handler and account for the outcome (never raises for bad input)."""
        result = self.handler(payload, received)
        if isinstance(result, Rejection):
            self._reject(result)
            return
        self._last_message = time.monotonic()  # only a valid payload shows the device is alive
        self.link.seen()
        self._clean_payload()
        if not result:
            return
        if not self._buffer:
            self._buffered_at = time.monotonic()
        self._buffer.extend(result)
        if len(self._buffer) >= self.batch_max:
            self.flush()

    def flush(self) -> None:
        """Hand buffered items to the sink (one ``accept`` call)."""
        if self._buffer:
            items, self._buffer = self._buffer, []
            self.sink.accept(items)

    def _reject(self, rejection: Rejection) -> None:
        self.link.frames_bad += 1
        self.rejected[rejection.reason] += 1
        now = time.monotonic()
        self._last_bad = now
        self._bad_in_episode += 1
        if now - self._log_at >= LOG_EVERY_S:
            log.warning("device %s: payload rejected (%s): %s [%d rejected since start, %d not logged]",
                        self.spec.id, rejection.reason, rejection.message, self.link.frames_bad, self._unlogged)
            self._log_at = now
            self._unlogged = 0
        else:
            self._unlogged += 1
            log.debug("device %s: payload rejected (%s): %s", self.spec.id, rejection.reason, rejection.message)
        if not self._bad_raised:
            self._bad_raised = True
            self._bad_event(now, "start", rejection)
        elif now - self._bad_event_at >= EVENT_EVERY_S:
            self._bad_event(now, "update", rejection)

    def _clean_payload(self) -> None:
        """A good payload ends a bad-payload episode once a whole minute passed without a rejection."""
        if self._bad_raised and time.monotonic() - self._last_bad >= EVENT_EVERY_S:
            self._bad_raised = False
            self._bad_event(time.monotonic(), "end", None)
            self._bad_in_episode = 0

    def _bad_event(self, now: float, phase: Phase, rejection: Rejection | None) -> None:
        self._bad_event_at = now
        if rejection is None:
            text = f"{self.spec.id}: payloads accepted again"
        else:
            text = (f"{self.spec.id}: {self._bad_in_episode} payloads rejected "
                    f"({', '.join(f'{r} {n}' for r, n in sorted(self.rejected.items()))} since start); "
                    f"last: {rejection.message}")[:300]
        self.sink.accept([DeviceEvent(device=self.spec.id, stream="link", seq=0, ts=now_ms(), event=BAD_PAYLOAD,
                                      alarm_kind="technical", priority="low", phase=phase, text=text,
                                      bed=self.spec.bed)])

    # -- transport --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Subscribe and feed until cancelled; after a failure mark the link lost and retry with backoff."""
        backoff = INITIAL_BACKOFF_S
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._session()
                    reason = "broker ended the session"
                except BusError as exc:
                    reason = str(exc)
                self.flush()
                self.link.lost(reason)
                if time.monotonic() - started >= STABLE_SESSION_S:
                    backoff = INITIAL_BACKOFF_S
                delay = backoff * random.uniform(0.8, 1.2)
                self._failures += 1
                # One warning per outage; the retries of a long outage would otherwise flood the log.
                log.log(logging.WARNING if self._failures == 1 else logging.DEBUG,
                        "device %s: %s; reconnecting in %.1f s (attempt %d)", self.spec.id, reason, delay,
                        self._failures)
                await asyncio.sleep(delay)
                backoff = min(self.reconnect_max_s, backoff * 2)
        finally:
            self.flush()  # cancelled (gateway stopping): what was read is not lost

    async def _session(self) -> None:
        client = bus.client(self.broker, self.client_id, clean_session=self.clean_session)
        try:
            async with client:
                granted = await client.subscribe(self.topic, qos=self.qos)
                if any(_refused(code) for code in granted):
                    # The broker's ACL refused the filter: retrying with backoff surfaces it as a lost link.
                    raise BusError(f"broker {self.broker.url} refused the subscription to {self.topic}")
                self._subscribed()
                ticker = asyncio.create_task(self._tick(), name=f"feed {self.spec.id} tick")
                try:
                    async for message in bus.messages(client):
                        self._message(message)
                finally:
                    ticker.cancel()
                    await asyncio.gather(ticker, return_exceptions=True)
        except aiomqtt.MqttError as exc:
            raise BusError(f"broker {self.broker.url}: {exc}") from exc

    def _subscribed(self) -> None:
        log.info("device %s: subscribed to %s on %s", self.spec.id, self.topic, self.broker.url)
        self._failures = 0
        self._last_message = time.monotonic()
        last_seen = self.link.last_seen
        self.link.seen(0)  # connected: ends a disconnect episode, counts no frame
        self.link.last_seen = last_seen  # subscribing is not hearing from the device

    def _message(self, message: aiomqtt.Message) -> None:
        if message.retain:
            # A retained message is an old report replayed by the broker on subscribe, not a new read.
            self.retained_ignored += 1
            log.debug("device %s: ignoring a retained message on %s", self.spec.id, message.topic)
            return
        payload = message.payload if isinstance(message.payload, bytes) else b""
        self.offer(payload, now_ms())

    async def _tick(self) -> None:
        """Flush a lingering batch; mark the link lost when the device has been silent too long."""
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            if self._buffer and now - self._buffered_at >= self.linger_s:
                self.flush()
            if self.silence_s and self.link.state == "connected" and now - self._last_message > self.silence_s:
                self.link.lost(f"no valid message for {self.silence_s:g} s")
