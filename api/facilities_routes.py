"""Facilities API: where an asset is (now, at a time, last seen), assets in a room/zone/unit, the nearest
available asset of a type, par-level shortfalls, utilisation, and the status and par levels staff set.

Roles: facilities staff and biomedical engineers see assets site-wide; nurses and charge nurses see
the assets of their units only (an asset of another unit answers 404 exactly like a missing one).
Nothing here touches patient data. Distances come from the site map's walking routes
(:class:`facilities.wayfinding.Wayfinder`) when the map holds the site's rooms, else from the rooms'
corridor order (:func:`facilities.location.corridor_distance`).
"""

# No `from __future__ import annotations` here: FastAPI reads the Depends(...) of local names in the
# route signatures at definition time, which string annotations would hide.

import asyncio
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from api.access import Access, not_found
from api.security import Principal
from devices.clock import now_ms
from devices.site import Site
from facilities.assets import shortfalls, utilisation
from facilities.history import placement_at
from facilities.location import corridor_distance
from facilities.sitemap import SiteMap, SiteMapError, load_site_map
from facilities.wayfinding import RouteError, Wayfinder
from state.assets import Asset, AssetStatus
from state.db import State
from storage.base import StoreError, TimeSeriesStore

SITE_WIDE = ("facilities", "biomed")
ALL = ("facilities", "biomed", "nurse", "charge_nurse")


class LocationOut(BaseModel):
    """Where an asset is (or was at ``at``): the location contract."""

    asset: str
    type: str
    unit: str | None
    status: str
    room: str | None
    zone: str | None = None
    floor: str | None = None
    confidence: float | None = None
    since: int | None = None
    last_seen: int | None = None
    source: str | None = None
    lost: bool = False
    at: int | None = None  # the time asked about, if any
    dwell_ms: int | None = None  # now - since (current location only)


class AssetOut(BaseModel):
    """An asset with its current location."""

    id: str
    tag: str
    type: str
    status: str
    unit: str | None
    device: str | None
    room: str | None
    zone: str | None
    floor: str | None
    last_seen: int | None
    lost: bool
    distance_m: float | None = None


class StatusIn(BaseModel):
    """A status set by staff (cleaned, sent to repair)."""

    status: Literal["clean", "in_use", "dirty", "in_repair"]


class ParIn(BaseModel):
    """The par level of a type on a unit (0 removes it)."""

    minimum: int = Field(ge=0, le=10_000)


def _asset_out(asset: Asset, distance: float | None = None) -> AssetOut:
    loc = asset.location
    return AssetOut(id=asset.id, tag=asset.tag, type=asset.type, status=asset.status, unit=asset.unit,
                    device=asset.device, room=loc.room if loc else None, zone=loc.zone if loc else None,
                    floor=loc.floor if loc else None, last_seen=loc.last_seen if loc else None,
                    lost=loc.lost if loc else False, distance_m=distance)


def default_distance(site: Site, site_map: SiteMap | None) -> Callable[[str], dict[str, float]]:
    """Metres from a room to every room: the site map's walking routes, else corridor order."""
    wayfinder = Wayfinder(site_map) if site_map is not None else None
    corridor = corridor_distance(site.rooms)
    rooms = [r.id for r in site.rooms]

    def from_room(room: str) -> dict[str, float]:
        if wayfinder is not None:
            try:
                return wayfinder.distances_from(room)
            except RouteError:
                return {}
        return {other: d for other in rooms if (d := corridor(room, other)) is not None}

    return from_room


def _site_map(site: Site) -> SiteMap | None:
    try:
        site_map = load_site_map()
    except SiteMapError:
        return None
    return site_map if {r.id for r in site.rooms} <= set(site_map.room_index) else None


def facilities_router(site: Site, state: State, store: TimeSeriesStore, access: Access, *,
                      site_map: SiteMap | None = None) -> APIRouter:
    """The facilities routes under ``/api/v1/facilities``.

    ``store`` holds the location history (the facilities service's placements: "where was it at T");
    ``site_map`` defaults to the shipped demo map when it holds every room of the site.
    """
    router = APIRouter(prefix="/api/v1/facilities", tags=["facilities"])
    distances = default_distance(site, site_map if site_map is not None else _site_map(site))
    rooms = site.room_index()
    unit_ids = {u.id for u in site.units}
    anyone = Annotated[Principal, Depends(access.allow(*ALL))]
    staff = Annotated[Principal, Depends(access.allow(*SITE_WIDE))]
    planners = Annotated[Principal, Depends(access.allow("facilities", "biomed", "charge_nurse"))]

    def scoped(principal: Principal) -> list[str] | None:
        """The units whose assets the caller may see (None: all)."""
        return None if principal.site_wide else sorted(access.units(principal))

    async def asset_for(principal: Principal, asset_id: str) -> Asset:
        asset = await asyncio.to_thread(state.assets.get, asset_id)
        if asset is None:
            raise not_found(f"asset {asset_id!r}")
        access.check_unit(principal, asset.unit, f"asset {asset_id!r}")
        return asset

    @router.get("/assets/{asset_id}/location")
    async def where(asset_id: str, principal: anyone,
                    at: Annotated[int | None, Query(description="epoch ms: where it was then")] = None) -> LocationOut:
        """Where the asset is now (or was at ``at``); ``room`` null when never seen (or not yet at ``at``)."""
        asset = await asset_for(principal, asset_id)
        base = LocationOut(asset=asset.id, type=asset.type, unit=asset.unit, status=asset.status, room=None, at=at)
        if at is not None:
            try:
                line = await asyncio.to_thread(placement_at, store, asset_id, at)
            except StoreError as exc:
                raise HTTPException(503, f"store unavailable: {exc}") from exc
            if line is None or line.event == "left":
                return base
            return base.model_copy(update={"room": line.room, "zone": line.zone, "floor": line.floor,
                                           "confidence": line.confidence, "since": line.ts, "source": line.source,
                                           "lost": line.event == "lost"})
        loc = asset.location
        if loc is None:
            return base
        return base.model_copy(update={"room": loc.room, "zone": loc.zone, "floor": loc.floor,
                                       "confidence": loc.confidence, "since": loc.since, "last_seen": loc.last_seen,
                                       "source": loc.source, "lost": loc.lost,
                                       "dwell_ms": max(0, now_ms() - loc.since)})

    @router.get("/assets")
    async def assets(principal: anyone, room: str | None = None, zone: str | None = None, unit: str | None = None,
                     type: str | None = None, status: AssetStatus | None = None) -> list[AssetOut]:
        """Assets filtered by current room or zone, owning unit, type and status (nurses: their units' only)."""
        units = scoped(principal)
        if unit is not None:
            if units is not None and unit not in units:
                raise not_found(f"unit {unit!r}")
            units = [unit]
        found = await asyncio.to_thread(state.assets.list, room=room, zone=zone, type=type, status=status,
                                        units=units)
        return [_asset_out(a) for a in found]

    @router.get("/assets/nearest")
    async def nearest(principal: anyone, type: str, room: Annotated[str, Query(alias="from")],
                      limit: Annotated[int, Query(ge=1, le=50)] = 5) -> list[AssetOut]:
        """Clean, located, not lost assets of ``type`` nearest to a room by walking distance, nearest first."""
        if room not in rooms:
            raise not_found(f"room {room!r}")
        found = await asyncio.to_thread(state.assets.list, type=type, status="clean", units=scoped(principal))
        metres = await asyncio.to_thread(distances, room)
        ranked = sorted(((metres[a.location.room], a) for a in found
                         if a.location is not None and not a.location.lost and a.location.room in metres),
                        key=lambda pair: (pair[0], pair[1].id))
        return [_asset_out(a, d) for d, a in ranked[:limit]]

    @router.get("/par")
    async def par(principal: anyone, unit: str | None = None) -> list[dict[str, str | int]]:
        """Par-level shortfalls per unit and type (nurses: their units)."""
        units = scoped(principal)
        if unit is not None and (unit not in unit_ids or (units is not None and unit not in units)):
            raise not_found(f"unit {unit!r}")

        def read() -> list[dict[str, str | int]]:
            levels = [p for p in state.assets.par_levels(unit) if units is None or p.unit in units]
            room_units = {r.id: r.unit for r in site.rooms}
            return [{"unit": s.unit, "type": s.type, "minimum": s.minimum, "available": s.available,
                     "missing": s.missing} for s in shortfalls(state.assets.list(), levels, room_units)]

        return await asyncio.to_thread(read)

    @router.put("/par/{unit}/{type}")
    async def set_par(unit: str, type: str, body: ParIn, principal: staff) -> dict[str, str | int]:
        """Set a unit's par level for a type (facilities and biomedical engineering)."""
        if unit not in unit_ids:
            raise not_found(f"unit {unit!r}")
        level = await asyncio.to_thread(state.assets.set_par, unit, type, body.minimum, now=now_ms())
        await access.audited(principal, object=f"par:{unit}/{type}", action="par.set", unit=unit,
                             detail={"minimum": body.minimum})
        return {"unit": level.unit, "type": level.type, "minimum": level.minimum}

    @router.put("/assets/{asset_id}/status")
    async def set_status(asset_id: str, body: StatusIn, principal: staff) -> AssetOut:
        """Mark an asset clean, dirty, in use or in repair (facilities and biomedical engineering)."""
        await asset_for(principal, asset_id)
        updated = await asyncio.to_thread(state.assets.upsert, asset_id, now=now_ms(), status=body.status)
        await access.audited(principal, object=f"asset:{asset_id}", action="asset.status", unit=updated.unit,
                             detail={"status": body.status})
        return _asset_out(updated)

    @router.get("/utilisation")
    async def used(principal: planners, start: int, end: int, type: str | None = None,
                   unit: str | None = None) -> list[dict[str, str | int | float | None]]:
        """Share of ``[start, end)`` the assets of each type and owning unit were in use."""
        if end <= start:
            raise HTTPException(422, "end must be after start")
        units = scoped(principal)
        if unit is not None:
            if units is not None and unit not in units:
                raise not_found(f"unit {unit!r}")
            units = [unit]

        def read() -> list[dict[str, str | int | float | None]]:
            members = state.assets.list(type=type, units=units)
            ids = {a.id for a in members}
            lines = [e for e in state.assets.history(start=start, end=end, event="status", limit=1_000_000)
                     if e.asset in ids]
            before = {k: v for k, v in state.assets.status_before(start).items() if k in ids}
            return [{"type": u.type, "unit": u.unit, "assets": u.assets, "in_use_ms": u.in_use_ms,
                     "period_ms": u.period_ms, "utilisation": u.ratio}
                    for u in utilisation(members, lines, before, start, end)]

        return await asyncio.to_thread(read)

    return router
