"""Medical-waste scan points (ward, collector, storage, disposer) that publish bag scans to an edge MQTT broker.

One driver instance is one scan point. Each scan becomes one ``WasteEvent`` handed to the sink at once:
scans are rare and each is a handover record that must not wait in a batch. The subscription is
persistent with QoS 1 by default, so scans published while the gateway was away are delivered when it
comes back (as long as the broker kept them). A scan that fails validation is refused with an error
naming the device and field, counted, and never raised. Transport, link state and rejected-payload
accounting are the shared :class:`~gateway.drivers.mqtt_feed.MqttFeed`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

from devices.contract import DeviceHealth, Item
from devices.site import DeviceSpec
from gateway.driver import Sink
from gateway.drivers.mqtt_feed import MqttFeed, Rejection, endpoint
from gateway.drivers.waste_mqtt import parser
from gateway.drivers.waste_mqtt.parser import ConfigError, ScanError

log = logging.getLogger(__name__)


class WasteMqttDriver:
    """Reads one waste scan point through the edge broker and turns its scans into ``WasteEvent`` items."""

    kind: ClassVar[str] = "waste_mqtt"
    simulator: ClassVar[str] = "simulators.mqtt_devices"

    def __init__(self, spec: DeviceSpec, sink: Sink) -> None:
        """Validate the ``connection`` table now, so a bad site file fails at start-up naming the field."""
        self.spec = spec
        self.sink = sink
        self.settings = parser.load_settings(spec)
        try:
            broker, topic = endpoint(self.settings.broker, self.settings.topic)
        except ValueError as exc:
            raise ConfigError(f"device {spec.id}: connection: {exc}") from exc
        # A persistent session (clean_session=False) keeps QoS 1 scans queued on the broker while we are away.
        self.feed = MqttFeed(spec, sink, self._handle, broker=broker, topic=topic, qos=self.settings.qos,
                             clean_session=self.settings.qos == 0, batch_max=1,
                             silence_s=self.settings.silence_s, reconnect_max_s=self.settings.reconnect_max_s)
        self.link = self.feed.link

    def health(self) -> DeviceHealth:
        """Link state with payload counters."""
        return self.link.health()

    async def run(self) -> None:
        """Read the scan point's topic until cancelled, reconnecting to the broker with backoff."""
        log.info("device %s: waste scan point (%s) %s on %s", self.spec.id, self.settings.point,
                 self.settings.scanner_id or self.spec.id, self.settings.topic)
        await self.feed.run()

    def _handle(self, payload: bytes, received: int) -> Sequence[Item] | Rejection:
        try:
            return [parser.parse(payload, self.spec, self.settings, received)]
        except ScanError as exc:
            return Rejection(exc.reason, str(exc))
