"""The site description: units, beds, gateways and the devices bound to them (the fleet registry's seed).

The site is data, loaded from TOML and validated before anything connects. Services look devices up
here to check that a gateway speaks only for its own devices and to map devices to beds and units.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from devices.topics import TopicError, check_name


class SiteError(ValueError):
    """The site description is inconsistent; the message names the entry and field."""


class Unit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A care unit (ward) and its beds."""

    id: str
    name: str
    beds: list[str]


class GatewaySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An edge gateway and the unit it serves."""

    id: str
    unit: str
    name: str = ""


class Room(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A room (or corridor section, doorway) where location readers place assets.

    ``id`` is the room id of the site map (e.g. ``"ICU-R03"``); ``exit`` marks a zone at a way out of
    the building, where an asset passing raises a theft alert. Rooms are listed per floor in corridor
    order: the facilities service uses that order as a walking distance when no site map is loaded.
    """

    id: str
    unit: str | None = None
    zone: str | None = None
    floor: str | None = None
    name: str = ""
    exit: bool = False


class DeviceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A device on a gateway: its driver kind, identity, bed binding and connection settings.

    ``room`` places a location reader (RFID reader, BLE gateway, room beacon): its tag reads locate
    assets in that room.
    """

    id: str
    kind: str
    gateway: str
    bed: str | None = None
    room: str | None = None
    manufacturer: str = ""
    model: str = ""
    serial_number: str = ""
    connection: dict[str, Any] = {}


class Site(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One hospital site."""

    id: str
    name: str
    units: list[Unit]
    gateways: list[GatewaySpec]
    devices: list[DeviceSpec] = []
    rooms: list[Room] = []

    def __post_init__(self) -> None:
        """Check cross references so a bad site file fails at start-up with a clear message."""
        try:
            check_name(self.id, "site id")
            for gateway in self.gateways:
                check_name(gateway.id, "gateway id")
            for device in self.devices:
                check_name(device.id, "device id")
        except TopicError as exc:
            raise SiteError(str(exc)) from exc
        units = {u.id for u in self.units}
        beds = [b for u in self.units for b in u.beds]
        if len(set(beds)) != len(beds):
            raise SiteError("a bed id appears twice in units[].beds")
        gateways = {g.id for g in self.gateways}
        for gateway in self.gateways:
            if gateway.unit not in units:
                raise SiteError(f"gateway {gateway.id}: field unit {gateway.unit!r} is not a unit of the site")
        rooms = {r.id for r in self.rooms}
        if len(rooms) != len(self.rooms):
            raise SiteError("a room id appears twice in rooms[]")
        for room in self.rooms:
            if room.unit is not None and room.unit not in units:
                raise SiteError(f"room {room.id}: field unit {room.unit!r} is not a unit of the site")
        seen: set[str] = set()
        for device in self.devices:
            if device.id in seen:
                raise SiteError(f"device {device.id}: declared twice")
            if device.id in gateways:
                raise SiteError(f"device {device.id}: field id is a gateway's id (a gateway speaks for itself)")
            seen.add(device.id)
            if device.gateway not in gateways:
                raise SiteError(f"device {device.id}: field gateway {device.gateway!r} is not a gateway of the site")
            if device.bed is not None and device.bed not in beds:
                raise SiteError(f"device {device.id}: field bed {device.bed!r} is not a bed of the site")
            if device.room is not None and device.room not in rooms:
                raise SiteError(f"device {device.id}: field room {device.room!r} is not a room of the site")

    def device_index(self) -> dict[str, DeviceSpec]:
        """Devices by id; hot paths build this once and keep it."""
        return {d.id: d for d in self.devices}

    def room_index(self) -> dict[str, Room]:
        """Rooms by id."""
        return {r.id: r for r in self.rooms}

    def unit_of_bed(self, bed: str) -> str | None:
        """The unit a bed belongs to, or None."""
        for unit in self.units:
            if bed in unit.beds:
                return unit.id
        return None

    def devices_of(self, gateway: str) -> list[DeviceSpec]:
        """Devices served by one gateway."""
        return [d for d in self.devices if d.gateway == gateway]

    def devices_at(self, bed: str) -> list[DeviceSpec]:
        """Devices bound to one bed."""
        return [d for d in self.devices if d.bed == bed]


def site_from_dict(data: dict[str, Any]) -> Site:
    """Build and validate a site from parsed TOML/JSON data."""
    try:
        return msgspec.convert(data, Site)
    except msgspec.ValidationError as exc:
        raise SiteError(f"site: {exc}") from exc


def load_site(path: Path) -> Site:
    """Load and validate a site file (TOML)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    # Not UTF-8 is a UnicodeDecodeError; tomllib recurses once per level of nested arrays and tables.
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise SiteError(f"site file {path}: {exc}") from exc
    return site_from_dict(data)
