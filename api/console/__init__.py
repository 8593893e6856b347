"""The web console: static HTML, ES modules and CSS (no build step) served from the API process at ``/console/``.

The page holds no data of its own: it signs in with ``POST /api/v1/auth/token``, keeps the bearer token
in ``sessionStorage`` (never in a URL) and calls the JSON API; live streams open with single-use tickets.
The only thing the console adds to the API is the floor plan (``/console/plan.json``: rooms and junctions
with their plan coordinates, no patient data) so the facilities page can draw a route; it asks for a token
like every other route.
"""

# No `from __future__ import annotations`: FastAPI reads the Depends(...) in parameter annotations.
import mimetypes
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from api.access import Access, not_found
from api.security import Principal
from facilities.sitemap import SiteMap

STATIC = "static"
HEADERS = {
    # Scripts and styles only from this origin, data only to it (and its WebSockets): a page that shows
    # patient data runs no third-party code and cannot be framed.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8"}


def static_files() -> dict[str, Traversable]:
    """Every file of the console by its path under ``/console/`` (read from the installed package)."""
    found: dict[str, Traversable] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif not entry.name.startswith("."):
                found[f"{prefix}{entry.name}"] = entry

    walk(resources.files(__package__).joinpath(STATIC), "")
    return found


def plan_of(site_map: SiteMap) -> dict[str, Any]:
    """Floors, rooms and junctions with plan coordinates (metres), enough to draw a route on a floor."""
    return {
        "name": site_map.name,
        "floors": [{"id": f.id, "name": f.name or f.id, "level": f.level} for f in site_map.floors],
        "rooms": [{"id": r.id, "floor": r.floor, "x": r.x, "y": r.y, "name": r.name or r.id, "kind": r.kind}
                  for r in site_map.rooms],
        "junctions": [{"id": j.id, "floor": j.floor, "x": j.x, "y": j.y} for j in site_map.junctions],
    }


def console_router(access: Access | None = None, site_map: SiteMap | None = None) -> APIRouter:
    """``/console/`` and its files; with ``access`` and ``site_map``, the signed-in floor plan as well."""
    router = APIRouter(include_in_schema=False)
    files = static_files()

    @router.get("/console")
    async def console_root() -> Response:
        return Response(status_code=307, headers={"Location": "/console/"})

    if access is not None and site_map is not None:
        plan = plan_of(site_map)
        movers = Depends(access.allow("nurse", "charge_nurse", "facilities", "biomed"))

        @router.get("/console/plan.json")
        async def floor_plan(principal: Annotated[Principal, movers]) -> dict[str, Any]:
            """The site's floor plan for drawing routes (signed in: it shows where restricted rooms are)."""
            return plan

    @router.get("/console/{path:path}")
    async def console_file(path: str) -> Response:
        """A file of the console; any other path is the page itself (the console routes by ``#`` fragments)."""
        entry = files.get(path or "index.html")
        if entry is None:
            raise not_found(f"console file {path!r}")
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        media = TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
        return Response(entry.read_bytes(), media_type=media, headers=HEADERS)

    return router
