"""The location engine: tag reads in, room-level location per asset out, without flapping (pure, no I/O).

Hospitals want room-level certainty, not coordinates (DOMAIN.md section 6). A BLE or RFID tag between
two readers is heard by both, with a signal that jumps by several dB from read to read; placing it at
whichever reader heard it loudest last would move it back and forth all day. The engine smooths:

* **staleness bound**: a room's signal counts only while its newest read is younger than ``stale_ms``;
* **smoothing**: per asset and room, an exponentially weighted mean of RSSI (``alpha``) over fresh reads;
  a room not heard for more than ``hold_ms`` fades by ``fade_db_per_s`` (a tag carried out of a
  reader's range stops being read, it does not get fainter);
* **margin, sustained**: a challenger room must beat the current room by ``margin_db`` on ``sustain_reads``
  consecutive evaluations (reads of the asset, by any reader) spanning at least ``sustain_ms`` before the
  asset moves; one evaluation without the lead starts over;
* **first placement, same evidence**: an asset not placed yet (or lost) is placed in the best fresh room
  once it leads the next best by ``margin_db`` on ``sustain_reads`` evaluations spanning ``sustain_ms``,
  as a move would; a neighbour's reader that happens to report first, faintly, never places it. An asset
  heard for ``stale_ms`` with no room that far ahead (halfway between two readers) is placed in the
  stronger room, with the low confidence a small lead gives;
* **plausible speed**: a move of ``d`` metres is accepted only ``d / max_speed_mps`` after its old room last
  held the asset (no challenger ahead by the margin) (a person pushing a bed does not teleport one floor up);
* **lost**: :meth:`LocationEngine.tick` marks an asset lost when none of its tags was read for its type's
  timeout.

Transitions are :class:`LocationEvent` s: ``entered`` (first placement, a move, or placed again after
being lost), ``left`` (before ``entered`` on a move) and ``lost``. Each asset's current location is an
:class:`~state.assets.AssetLocation` (room, zone, floor, confidence, since, last seen, source).

Confidence (0..1) is half the lead of the room over the next best fresh room, scaled so a lead of twice
the margin counts fully, and half the signal strength between ``weak_dbm`` (0) and ``strong_dbm`` (1):
a strong read with no competitor is near 1, a weak one barely ahead of its neighbour near 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from devices.contract import TagRead
from devices.site import Room
from state.assets import AssetLocation

NO_SIGNAL: Final = -math.inf
ROOM_PITCH_M: Final = 8.0  # distance between neighbouring rooms in the fallback distance (no site map)
FLOOR_CHANGE_M: Final = 40.0  # a change of floor in the fallback distance (walk to the lift, ride, walk back)

EventKind = Literal["entered", "left", "lost"]
Distance = Callable[[str, str], float | None]
"""Metres between two rooms (None when unknown: the speed cap is then not applied)."""


@dataclass(frozen=True, slots=True)
class LocationSettings:
    """The smoothing rule's parameters (see the module docstring)."""

    stale_ms: int = 15_000
    hold_ms: int = 4_000
    fade_db_per_s: float = 2.0
    alpha: float = 0.3
    margin_db: float = 6.0
    sustain_reads: int = 3
    sustain_ms: int = 5_000
    max_speed_mps: float = 3.0
    lost_after_ms: int = 15 * 60_000  # default for types not in ``lost_after_ms_by_type``
    lost_after_ms_by_type: dict[str, int] = field(default_factory=dict)
    weak_dbm: float = -90.0
    strong_dbm: float = -55.0

    def __post_init__(self) -> None:
        """Refuse settings that cannot work, naming the field."""
        if not 0 < self.alpha <= 1:
            raise ValueError(f"location: alpha {self.alpha}: expected 0 < alpha <= 1")
        if self.sustain_reads < 1 or self.stale_ms <= 0 or self.margin_db < 0 or self.max_speed_mps <= 0:
            raise ValueError("location: sustain_reads >= 1, stale_ms > 0, margin_db >= 0, max_speed_mps > 0")
        if self.strong_dbm <= self.weak_dbm:
            raise ValueError("location: strong_dbm must be above weak_dbm")

    def lost_after(self, asset_type: str) -> int:
        """The lost timeout of an asset type."""
        return self.lost_after_ms_by_type.get(asset_type, self.lost_after_ms)


@dataclass(frozen=True, slots=True)
class LocationEvent:
    """An asset entered or left a room, or was lost (``room`` is then where it was last seen)."""

    asset: str
    kind: EventKind
    ts: int
    room: str
    zone: str | None
    floor: str | None
    confidence: float
    source: str


class _Signal:
    """The smoothed signal of one asset in one room."""

    __slots__ = ("last", "level", "reader")

    def __init__(self, level: float, last: int, reader: str) -> None:
        self.level = level
        self.last = last
        self.reader = reader


class _Track:
    """What the engine knows of one asset."""

    __slots__ = (
        "asset",
        "challenger",
        "challenger_since",
        "confidence",
        "count",
        "heard_since",
        "held_at",
        "last_seen",
        "lost",
        "room",
        "signals",
        "since",
        "source",
        "type",
    )

    def __init__(self, asset: str, asset_type: str) -> None:
        self.asset = asset
        self.type = asset_type
        self.room: str | None = None
        self.since = 0
        self.last_seen = 0
        self.held_at = 0  # the last time the current room clearly held the asset (the speed cap counts from there)
        self.source = ""
        self.confidence = 0.0
        self.lost = False
        self.challenger: str | None = None
        self.challenger_since = 0
        self.count = 0
        self.heard_since: int | None = None  # not placed (or lost): when it was first heard again
        self.signals: dict[str, _Signal] = {}


def corridor_distance(rooms: Iterable[Room]) -> Distance:
    """The fallback walking distance without a site map: rooms in listed order along one corridor per floor,
    :data:`ROOM_PITCH_M` apart; another floor costs :data:`FLOOR_CHANGE_M` plus both walks to the first room."""
    position: dict[str, tuple[str | None, int]] = {}
    per_floor: dict[str | None, int] = {}
    for room in rooms:
        index = per_floor.get(room.floor, 0)
        per_floor[room.floor] = index + 1
        position[room.id] = (room.floor, index)

    def distance(a: str, b: str) -> float | None:
        if a == b:
            return 0.0
        pa, pb = position.get(a), position.get(b)
        if pa is None or pb is None:
            return None
        if pa[0] == pb[0]:
            return abs(pa[1] - pb[1]) * ROOM_PITCH_M
        return FLOOR_CHANGE_M + (pa[1] + pb[1]) * ROOM_PITCH_M

    return distance


class LocationEngine:
    """Room-level location of tagged assets from tag reads (one instance per facilities service)."""

    def __init__(self, rooms: Iterable[Room], readers: dict[str, str], settings: LocationSettings | None = None,
                 distance: Distance | None = None) -> None:
        """``readers`` maps a reader's device id to its room id; ``distance`` defaults to corridor order."""
        self.settings = settings or LocationSettings()
        self.rooms = {r.id: r for r in rooms}
        unknown = sorted({room for room in readers.values() if room not in self.rooms})
        if unknown:
            raise ValueError(f"location: readers placed in unknown rooms {unknown}")
        self.readers = dict(readers)
        self.distance = distance or corridor_distance(self.rooms.values())
        self._tags: dict[str, _Track] = {}
        self._assets: dict[str, _Track] = {}
        self.dirty: set[str] = set()  # assets whose location changed since :meth:`take_dirty`
        self.unknown_tags = 0
        self.unknown_readers = 0

    # --- registry -----------------------------------------------------------------------------------------

    def track(self, asset: str, tag: str, asset_type: str = "") -> None:
        """Follow ``asset`` by ``tag`` (again: a retagged asset keeps its location)."""
        current = self._assets.get(asset)
        if current is None:
            current = self._assets[asset] = _Track(asset, asset_type)
        current.type = asset_type
        for old_tag in [t for t, a in self._tags.items() if a is current and t != tag]:
            del self._tags[old_tag]
        self._tags[tag] = current

    def forget(self, asset: str) -> None:
        """Stop following an asset."""
        track = self._assets.pop(asset, None)
        if track is not None:
            for tag in [t for t, a in self._tags.items() if a is track]:
                del self._tags[tag]

    def tracked(self) -> dict[str, str]:
        """Tag -> asset of every followed asset."""
        return {tag: track.asset for tag, track in self._tags.items()}

    def restore(self, location: AssetLocation) -> None:
        """Start from a stored location (after a restart), so a known asset does not 'enter' its room again."""
        track = self._assets.get(location.asset)
        if track is None or location.room not in self.rooms:
            return
        track.room, track.since, track.last_seen = location.room, location.since, location.last_seen
        track.held_at, track.source, track.confidence = location.last_seen, location.source, location.confidence
        track.lost = location.lost

    # --- reads --------------------------------------------------------------------------------------------

    def process(self, reads: Iterable[TagRead]) -> list[LocationEvent]:
        """Feed tag reads (in arrival order); return the transitions they cause."""
        events: list[LocationEvent] = []
        for read in reads:
            self.read(read.tag, read.device, read.rssi, read.ts, events)
        return events

    def read(self, tag: str, reader: str, rssi: float, ts: int, events: list[LocationEvent]) -> None:
        """One read of ``tag`` by ``reader`` at ``ts``: update the asset, append any transition to ``events``."""
        track = self._tags.get(tag)
        if track is None:
            self.unknown_tags += 1
            return
        room = self.readers.get(reader)
        if room is None:
            self.unknown_readers += 1
            return
        settings = self.settings
        signal = track.signals.get(room)
        if signal is None or ts - signal.last > settings.stale_ms:
            track.signals[room] = signal = _Signal(rssi, ts, reader)
        else:
            signal.level += settings.alpha * (rssi - signal.level)
            if ts > signal.last:
                signal.last, signal.reader = ts, reader
        now = ts if ts > track.last_seen else track.last_seen
        track.last_seen = now
        self.dirty.add(track.asset)
        # Placed: the current room's level (no signal once stale) against the best fresh challenger.
        # Not placed yet (or lost): the best fresh room against the next best; the same sustained lead
        # places it, so a neighbour's reader that happens to report first never places the asset.
        held = None if track.lost else track.room  # the room it is placed in (None: not placed yet, or lost)
        heard = track.heard_since
        if held is None and heard is None:
            heard = track.heard_since = now
        horizon, hold = now - settings.stale_ms, now - settings.hold_ms
        fade = settings.fade_db_per_s / 1000
        current_level = NO_SIGNAL
        if held is not None:
            current = track.signals.get(held)
            if current is not None and current.last >= horizon:
                current_level = current.level if current.last >= hold else current.level - fade * (hold - current.last)
        best_room, best_level, second = None, NO_SIGNAL, NO_SIGNAL
        for other, sig in track.signals.items():
            if sig.last < horizon or other == held:
                continue
            level = sig.level if sig.last >= hold else sig.level - fade * (hold - sig.last)
            if level > best_level:
                best_room, best_level, second = other, level, best_level
            elif level > second:
                second = level
        if best_room is None or best_level < (second if held is None else current_level) + settings.margin_db:
            track.challenger, track.count = None, 0
            if held is not None:
                track.held_at = now
                track.confidence = self._confidence(current_level, best_level)
            elif best_room is not None and heard is not None and now - heard >= settings.stale_ms:
                # Heard for a whole staleness bound with no room clearly ahead (halfway between two
                # readers): place it in the stronger room, with the low confidence that small lead gives.
                self._enter(track, best_room, now, track.signals[best_room].reader, events, runner_up=second)
            return
        if best_room != track.challenger:
            track.challenger, track.count, track.challenger_since = best_room, 0, now
        track.count += 1
        if track.count < settings.sustain_reads or now - track.challenger_since < settings.sustain_ms:
            return
        reader = track.signals[best_room].reader
        if held is None:
            self._enter(track, best_room, now, reader, events, runner_up=second)
            return
        metres = self.distance(held, best_room)
        if metres is not None and (now - track.held_at) * settings.max_speed_mps < metres * 1000:
            return  # too fast to be true (yet): keep counting, decide on a later read
        self._leave(track, now, events)
        self._enter(track, best_room, now, reader, events, runner_up=max(current_level, second))

    def _confidence(self, level: float, runner_up: float) -> float:
        settings = self.settings
        if level == NO_SIGNAL:
            return 0.0
        lead = 1.0 if runner_up == NO_SIGNAL else min(1.0, max(0.0, (level - runner_up) / (2 * settings.margin_db)))
        strength = min(1.0, max(0.0, (level - settings.weak_dbm) / (settings.strong_dbm - settings.weak_dbm)))
        return round(0.5 * lead + 0.5 * strength, 3)

    def _enter(self, track: _Track, room: str, ts: int, reader: str, events: list[LocationEvent],
               runner_up: float = NO_SIGNAL) -> None:
        if runner_up == NO_SIGNAL:  # first placement or found again: compare with every other fresh room
            horizon = ts - self.settings.stale_ms
            runner_up = max((s.level for r, s in track.signals.items() if r != room and s.last >= horizon),
                            default=NO_SIGNAL)
        track.room, track.since, track.held_at, track.source, track.lost = room, ts, ts, reader, False
        track.challenger, track.count, track.heard_since = None, 0, None
        track.confidence = self._confidence(track.signals[room].level, runner_up)
        events.append(self._event(track, "entered", ts))

    def _leave(self, track: _Track, ts: int, events: list[LocationEvent]) -> None:
        events.append(self._event(track, "left", ts))

    def _event(self, track: _Track, kind: EventKind, ts: int) -> LocationEvent:
        room = self.rooms[track.room] if track.room is not None else None
        return LocationEvent(track.asset, kind, ts, track.room or "", room.zone if room else None,
                             room.floor if room else None, track.confidence, track.source)

    # --- time ---------------------------------------------------------------------------------------------

    def tick(self, now: int) -> list[LocationEvent]:
        """Mark assets lost that were not seen for their type's timeout; return those ``lost`` events."""
        events: list[LocationEvent] = []
        for track in self._assets.values():
            if track.room is None or track.lost:
                continue
            if now - track.last_seen >= self.settings.lost_after(track.type):
                track.lost, track.confidence = True, 0.0
                track.challenger, track.count = None, 0
                track.signals.clear()
                self.dirty.add(track.asset)
                events.append(self._event(track, "lost", now))
        return events

    # --- queries ------------------------------------------------------------------------------------------

    def location(self, asset: str) -> AssetLocation | None:
        """Where the asset is now (the contract), or None if it was never placed."""
        track = self._assets.get(asset)
        if track is None or track.room is None:
            return None
        room = self.rooms[track.room]
        return AssetLocation(track.asset, track.room, room.zone, room.floor, track.confidence, track.since,
                             track.last_seen, track.source, track.lost)

    def take_dirty(self) -> list[AssetLocation]:
        """Locations changed (or seen again) since the last call: what to write to the state."""
        changed = [loc for asset in self.dirty if (loc := self.location(asset)) is not None]
        self.dirty.clear()
        return changed
