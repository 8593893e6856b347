"""Alarm-load reports for the safety committee (``/api/v1/reports/alarm-load``), as JSON and one CSV per table.

Roles: ``charge_nurse`` and ``nurse`` (the units they are assigned to now: the alarm load of their own
ward is their feedback), ``auditor`` (every unit; the committee's reviewer). Reports hold beds, rules,
counts, timings and the staff ids of limit changes, never patient names. Every report read is audited.
"""

# No `from __future__ import annotations` here: FastAPI reads the Depends(...) of local names in
# parameter annotations, which only works when annotations are evaluated where the route is defined.
import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from api import alarm_load, schemas
from api.access import Access, not_found
from api.security import Principal
from devices.clock import now_ms
from devices.site import Site
from state.errors import StateError

MAX_DAYS = 92
MAX_CHANGES = 100_000
Table = Literal["by_bed_day", "time_to_acknowledge", "nuisance", "top_beds", "top_rules", "limit_changes"]


def _ms(value: datetime) -> int:
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp() * 1000)


def reports_router(site: Site, access: Access) -> APIRouter:
    """The alarm-load report routes over the relational state of ``access``."""
    router = APIRouter(prefix="/api/v1/reports", tags=["reports"])
    readers = Depends(access.allow("nurse", "charge_nurse", "auditor"))
    state = access.state

    async def report(principal: Principal, unit: str | None, start: datetime | None, end: datetime | None,
                     tz: str, within_s: float, top: int, table: str) -> dict[str, Any]:
        if unit is not None and (unit not in {u.id for u in site.units} or not principal.sees_unit(unit)):
            raise not_found(f"unit {unit!r}")
        units = {unit} if unit is not None else access.units(principal)
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise HTTPException(422, f"timezone {tz!r}: expected an IANA name such as Europe/London") from None
        end_ms = _ms(end) if end is not None else now_ms()
        start_ms = _ms(start) if start is not None else end_ms - 7 * alarm_load.DAY_MS
        if not 0 < end_ms - start_ms <= MAX_DAYS * alarm_load.DAY_MS:
            raise HTTPException(422, f"the period must be positive and at most {MAX_DAYS} days")
        beds = {bed: u.id for u in site.units if u.id in units for bed in u.beds}
        try:
            episodes = await asyncio.to_thread(state.alerts.episodes, start_ms, end_ms, units)
            changes = [r for u in sorted(units) for r in await asyncio.to_thread(
                state.audit.records, unit=u, actions=alarm_load.LIMIT_ACTIONS, since=start_ms, until=end_ms,
                limit=MAX_CHANGES)]
        except StateError as exc:
            raise HTTPException(503, f"state unavailable: {exc}") from exc
        changes.sort(key=lambda r: r.n)
        await access.audited(principal, object="report alarm-load", action="report.read", unit=unit,
                             detail={"units": sorted(units), "start": start_ms, "end": end_ms, "table": table})
        return alarm_load.alarm_load(episodes, changes, beds=beds, start=start_ms, end=end_ms, tz=zone,
                                     within_s=within_s, top=top)

    Start = Annotated[datetime | None, Query(description="ISO 8601 or epoch; default 7 days before end")]
    End = Annotated[datetime | None, Query(description="ISO 8601 or epoch; default now")]
    Zone = Annotated[str, Query(description="IANA time zone of the calendar days")]
    Within = Annotated[float, Query(gt=0, le=3600, description="an alert whose condition ended this soon is "
                                                               "counted as a nuisance")]
    Top = Annotated[int, Query(ge=1, le=100)]

    @router.get("/alarm-load")
    async def alarm_load_json(principal: Annotated[Principal, readers], unit: str | None = None,
                              start: Start = None, end: End = None, tz: Zone = "UTC", within_s: Within = 30.0,
                              top: Top = 10) -> dict[str, Any]:
        """Alarms per bed per day by rule and priority, time to acknowledge, nuisance share, top beds and rules,
        limit changes: of one unit, or every unit the caller may see."""
        return await report(principal, unit, start, end, tz, within_s, top, "all")

    @router.get("/alarm-load/{table}.csv", responses=schemas.CSV)
    async def alarm_load_csv(table: Table, principal: Annotated[Principal, readers], unit: str | None = None,
                             start: Start = None, end: End = None, tz: Zone = "UTC", within_s: Within = 30.0,
                             top: Top = 10) -> Response:
        """One table of the report as CSV (by_bed_day, time_to_acknowledge, nuisance, top_beds, top_rules,
        limit_changes)."""
        body = await report(principal, unit, start, end, tz, within_s, top, table)
        return Response(alarm_load.to_csv(body, table), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="wardlink-alarm-load-{table}.csv"'})

    return router
