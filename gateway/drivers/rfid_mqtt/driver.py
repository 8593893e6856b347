"""Location readers (UHF RFID reader or BLE gateway) that publish tag reads to an edge MQTT broker.

One driver instance is one reader: it subscribes the reader's topic, decodes each payload with
:mod:`gateway.drivers.rfid_mqtt.parser` and hands the tag reads to the sink in batches, since tag reads
are the gateway's lowest-priority data and arrive in bursts. De-duplication is ingest's job; this
driver only bounds, checks and converts. Transport, link state and rejected-payload accounting are
the shared :class:`~gateway.drivers.mqtt_feed.MqttFeed`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

from devices.contract import DeviceHealth, Item
from devices.site import DeviceSpec
from gateway.driver import Sink
from gateway.drivers.mqtt_feed import MqttFeed, Rejection, endpoint
from gateway.drivers.rfid_mqtt import parser
from gateway.drivers.rfid_mqtt.parser import ConfigError, PayloadError

log = logging.getLogger(__name__)


class RfidMqttDriver:
    """Reads one RFID reader or BLE gateway through the edge broker and turns its reports into ``TagRead`` items."""

    kind: ClassVar[str] = "rfid_mqtt"
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
        self.feed = MqttFeed(spec, sink, self._handle, broker=broker, topic=topic, qos=self.settings.qos,
                             clean_session=True,  # a tag read missed while away is stale anyway
                             batch_max=self.settings.batch_max, linger_s=self.settings.linger_s,
                             silence_s=self.settings.silence_s, reconnect_max_s=self.settings.reconnect_max_s)
        self.link = self.feed.link

    def health(self) -> DeviceHealth:
        """Link state with payload counters."""
        return self.link.health()

    async def run(self) -> None:
        """Read the reader's topic until cancelled, reconnecting to the broker with backoff."""
        log.info("device %s: %s reader %s on %s", self.spec.id, self.settings.format,
                 self.settings.reader_id or self.spec.id, self.settings.topic)
        await self.feed.run()

    def _handle(self, payload: bytes, received: int) -> Sequence[Item] | Rejection:
        try:
            return parser.parse(payload, self.spec, self.settings, received)
        except PayloadError as exc:
            return Rejection(exc.reason, str(exc))
