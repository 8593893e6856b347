"""Tagged equipment: which tag it wears, its type, status (clean, in use, dirty, in repair), unit and device.

Also where each asset is now (written by the facilities service, read by the API and wayfinding), its
status history (``asset_events``, for utilisation; where an asset was at a past time is in the time-series
store, see facilities/history.py) and the par levels per unit and type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from sqlalchemy import select

from .models import ASSET_EVENTS, ASSET_STATUSES, AssetEventRow, AssetRow, ParLevelRow
from .sessions import Sessions

AssetStatus = Literal["clean", "in_use", "dirty", "in_repair"]
AssetEventKind = Literal["entered", "left", "lost", "status"]
_UNSET: Any = object()


class AssetLocation(msgspec.Struct, frozen=True):
    """Where an asset is (or was last placed): the location contract of DOMAIN.md section 6.

    ``since`` is when it entered ``room`` (dwell time = now - since), ``last_seen`` the newest read of its
    tag, ``source`` the reader that placed it, ``lost`` true once it has not been seen for its class's
    timeout (``room`` is then where it was last seen).
    """

    asset: str
    room: str
    zone: str | None
    floor: str | None
    confidence: float
    since: int
    last_seen: int
    source: str
    lost: bool = False


class AssetEvent(msgspec.Struct, frozen=True):
    """One line of an asset's history: it entered or left a room, was lost, or changed status."""

    asset: str
    ts: int
    event: AssetEventKind
    room: str | None = None
    zone: str | None = None
    floor: str | None = None
    confidence: float | None = None
    source: str | None = None
    status: str | None = None  # the new status (event "status")
    unit: str | None = None  # the owning unit at the time
    type: str | None = None  # the asset's type at the time


class Asset(msgspec.Struct, frozen=True):
    """A tagged asset, with its current location when it has one."""

    id: str
    tag: str
    type: str
    status: str
    unit: str | None
    device: str | None
    updated: int
    location: AssetLocation | None = None


class ParLevel(msgspec.Struct, frozen=True):
    """How many clean assets of ``type`` the unit should have at hand."""

    unit: str
    type: str
    minimum: int


def _location(row: AssetRow) -> AssetLocation | None:
    if row.room is None or row.since is None or row.last_seen is None:
        return None
    return AssetLocation(row.id, row.room, row.zone, row.floor, row.confidence or 0.0, row.since, row.last_seen,
                         row.location_source or "", row.lost)


def _asset(row: AssetRow) -> Asset:
    """The struct of a row."""
    return Asset(row.id, row.tag, row.type, row.status, row.unit_id, row.device_id, row.updated, _location(row))


def _event(row: AssetEventRow) -> AssetEvent:
    return AssetEvent(row.asset_id, row.ts, row.event, row.room, row.zone, row.floor,  # type: ignore[arg-type]
                      row.confidence, row.source, row.status, row.unit, row.type)


class Assets:
    """The asset registry."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def upsert(self, asset_id: str, *, now: int, tag: str = _UNSET, type: str = _UNSET,
               status: AssetStatus = _UNSET, unit: str | None = _UNSET, device: str | None = _UNSET) -> Asset:
        """Create an asset (tag and type required) or change the fields given."""
        if status is not _UNSET and status not in ASSET_STATUSES:
            raise ValueError(f"asset {asset_id}: status {status!r}: expected one of {ASSET_STATUSES}")
        fields = {k: v for k, v in {"tag": tag, "type": type, "status": status, "unit_id": unit,
                                    "device_id": device}.items() if v is not _UNSET}
        with self._sessions.write(f"saving asset {asset_id}") as session:
            row = session.get(AssetRow, asset_id)
            if row is None:
                if "tag" not in fields or "type" not in fields:
                    raise ValueError(f"asset {asset_id}: a new asset needs tag and type")
                row = AssetRow(id=asset_id, **fields, updated=now)
                session.add(row)
            else:
                if "status" in fields and fields["status"] != row.status:
                    session.add(AssetEventRow(asset_id=asset_id, ts=now, event="status", status=fields["status"],
                                              unit=fields.get("unit_id", row.unit_id), type=row.type))
                for key, value in fields.items():
                    setattr(row, key, value)
                row.updated = now
            session.flush()
            return _asset(row)

    def get(self, asset_id: str) -> Asset | None:
        """One asset, or None."""
        with self._sessions.read(f"reading asset {asset_id}") as session:
            row = session.get(AssetRow, asset_id)
            return None if row is None else _asset(row)

    def location(self, asset_id: str) -> AssetLocation | None:
        """Where the asset is now (or was last seen, ``lost`` set); None for an unknown or never placed asset."""
        with self._sessions.read(f"reading the location of asset {asset_id}") as session:
            row = session.get(AssetRow, asset_id)
            return None if row is None else _location(row)

    def save_locations(self, locations: Sequence[AssetLocation], events: Sequence[AssetEvent] = ()) -> int:
        """Store current locations and append history lines in one transaction; unknown assets are skipped.

        Returns how many locations were stored. The facilities service calls this once per flush.
        """
        for event in events:
            if event.event not in ASSET_EVENTS:
                raise ValueError(f"asset {event.asset}: event {event.event!r}: expected one of {ASSET_EVENTS}")
        stored = 0
        with self._sessions.write(f"saving {len(locations)} asset locations") as session:
            ids = {x.asset for x in locations} | {e.asset for e in events}
            rows = {r.id: r for r in session.scalars(select(AssetRow).where(AssetRow.id.in_(ids)))} if ids else {}
            for loc in locations:
                row = rows.get(loc.asset)
                if row is None:
                    continue
                row.room, row.zone, row.floor, row.confidence = loc.room, loc.zone, loc.floor, loc.confidence
                row.since, row.last_seen, row.location_source, row.lost = loc.since, loc.last_seen, loc.source, loc.lost
                stored += 1
            for event in events:
                row = rows.get(event.asset)
                if row is None:
                    continue
                session.add(AssetEventRow(asset_id=event.asset, ts=event.ts, event=event.event, room=event.room,
                                          zone=event.zone, floor=event.floor, confidence=event.confidence,
                                          source=event.source, status=event.status,
                                          unit=event.unit or row.unit_id, type=event.type or row.type))
        return stored

    def history(self, *, start: int, end: int, asset: str | None = None, event: AssetEventKind | None = None,
                limit: int = 10_000) -> list[AssetEvent]:
        """History lines in ``[start, end)`` in time order, of one asset and/or one kind."""
        query = select(AssetEventRow).where(AssetEventRow.ts >= start, AssetEventRow.ts < end)
        if asset is not None:
            query = query.where(AssetEventRow.asset_id == asset)
        if event is not None:
            query = query.where(AssetEventRow.event == event)
        query = query.order_by(AssetEventRow.ts, AssetEventRow.n).limit(limit)
        with self._sessions.read("reading asset history") as session:
            return [_event(r) for r in session.scalars(query)]

    def status_before(self, start: int) -> dict[str, str]:
        """Each asset's status as of ``start`` (its newest status line before it; assets without one are absent)."""
        latest = (select(AssetEventRow.asset_id, AssetEventRow.status, AssetEventRow.n)
                  .where(AssetEventRow.event == "status", AssetEventRow.ts < start)
                  .order_by(AssetEventRow.asset_id, AssetEventRow.ts, AssetEventRow.n))
        with self._sessions.read("reading asset statuses") as session:
            return {asset: status for asset, status, _ in session.execute(latest) if status is not None}

    def set_par(self, unit: str, type: str, minimum: int, *, now: int) -> ParLevel:
        """Set how many clean assets of ``type`` the unit should have (0 removes the par level)."""
        if minimum < 0:
            raise ValueError(f"par level {unit}/{type}: minimum must not be negative")
        with self._sessions.write(f"saving par level {unit}/{type}") as session:
            row = session.get(ParLevelRow, (unit, type))
            if minimum == 0:
                if row is not None:
                    session.delete(row)
            elif row is None:
                session.add(ParLevelRow(unit_id=unit, type=type, minimum=minimum, updated=now))
            else:
                row.minimum, row.updated = minimum, now
        return ParLevel(unit, type, minimum)

    def par_levels(self, unit: str | None = None) -> list[ParLevel]:
        """Par levels by unit and type."""
        query = select(ParLevelRow).order_by(ParLevelRow.unit_id, ParLevelRow.type)
        if unit is not None:
            query = query.where(ParLevelRow.unit_id == unit)
        with self._sessions.read("reading par levels") as session:
            return [ParLevel(r.unit_id, r.type, r.minimum) for r in session.scalars(query)]

    def by_tag(self, tag: str) -> Asset | None:
        """The asset wearing a tag, or None (the location engine's lookup)."""
        with self._sessions.read(f"reading tag {tag}") as session:
            row = session.scalars(select(AssetRow).where(AssetRow.tag == tag)).first()
            return None if row is None else _asset(row)

    def list(self, *, unit: str | None = None, type: str | None = None, status: AssetStatus | None = None,
             room: str | None = None, zone: str | None = None, units: Sequence[str] | None = None) -> list[Asset]:
        """Assets by id, filtered by owning unit (or any of ``units``), type, status, current room and zone."""
        query = select(AssetRow).order_by(AssetRow.id)
        if units is not None:
            query = query.where(AssetRow.unit_id.in_(list(units)))
        if room is not None:
            query = query.where(AssetRow.room == room)
        if zone is not None:
            query = query.where(AssetRow.zone == zone)
        if unit is not None:
            query = query.where(AssetRow.unit_id == unit)
        if type is not None:
            query = query.where(AssetRow.type == type)
        if status is not None:
            query = query.where(AssetRow.status == status)
        with self._sessions.read("reading assets") as session:
            return [_asset(r) for r in session.scalars(query)]
