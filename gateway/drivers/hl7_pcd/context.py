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

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from devices.contract import FLAG_CLOCK_SKEW, DeviceInfo, Item
from gateway.drivers.hl7_pcd.ack import Header, header_of
from gateway.drivers.hl7_pcd.parser import (
    CACHE_SIZE,
    DATA_TYPE_ERROR,
    MAX_CACHED_KEY,
    REQUIRED_FIELD_MISSING,
    Hl7Error,
    Message,
    Segment,
    Separators,
    first_leaf,
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
    # Answers of resolve(), as every message of a sender asks the same (the settings are fixed); bounded.
    _resolved: dict[Equipment, tuple[str, bool]] = field(default_factory=dict, compare=False, repr=False)

    def resolve(self, found: Equipment | None) -> tuple[str, bool]:
        """Device id for an equipment id, and whether it is a discovered one (see the module docstring)."""
        if found is None:
            if self.discover:
                raise Hl7Error(REQUIRED_FIELD_MISSING, "no equipment identifier in OBX-18 or MSH-3", "MSH", 1, 3)
            return self.device_id, False
        answer = self._resolved.get(found)
        if answer is None:
            if len(self._resolved) >= CACHE_SIZE:
                self._resolved.clear()
            answer = self._resolved[found] = self._resolve(found)
        return answer

    def _resolve(self, found: Equipment) -> tuple[str, bool]:
        """:meth:`resolve` of an equipment id, unremembered."""
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
    # Identities to announce: devices first seen, and the firmware a message reports (``revision``).
    discovered: list[DeviceInfo] = field(default_factory=list)
    error: Hl7Error | None = None
    warnings: list[Hl7Error] = field(default_factory=list)  # rows left out; the rest of the message is kept
    skipped: int = 0  # rows that are not numeric readings (enumerations, waveforms, empty values)
    containment: list[str] = field(default_factory=list)  # OBX-4 of each item, in item order


def changed(previous: DeviceInfo | None, info: DeviceInfo) -> DeviceInfo | None:
    """``info`` to announce after ``previous`` (the device's last announcement), or None when nothing changed:
    bed, identifiers or firmware (a message that does not report the firmware leaves it as it was)."""
    if previous is None:
        return info
    same = (previous.bed, previous.identifiers) == (info.bed, info.identifiers)
    if same and info.firmware in ("", previous.firmware):
        return None
    return info if info.firmware else msgspec.structs.replace(info, firmware=previous.firmware)


@dataclass(frozen=True, slots=True)
class Sender:
    """What a message says of its sender besides MSH-7 (its time) and MSH-10 (its control id); see :func:`sender_of`."""

    header: Header  # with an empty control id
    bed: str  # PV1-3: the bed, or the room when a room holds one bed; "" when not given
    equipment: Equipment | None  # MSH-3


# Bounded like the caches of network text in rows.py; keyed on the MSH fields but 7 and 10, and PV1-3.
_SENDERS: dict[tuple[str, ...], Sender] = {}


def sender_of(seps: Separators, segments: list[list[str]]) -> Sender:
    """The :class:`Sender` of a message split into fields (``segments[0]`` is MSH, as :func:`split_message` gives).

    A sender repeats the same header (and PV1) in every message, so it is read once per distinct text
    (the MSH fields other than 7 and 10, and the first PV1's field 3) and kept in a bounded cache.
    """
    msh = segments[0]
    pv1 = next((fields for fields in segments if fields[0] == "PV1"), None)
    # Fields 1 and 2 (the separators) are in the key; any two keys of equal length name the same fields.
    key = (pv1[3] if pv1 is not None and len(pv1) > 3 else "", *msh[1:7], *msh[8:10], *msh[11:])
    try:
        return _SENDERS[key]
    except KeyError:
        pass
    header = header_of(Segment(msh, seps))
    found = Sender(msgspec.structs.replace(header, control_id=""), _bed(Segment(pv1, seps) if pv1 else None),
                   equipment(Segment(msh, seps), 3))
    if sum(map(len, key)) <= 4 * MAX_CACHED_KEY:
        if len(_SENDERS) >= CACHE_SIZE:
            _SENDERS.clear()
        _SENDERS[key] = found
    return found


def _bed(pv1: Segment | None) -> str:
    """PV1-3 is <unit>^<room>^<bed>^<facility>: the bed, or the room when a room holds one bed."""
    return (pv1.get(3, 3).strip() or pv1.get(3, 2).strip()) if pv1 else ""


class MessageContext:
    """Per-message state shared by the PCD-01 and PCD-04 mappings."""

    def __init__(self, seps: Separators, segments: list[list[str]], sender: Sender, header: Header,
                 routing: Routing, received: int) -> None:
        """Take what applies to the whole message: PV1 bed, MSH-3 sender, and MSH-7 time with its clock skew."""
        self.seps = seps
        self.segments = segments
        self.routing = routing
        self.received = received
        self.result = Decoded(header)
        self.pv1_bed = sender.bed
        msh = segments[0]
        self.message_time = parse_ts(first_leaf(msh[7], seps) if len(msh) > 7 else "")
        # Skew is judged on MSH-7 (the sender's clock now), not on OBX-14: an NIBP reading is legitimately old.
        skewed = self.message_time is not None and abs(self.message_time - received) > CLOCK_SKEW_MS
        self.skew = FLAG_CLOCK_SKEW if skewed else 0
        self.sender = sender.equipment
        self._announced: set[str] = set()
        # Rows of one device repeat the same equipment id: resolve it once per message (routing and the
        # bed are fixed for the message, so the answer cannot change within it). Keyed by id(): the ids come
        # from a cache, so they are the same object, and hashing the dataclass runs Python code; each entry
        # holds its Equipment, so an id cannot be reused for another while the entry lives.
        self._routes: dict[int, tuple[Equipment | None, tuple[str, str | None]]] = {}

    @functools.cached_property
    def message(self) -> Message:
        """The message as Segments, for mappings that read it the general way (PCD-04)."""
        return Message(self.seps, [Segment(fields, self.seps) for fields in self.segments])

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

    def revision(self, found: Equipment | None, version: str, *, firmware: bool) -> None:
        """The firmware (or, with ``firmware`` false, software) revision of a row's device, announced with its
        identity; a firmware revision wins over a software one."""
        device, bed = self.route(found)
        infos = self.result.discovered
        for n, info in enumerate(infos):
            if info.device == device:
                if firmware or not info.firmware:
                    infos[n] = msgspec.structs.replace(info, firmware=version)
                return
        infos.append(DeviceInfo(device=device, stream="device", seq=0, ts=self.received, driver=DRIVER_KIND, bed=bed,
                                firmware=version))

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
