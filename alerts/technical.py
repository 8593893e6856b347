"""Technical alarms: the catalogue of technical conditions and the liveness watch of devices and gateways.

Technical alarms are about a device, a link or the alarm system itself, never the patient; they belong
to the device (``source`` = device or gateway) and never latch. Most arrive as device events from the
gateway (with the device's own priority); the engine raises the liveness ones itself (device silent,
gateway offline) and other services raise theirs through :meth:`alerts.engine.AlertEngine.raise_technical`
(delivery failure).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from devices.contract import Priority

DEVICE_SILENT: Final = "device.silent"
GATEWAY_OFFLINE: Final = "gateway.offline"
DATA_GAP: Final = "ingest.data_gap"
DELIVERY_FAILED: Final = "delivery.failed"


@dataclass(frozen=True, slots=True)
class TechnicalType:
    """A known technical condition: its default priority and whether it is a one-off report."""

    priority: Priority
    text: str
    one_shot: bool = False  # a past fact with no "end" (a data gap): it waits for acknowledgement


CATALOGUE: Final[dict[str, TechnicalType]] = {
    DEVICE_SILENT: TechnicalType("medium", "no data from the device (silent)"),
    "device.disconnected": TechnicalType("medium", "the gateway lost the device link"),
    "device.bad_payload": TechnicalType("low", "the device sends messages that do not decode"),
    "MDC_EVT_LEAD_OFF": TechnicalType("medium", "ECG lead off"),
    "MDC_EVT_SENSOR_DISCONN": TechnicalType("medium", "sensor disconnected / off the patient"),
    "sensor.error": TechnicalType("medium", "sensor error value"),
    "pump.occlusion": TechnicalType("high", "infusion pump occlusion"),
    "pump.air_in_line": TechnicalType("high", "air in line"),
    "pump.near_end": TechnicalType("low", "infusion near end"),
    "pump.kvo": TechnicalType("medium", "infusion complete, keep vein open"),
    "pump.door_open": TechnicalType("medium", "pump door open"),
    "pump.battery_low": TechnicalType("low", "pump battery low"),
    "battery.low": TechnicalType("low", "device battery low"),
    "fridge.out_of_range": TechnicalType("medium", "fridge temperature out of range"),
    "fridge.door_open": TechnicalType("low", "fridge door open"),
    "fridge.power_fail": TechnicalType("high", "fridge power failure"),
    GATEWAY_OFFLINE: TechnicalType("high", "gateway offline (last will or no heartbeat)"),
    "gateway.uplink_lost": TechnicalType("high", "gateway lost the broker"),
    "gateway.outbox_shed": TechnicalType("medium", "gateway outbox shedding data"),
    DATA_GAP: TechnicalType("medium", "readings missing from a stream", one_shot=True),
    DELIVERY_FAILED: TechnicalType("high", "an alarm could not be delivered to anyone"),
}


def default_priority(type_: str) -> Priority:
    """The catalogue's priority of a technical condition (medium when unknown)."""
    known = CATALOGUE.get(type_)
    return known.priority if known else "medium"


def one_shot(type_: str) -> bool:
    """True for a condition reported once, with no end (it resolves on acknowledgement)."""
    known = CATALOGUE.get(type_)
    return known is not None and known.one_shot


class Liveness:
    """When each device and gateway was last heard; who has gone quiet for too long."""

    def __init__(self, silent_after_ms: int, gateway_stale_ms: int) -> None:
        """Nothing heard yet: a device is watched from its first reading, a gateway from its first status."""
        self.silent_after_ms = silent_after_ms
        self.gateway_stale_ms = gateway_stale_ms
        self.devices: dict[str, tuple[int, str | None]] = {}  # device -> (last heard, bed)
        self.gateways: dict[str, tuple[int, bool]] = {}  # gateway -> (last heard, online)

    def device_heard(self, device: str, bed: str | None, now: int) -> None:
        """A reading of ``device`` arrived."""
        heard = self.devices.get(device)
        if heard is None or heard[0] != now or heard[1] != bed:  # a device's readings come in runs: no new tuple
            self.devices[device] = (now, bed)

    def gateway_heard(self, gateway: str, online: bool, now: int) -> None:
        """A status of ``gateway`` arrived (``online`` False for its last will)."""
        self.gateways[gateway] = (now, online)

    def silent_devices(self, now: int) -> list[tuple[str, str | None, int]]:
        """``(device, bed, last heard)`` of devices quiet for longer than the bound."""
        return [(d, bed, at) for d, (at, bed) in self.devices.items() if now - at > self.silent_after_ms]

    def offline_gateways(self, now: int) -> list[tuple[str, int]]:
        """``(gateway, last heard)`` of gateways that said goodbye or whose heartbeat is stale."""
        return [(g, at) for g, (at, online) in self.gateways.items()
                if not online or now - at > self.gateway_stale_ms]
