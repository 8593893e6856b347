"""What every PCD message needs while it is mapped: routing of equipment to devices, bed, times, result.

Routing of an equipment id (OBX-18 of the row, else of the last device row, else MSH-3):

1. the ``devices`` table of the driver's connection settings (equipment id -> a device of the site);
2. the driver's own device, when the id equals its ``serial_number`` or its derived id equals its id;
3. with ``discover`` (the listener's default): a device of its own, ``hl7-<id>``, announced with a
   ``DeviceInfo`` before its readings; without it (a serial line carries one device): the driver's device.

A message without any equipment id on a discovering listener is rejected: its readings could not be
attributed without guessing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from devices.contract import FLAG_CLOCK_SKEW, DeviceInfo, Item
from gateway.drivers.hl7_pcd.ack import Header
from gateway.drivers.hl7_pcd.parser import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    Hl7Error,
    Message,
    Segment,
    parse_ts,
)
from gateway.drivers.hl7_pcd.rows import Equipment, equipment

log = logging.getLogger(__name__)

CLOCK_SKEW_MS: Final = 5_000
DRIVER_KIND: Final = "hl7_pcd"


def equipment_key(text: str) -> str:
    """The form equipment ids are compared in: trimmed, without ``urn:uuid:``, upper case."""
    text = text.strip()
    if text.lower().startswith("urn:uuid:"):
        text = text[len("urn:uuid:"):]
    return text.upper()


@dataclass(frozen=True, slots=True)
class Routing:
    """The driver's device and the settings that decide which device a row belongs to."""

    device_id: str
    bed: str | None = None
    serial_number: str = ""
    devices: Mapping[str, str] = field(default_factory=dict)  # equipment_key(id) -> device id
    discover: bool = True

    def resolve(self, found: Equipment | None) -> tuple[str, bool]:
        """Device id for an equipment id, and whether it is a discovered one (see the module docstring)."""
        if found is None:
            if self.discover:
                raise Hl7Error(REQUIRED_FIELD_MISSING, "no equipment identifier in OBX-18 or MSH-3", "MSH", 1, 3)
            return self.device_id, False
        key = equipment_key(found.value)
        if key in self.devices:
            return self.devices[key], False
        derived = found.device_id()
        if (self.serial_number and key == equipment_key(self.serial_number)) or derived == self.device_id:
            return self.device_id, False
        if self.discover:
            return derived, True
        return self.device_id, False


@dataclass
class Decoded:
    """One message mapped: items to store (after registering ``discovered``), or the error that rejects it."""

    header: Header | None
    items: list[Item] = field(default_factory=list)
    discovered: list[DeviceInfo] = field(default_factory=list)
    error: Hl7Error | None = None
    warnings: list[Hl7Error] = field(default_factory=list)  # rows left out; the rest of the message is kept
    skipped: int = 0  # rows that are not numeric readings (enumerations, waveforms, empty values)
    containment: list[str] = field(default_factory=list)  # OBX-4 of each item, in item order


class MessageContext:
    """Per-message state shared by the PCD-01 and PCD-04 mappings."""

    def __init__(self, message: Message, header: Header, routing: Routing, received: int) -> None:
        """Read what applies to the whole message: PV1 bed, MSH-7 time and clock skew, MSH-3 sender."""
        self.message = message
        self.routing = routing
        self.received = received
        self.result = Decoded(header)
        pv1 = message.first("PV1")
        # PV1-3 is <unit>^<room>^<bed>^<facility>: the bed, or the room when a room holds one bed.
        self.pv1_bed = (pv1.get(3, 3).strip() or pv1.get(3, 2).strip()) if pv1 else ""
        msh = message.header
        self.message_time = parse_ts(msh.get(7))
        # Skew is judged on MSH-7 (the sender's clock now), not on OBX-14: an NIBP reading is legitimately old.
        skewed = self.message_time is not None and abs(self.message_time - received) > CLOCK_SKEW_MS
        self.skew = FLAG_CLOCK_SKEW if skewed else 0
        self.sender = equipment(msh, 3)
        self._announced: set[str] = set()
        # Rows of one device repeat the same equipment id: resolve it once per message (routing and the
        # bed are fixed for the message, so the answer cannot change within it). Keyed by id(): the ids come
        # from a cache, so they are the same object, and hashing the dataclass runs Python code; each entry
        # holds its Equipment, so an id cannot be reused for another while the entry lives.
        self._routes: dict[int, tuple[Equipment | None, tuple[str, str | None]]] = {}

    def route(self, found: Equipment | None) -> tuple[str, str | None]:
        """Device id and bed of a row; a device seen for the first time in this message is queued for registration."""
        entry = self._routes.get(id(found))
        if entry is None or entry[0] is not found:
            entry = self._routes[id(found)] = (found, self._route(found))
        return entry[1]

    def _route(self, found: Equipment | None) -> tuple[str, str | None]:
        """:meth:`route`, unremembered."""
        found = found or self.sender
        device, discovered = self.routing.resolve(found)
        # The site's bed binding wins for the driver's own device; others are where PV1-3 says.
        own_bed = self.routing.bed if device == self.routing.device_id else None
        bed = own_bed or self.pv1_bed or None
        if discovered and found is not None and device not in self._announced:
            self._announced.add(device)
            self.result.discovered.append(DeviceInfo(
                device=device, stream="device", seq=0, ts=self.received, driver=DRIVER_KIND, bed=bed,
                identifiers={found.kind: found.value}, discovered=True,
            ))
        return device, bed

    def time_of(self, segment: Segment, number: int, fallback: int | None) -> int | None:
        """Device time of a row: OBX-14, else ``fallback`` (OBR-7), else MSH-7; a bad OBX-14 is warned about."""
        text = segment.get(14).strip()
        if text:
            parsed = parse_ts(text)
            if parsed is not None:
                return parsed
            self.result.warnings.append(Hl7Error(DATA_TYPE_ERROR, f"OBX-14 {text[:30]!r} is not a valid time",
                                                 "OBX", number, 14))
        return fallback if fallback is not None else self.message_time
