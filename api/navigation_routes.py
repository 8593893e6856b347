"""Wayfinding: ``GET /api/v1/navigation/route?from=&to=&profile=`` over the site map (``/api/v1/navigation``)."""

# No `from __future__ import annotations` here: FastAPI reads the Depends(...) of local names in
# the route signatures, which string annotations would hide.

import asyncio
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Query

from api.access import Access
from api.security import Principal
from facilities.sitemap import SiteMap
from facilities.wayfinding import Profile, RouteError, Wayfinder
from state.db import State

MOVING_ROLES = ("nurse", "charge_nurse", "facilities", "biomed")
"""Everyone whose work takes them around the hospital."""


def navigation_router(site_map: SiteMap, state: State, access: Access) -> APIRouter:
    """Routes between rooms, beds and tagged assets (where they are now), for each profile."""
    router = APIRouter(prefix="/api/v1/navigation", tags=["navigation"])
    wayfinder = Wayfinder(site_map)
    moving = Depends(access.allow(*MOVING_ROLES))

    def place(name: str, field: str) -> tuple[str, dict[str, Any]]:
        """The map node of a room, bed or asset id, and what the caller asked for."""
        try:
            return wayfinder.place(name), {"kind": "bed" if name in site_map.bed_rooms else "room", "id": name}
        except RouteError:
            pass
        location = state.assets.location(name)
        if location is None:
            raise HTTPException(404, f"{field}: {name!r} is not a room, bed or located asset")
        if location.room not in site_map.room_index:
            raise HTTPException(404, f"{field}: asset {name!r} is in {location.room!r}, which the site map lacks")
        return location.room, {"kind": "asset", "id": name, "room": location.room, "since": location.since,
                               "last_seen": location.last_seen, "lost": location.lost}

    @router.get("/route")
    async def route(principal: Annotated[Principal, moving],
                    origin: Annotated[str, Query(alias="from", min_length=1, max_length=64)],
                    destination: Annotated[str, Query(alias="to", min_length=1, max_length=64)],
                    profile: Profile = "staff") -> dict[str, Any]:
        """The fastest route for ``profile`` (staff, visitor, wheelchair, bed_transport): length, time, floors,
        and steps to follow. ``from`` and ``to`` are room ids, bed ids or asset ids (routed to where it is now)."""
        start, start_info = await asyncio.to_thread(place, origin, "from")
        end, end_info = await asyncio.to_thread(place, destination, "to")
        try:
            found = await asyncio.to_thread(wayfinder.route, start, end, profile)
        except RouteError as exc:
            raise HTTPException(422, str(exc)) from None
        body: dict[str, Any] = msgspec.to_builtins(found)
        body.update({"from": start_info, "to": end_info})
        return body

    return router
