"""The site map: buildings, floors, rooms, corridor junctions, doors, corridors, lifts and stairs (a typed TOML file).

An IMDF-inspired model kept as typed TOML rather than GeoJSON: the graph is what wayfinding needs, and
every feature carries a plan position (``x``, ``y`` in metres on one site-wide grid, north = +y) so
turn-by-turn directions can tell left from right. docs/facilities.md describes every field.

Features::

    SiteMap
    ├── buildings   id, name
    ├── floors      id, building, level (0 = ground), name
    ├── rooms       id, floor, kind, x, y, name, unit, beds, restricted, devices
    ├── junctions   id, floor, x, y, name, kind (corridor, lobby, entrance), restricted
    ├── doors       id, room, to (a junction or room), length_m, accessible, restricted
    ├── ways        id, from, to, length_m, type (corridor, ramp, bridge, outdoor), accessible, restricted
    ├── lifts       id, name, stops (junctions, one per floor), wait_s, s_per_floor, bed, restricted
    └── stairs      id, name, stops (junctions, one per floor), length_m per flight, restricted

Loading validates types with msgspec and then every cross reference; a :class:`SiteMapError` names
the feature and the field (``room ICU-R01: field floor 'A9' is not a floor of the site map``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

DEMO_MAP: Final = "demo_hospital.toml"
"""The shipped demo hospital (facilities/data/)."""

RoomKind = Literal["patient_room", "ward_office", "nurse_station", "storage", "clean_utility", "dirty_utility",
                   "waste_storage", "lobby", "reception", "exit", "theatre", "imaging", "pharmacy", "plant",
                   "office", "toilet", "other"]
JunctionKind = Literal["corridor", "lobby", "entrance"]
WayType = Literal["corridor", "ramp", "bridge", "outdoor"]

Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
Length = Annotated[float, msgspec.Meta(gt=0, le=5000)]


class SiteMapError(ValueError):
    """The site map is invalid; the message names the feature and the field."""


class Building(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A building of the site."""

    id: Id
    name: str


class Floor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One floor of one building; ``level`` counts from the ground floor (0), basements below zero."""

    id: Id
    building: Id
    level: int
    name: str = ""


class Room(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A room (IMDF unit): patient rooms name their care unit and beds; ``devices`` are fixed devices in it."""

    id: Id
    floor: Id
    kind: RoomKind
    x: float
    y: float
    name: str = ""
    unit: str | None = None
    beds: list[str] = []
    restricted: bool = False  # staff only: closed to visitors
    devices: list[str] = []  # e.g. the storage room's temperature logger


class Junction(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A point of a corridor where ways meet, a lift lobby or an entrance."""

    id: Id
    floor: Id
    x: float
    y: float
    name: str = ""
    kind: JunctionKind = "corridor"
    restricted: bool = False


class Door(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A room's door onto a corridor junction (or another room); ``length_m`` from the room to there."""

    id: Id
    room: Id
    to: Id
    length_m: Length
    accessible: bool = True  # wide and step-free: wheelchairs and beds pass
    restricted: bool = False


class Way(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A walkable connection between two junctions: a corridor on one floor; a ramp, bridge or outdoor path may
    join two floors (of one building or two)."""

    id: Id
    from_: Id = msgspec.field(name="from")
    to: Id
    length_m: Length
    type: WayType = "corridor"
    accessible: bool = True
    restricted: bool = False


class Lift(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A lift: its lobby junction on every floor it serves; boarding costs ``wait_s`` on average."""

    id: Id
    stops: list[Id]
    name: str = ""
    wait_s: Annotated[float, msgspec.Meta(ge=0, le=900)] = 45.0
    s_per_floor: Annotated[float, msgspec.Meta(gt=0, le=120)] = 6.0
    bed: bool = False  # the car takes a bed and its escort
    restricted: bool = False  # staff only (a service lift)


class Stairs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A staircase: its landing junction on every floor; ``length_m`` is one flight's walking length."""

    id: Id
    stops: list[Id]
    name: str = ""
    length_m: Length = 12.0
    restricted: bool = False


class SiteMap(msgspec.Struct, frozen=True, forbid_unknown_fields=True, dict=True):
    """One site's map (schema version 1)."""

    site: Id
    name: str
    buildings: list[Building]
    floors: list[Floor]
    rooms: list[Room]
    junctions: list[Junction] = []
    doors: list[Door] = []
    ways: list[Way] = []
    lifts: list[Lift] = []
    stairs: list[Stairs] = []
    version: Literal[1] = 1

    def __post_init__(self) -> None:
        """Check ids and cross references so a bad map fails at start-up naming the feature and field."""
        _check(self)

    @cached_property
    def floor_index(self) -> dict[str, Floor]:
        """Floors by id."""
        return {f.id: f for f in self.floors}

    @cached_property
    def room_index(self) -> dict[str, Room]:
        """Rooms by id."""
        return {r.id: r for r in self.rooms}

    @cached_property
    def junction_index(self) -> dict[str, Junction]:
        """Junctions by id."""
        return {j.id: j for j in self.junctions}

    @cached_property
    def bed_rooms(self) -> dict[str, str]:
        """The room of every bed."""
        return {bed: room.id for room in self.rooms for bed in room.beds}

    def rooms_of(self, kind: RoomKind) -> list[Room]:
        """Rooms of one kind (e.g. ``waste_storage``)."""
        return [r for r in self.rooms if r.kind == kind]

    def room_of_device(self, device: str) -> Room | None:
        """The room a fixed device is declared in, or None."""
        for room in self.rooms:
            if device in room.devices:
                return room
        return None

    def floor_of(self, node: str) -> Floor:
        """The floor of a room or junction."""
        feature = self.room_index.get(node) or self.junction_index[node]
        return self.floor_index[feature.floor]


def _check(site_map: SiteMap) -> None:
    """Every id unique, every reference resolved, every lift and stair stop on a different floor of one building."""
    buildings = {b.id for b in site_map.buildings}
    floors = {f.id: f for f in site_map.floors}
    _unique("building", (b.id for b in site_map.buildings))
    _unique("floor", (f.id for f in site_map.floors))
    for floor in site_map.floors:
        if floor.building not in buildings:
            raise SiteMapError(f"floor {floor.id}: field building {floor.building!r} is not a building of the site map")
    places: dict[str, str] = {}  # room or junction id -> floor
    for kind, features in (("room", site_map.rooms), ("junction", site_map.junctions)):
        for feature in features:
            if feature.id in places:
                raise SiteMapError(f"{kind} {feature.id}: field id is already a room or junction of the site map")
            if feature.floor not in floors:
                raise SiteMapError(f"{kind} {feature.id}: field floor {feature.floor!r} is not a floor of the site map")
            places[feature.id] = feature.floor
    _unique("bed", (bed for room in site_map.rooms for bed in room.beds))
    for room in site_map.rooms:
        if room.beds and room.unit is None:
            raise SiteMapError(f"room {room.id}: field unit is missing (a room with beds belongs to a care unit)")
    junctions = {j.id for j in site_map.junctions}
    _unique("door", (d.id for d in site_map.doors))
    for door in site_map.doors:
        if door.room not in site_map.room_index:
            raise SiteMapError(f"door {door.id}: field room {door.room!r} is not a room of the site map")
        if door.to not in places:
            raise SiteMapError(f"door {door.id}: field to {door.to!r} is not a room or junction of the site map")
    _unique("way", (w.id for w in site_map.ways))
    for way in site_map.ways:
        for field, end in (("from", way.from_), ("to", way.to)):
            if end not in junctions:
                raise SiteMapError(f"way {way.id}: field {field} {end!r} is not a junction of the site map")
        if way.from_ == way.to:
            raise SiteMapError(f"way {way.id}: field to is its own start")
        if places[way.from_] != places[way.to] and way.type == "corridor":
            raise SiteMapError(f"way {way.id}: field type 'corridor' cannot join two floors (use ramp, bridge or "
                               "outdoor)")
    _unique("lift or stairs", [*(c.id for c in site_map.lifts), *(c.id for c in site_map.stairs)])
    for kind, connectors in (("lift", site_map.lifts), ("stairs", site_map.stairs)):
        for connector in connectors:
            if len(connector.stops) < 2:
                raise SiteMapError(f"{kind} {connector.id}: field stops needs at least two floors")
            for stop in connector.stops:
                if stop not in junctions:
                    raise SiteMapError(f"{kind} {connector.id}: field stops: {stop!r} is not a junction of the "
                                       "site map")
            stop_floors = [floors[places[s]] for s in connector.stops]
            if len({f.id for f in stop_floors}) != len(stop_floors):
                raise SiteMapError(f"{kind} {connector.id}: field stops: two stops on one floor")
            if len({f.building for f in stop_floors}) != 1:
                raise SiteMapError(f"{kind} {connector.id}: field stops: floors of more than one building")
    unreachable = _isolated(site_map, places)
    if unreachable:
        raise SiteMapError(f"room {unreachable[0]}: field id: the room has no door (nothing leads to it)")


def _unique(kind: str, ids: Iterable[str]) -> None:
    """Raise naming the first id that appears twice."""
    seen: set[str] = set()
    for id_ in ids:
        if id_ in seen:
            raise SiteMapError(f"{kind} {id_}: field id appears twice")
        seen.add(id_)


def _isolated(site_map: SiteMap, places: dict[str, str]) -> list[str]:
    """Rooms no door touches."""
    touched = {d.room for d in site_map.doors} | {d.to for d in site_map.doors}
    return [r.id for r in site_map.rooms if r.id not in touched]


_INDEX: Final = re.compile(r"\$\.(\w+)\[(\d+)\](?:\.(\w+))?")
_SINGULAR: Final = {"buildings": "building", "floors": "floor", "rooms": "room", "junctions": "junction",
                    "doors": "door", "ways": "way", "lifts": "lift", "stairs": "stairs"}


def site_map_from_dict(data: dict[str, Any], source: str = "site map") -> SiteMap:
    """Build and validate a site map from parsed TOML/JSON; :class:`SiteMapError` names the feature and field."""
    try:
        return msgspec.convert(data, SiteMap)
    except msgspec.ValidationError as exc:
        raise SiteMapError(f"{source}: {_name_feature(str(exc), data)}") from exc


def _name_feature(message: str, data: dict[str, Any]) -> str:
    """Turn msgspec's ``at `$.rooms[3].floor``` into ``room ICU-R01: field floor``."""
    match = _INDEX.search(message)
    if match is None:
        return message
    table, index, field = match.group(1), int(match.group(2)), match.group(3)
    items = data.get(table)
    feature = items[index] if isinstance(items, list) and index < len(items) else None
    name = feature.get("id") if isinstance(feature, dict) else None
    what = f"{_SINGULAR.get(table, table)} {name if isinstance(name, str) else f'#{index + 1}'}"
    reason = message.split(" - at ")[0] if " - at " in message else message
    return f"{what}: field {field or '?'}: {reason}"


def load_site_map(path: Path | str | None = None) -> SiteMap:
    """Load a site map TOML file; ``None`` or ``"demo"`` loads the shipped demo hospital."""
    if path is None or str(path) == "demo":
        text = resources.files("facilities").joinpath("data", DEMO_MAP).read_text(encoding="utf-8")
        source = f"site map {DEMO_MAP}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SiteMapError(f"site map {path}: {exc}") from exc
        source = f"site map {path}"
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # tomllib recurses once per level of nesting
        raise SiteMapError(f"{source}: {exc}") from exc
    return site_map_from_dict(data, source)
