"""Medical-waste records: a bag's custody chain, weights per department and category, the handover register,
the weight reconciliation of a day's bags, and the waste store now (its temperature loggers' newest readings,
the bags it holds and their age, its open alerts).

Facilities see the whole site; nurses and charge nurses only their units' bags (another unit's bag
answers 404 exactly like a missing one); the auditor reads the register. Nothing here writes: custody
records are append-only and come only from the scan points.
"""

# No `from __future__ import annotations` here: FastAPI reads the Depends(...) of local names in
# the route signatures, which string annotations would hide.

import asyncio
import csv
import io
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from api import schemas
from api.access import Access, not_found
from api.security import Principal
from devices.clock import now_ms
from devices.site import Site
from facilities.sitemap import SiteMap
from facilities.waste import HOUR_MS, WasteSettings, retained_until, storage_loggers
from state.db import State
from state.waste import Bag, Handover, RegisterLine
from storage.base import StoreError, TimeSeriesStore

REGISTER_FIELDS = ("time", "department", "category", "bag", "weight_kg", "from", "to", "handed_over_by",
                   "received_by", "manifest", "weight_check", "sealed_at", "sealed_weight_kg", "scanner")
"""The handover register's columns: source, category, weight, time, destination and both signatures."""
MAX_DAYS = 400
STORE_ALERTS = ("waste.storage_temperature", "waste.storage_overdue")
"""The open alerts the waste store's view shows."""
NEAR_LIMIT = 0.75
"""A bag held for this share of the storage limit is shown as near it (36 h of 48 h)."""
RECONCILED_DAYS = 31
"""A reconciliation reads every bag of its window with its chain: at most a month of them."""
RECONCILED_ROWS = 200
"""At most this many bags in a reconciliation answer by default (the flagged ones first)."""


def _local(ms: int, zone: timezone) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(zone)


def weighings(sealed: Bag, chain: list[Handover], tolerance: float) -> list[tuple[Handover, float, str]]:
    """Each step of a chain with its weight's difference from the step before (a fraction) and ``ok`` or
    ``flagged`` (beyond ``tolerance``)."""
    out, before = [], sealed.weight_g
    for step in chain:
        difference = (step.weight_g - before) / before if before > 0 else 0.0
        out.append((step, difference, "flagged" if abs(difference) > tolerance else "ok"))
        before = step.weight_g
    return out


def waste_router(site: Site, state: State, access: Access, settings: WasteSettings | None = None, *,
                 store: TimeSeriesStore | None = None, site_map: SiteMap | None = None) -> APIRouter:
    """Waste routes: chain lookup, weight reports, the register (JSON and CSV) and the store's state.

    ``store`` holds the storage loggers' readings (ingest writes them); ``site_map`` names the loggers in
    the waste-storage room, as it does for the facilities service's waste tracker.
    """
    router = APIRouter(prefix="/api/v1/waste", tags=["waste"])
    limits = settings or WasteSettings()
    loggers = sorted(storage_loggers(site, limits, site_map))
    zone = timezone(timedelta(minutes=limits.utc_offset_min))
    readers = Depends(access.allow("facilities", "charge_nurse", "nurse", "auditor"))
    register_readers = Depends(access.allow("facilities", "auditor"))

    def window(start: date | None, end: date | None) -> tuple[int, int, date, date]:
        """``[start, end]`` local days as ms; the last 31 days by default."""
        today = _local(now_ms(), zone).date()
        end = end or today
        start = start or end - timedelta(days=30)
        if start > end or (end - start).days > MAX_DAYS:
            raise HTTPException(422, f"start..end: at most {MAX_DAYS} days, start not after end")
        since = int(datetime(start.year, start.month, start.day, tzinfo=zone).timestamp() * 1000)
        until = int((datetime(end.year, end.month, end.day, tzinfo=zone) + timedelta(days=1)).timestamp() * 1000)
        return since, until, start, end

    def check(line: RegisterLine) -> str:
        """``flagged`` when a receipt weighs beyond the tolerance of what was handed over."""
        if line.previous_weight_g <= 0:
            return ""
        difference = abs(line.weight_g - line.previous_weight_g) / line.previous_weight_g
        return "flagged" if difference > limits.weight_tolerance else "ok"

    def register_rows(lines: list[RegisterLine]) -> list[dict[str, Any]]:
        return [{"time": _local(line.at, zone).isoformat(timespec="seconds"), "department": line.unit or "",
                 "category": line.category, "bag": line.bag, "weight_kg": round(line.weight_g / 1000, 3),
                 "from": line.from_point, "to": line.to_point, "handed_over_by": line.given_by,
                 "received_by": line.received_by, "manifest": line.manifest or "", "weight_check": check(line),
                 "sealed_at": _local(line.sealed_at, zone).isoformat(timespec="seconds"),
                 "sealed_weight_kg": round(line.sealed_weight_g / 1000, 3), "scanner": line.device or ""}
                for line in lines]

    @router.get("/bags/{bag}")
    async def bag_chain(principal: Annotated[Principal, readers], bag: str) -> dict[str, Any]:
        """A bag's custody chain: sealed (who, when, weight), then every handover with both signatures."""
        sealed = await asyncio.to_thread(state.waste.bag, bag)
        if sealed is None:
            raise not_found(f"bag {bag!r}")
        access.check_unit(principal, sealed.unit, f"bag {bag!r}")
        chain = await asyncio.to_thread(state.waste.chain, bag)
        steps, giver = [], sealed.sealed_by
        for step, difference, verdict in weighings(sealed, chain, limits.weight_tolerance):
            steps.append({"step": step.step, "from": step.from_point, "to": step.to_point, "handed_over_by": giver,
                          "received_by": step.handler, "at": step.at, "weight_g": step.weight_g,
                          "difference_pct": round(difference * 100, 2), "manifest": step.manifest,
                          "scanner": step.device, "weight_check": verdict})
            giver = step.handler
        return {"bag": sealed.id, "category": sealed.category, "department": sealed.unit,
                "sealed": {"by": sealed.sealed_by, "at": sealed.sealed_at, "weight_g": sealed.weight_g,
                           "scanner": sealed.device},
                "steps": steps, "at": chain[-1].to_point if chain else "ward", "complete": len(chain) == 3,
                "retained_until": retained_until(sealed.sealed_at, limits)}

    @router.get("/reports/weights")
    async def weights(principal: Annotated[Principal, readers], period: Literal["day", "month"] = "day",
                      start: date | None = None, end: date | None = None, unit: str | None = None
                      ) -> dict[str, Any]:
        """Bags and kilograms sealed per period (local days or months), department and category."""
        since, until, first, last = window(start, end)
        units = access.units(principal)
        if unit is not None:
            access.check_unit(principal, unit, f"unit {unit!r}")
            units = {unit}
        scope = None if principal.site_wide and unit is None else units
        bags = await asyncio.to_thread(state.waste.sealed, since, until, units=scope)
        totals: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0, 0.0])
        for sealed in bags:
            moment = _local(sealed.sealed_at, zone)
            key = (moment.strftime("%Y-%m-%d" if period == "day" else "%Y-%m"), sealed.unit or "", sealed.category)
            totals[key][0] += 1
            totals[key][1] += sealed.weight_g
        rows = [{"period": p, "department": u, "category": c, "bags": int(n), "weight_kg": round(g / 1000, 3)}
                for (p, u, c), (n, g) in sorted(totals.items())]
        return {"period": period, "start": first.isoformat(), "end": last.isoformat(), "rows": rows,
                "total_kg": round(sum(b.weight_g for b in bags) / 1000, 3)}

    def reconciled(sealed: Bag, chain: list[Handover]) -> dict[str, Any]:
        """A bag's weight at every custody point it reached, each compared with the point before."""
        points = [{"point": "ward", "weight_g": sealed.weight_g, "at": sealed.sealed_at, "difference_pct": None,
                   "weight_check": ""}]
        points += [{"point": step.to_point, "weight_g": step.weight_g, "at": step.at,
                    "difference_pct": round(difference * 100, 2), "weight_check": verdict}
                   for step, difference, verdict in weighings(sealed, chain, limits.weight_tolerance)]
        return {"bag": sealed.id, "category": sealed.category, "department": sealed.unit,
                "sealed_at": sealed.sealed_at, "at": points[-1]["point"], "points": points,
                "flagged": any(p["weight_check"] == "flagged" for p in points)}

    @router.get("/reconciliation")
    async def reconciliation(principal: Annotated[Principal, register_readers], start: date | None = None,
                             end: date | None = None, limit: Annotated[int, Query(ge=1, le=5000)] = RECONCILED_ROWS
                             ) -> dict[str, Any]:
        """The weights of every bag sealed or handed over between ``start`` and ``end`` (local days, today by
        default) at each custody point (ward, collector, storage, disposer), each step compared with the one
        before: ``flagged`` beyond the tolerance. The flagged bags come first, then the newest sealed."""
        del principal  # site-wide: facilities and the auditor
        since, until, first, last = window(start or end or _local(now_ms(), zone).date(), end)
        if (last - first).days >= RECONCILED_DAYS:
            raise HTTPException(422, f"start..end: at most {RECONCILED_DAYS} days")
        journeys = await asyncio.to_thread(state.waste.journeys, since=since, until=until)
        rows = sorted((reconciled(sealed, chain) for sealed, chain in journeys),
                      key=lambda r: (not r["flagged"], -r["sealed_at"], r["bag"]))
        return {"start": first.isoformat(), "end": last.isoformat(),
                "tolerance_pct": round(limits.weight_tolerance * 100, 2), "total": len(rows),
                "flagged": sum(r["flagged"] for r in rows), "rows": rows[:limit]}

    @router.get("/register")
    async def register(principal: Annotated[Principal, register_readers], start: date | None = None,
                       end: date | None = None) -> list[dict[str, Any]]:
        """Every handover between ``start`` and ``end`` (local days, inclusive), in time order."""
        since, until, *_ = window(start, end)
        lines = await asyncio.to_thread(state.waste.register, since, until)
        await access.audited(principal, object="waste.register", action="waste.register.read", unit=None,
                             detail={"since": since, "until": until, "count": len(lines)})
        return register_rows(lines)

    @router.get("/register.csv", responses=schemas.CSV)
    async def register_csv(principal: Annotated[Principal, register_readers], start: date | None = None,
                           end: date | None = None) -> Response:
        """The handover register as CSV (UTF-8 with BOM so spreadsheet tools read the Chinese names)."""
        since, until, first, last = window(start, end)
        lines = await asyncio.to_thread(state.waste.register, since, until)
        await access.audited(principal, object="waste.register", action="waste.register.export", unit=None,
                             detail={"since": since, "until": until, "count": len(lines)})
        out = io.StringIO()
        out.write("\ufeff")
        writer = csv.DictWriter(out, fieldnames=REGISTER_FIELDS)
        writer.writeheader()
        writer.writerows(register_rows(lines))
        name = f"waste-register-{site.id}-{first.isoformat()}-{last.isoformat()}.csv"
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @router.get("/storage")
    async def storage(principal: Annotated[Principal, register_readers]) -> dict[str, Any]:
        """The waste store now: each logger's probes (newest Cel reading), the bags held (oldest first: since when,
        age, ``limit`` ok / near / over the storage limit, the intake's weight check), its open alerts."""
        del principal  # site-wide: facilities and the auditor

        def read() -> dict[str, Any]:
            rows = []
            for device in loggers:
                probes = [p for p in store.latest(device=device) if p.unit == "Cel"] if store is not None else []
                warmest = max((p.value for p in probes), default=None)
                rows.append({"device": device, "temperature_c": warmest,
                             "ts": max((p.ts for p in probes), default=None),
                             "above_limit": warmest is not None and warmest > limits.storage_max_c,
                             "probes": [{"metric": p.metric, "value": p.value, "ts": p.ts} for p in probes]})
            now = now_ms()
            bags = []
            for sealed, chain in state.waste.journeys(held_at="storage"):
                intake, difference, verdict = weighings(sealed, chain, limits.weight_tolerance)[-1]
                age_h = (now - intake.at) / HOUR_MS
                bags.append({"bag": sealed.id, "category": sealed.category, "department": sealed.unit,
                             "weight_g": intake.weight_g, "collected_weight_g": chain[-2].weight_g,  # step 2 or later
                             "difference_pct": round(difference * 100, 2),
                             "weight_check": verdict, "since": intake.at, "age_h": round(age_h, 2),
                             "due_at": intake.at + round(limits.storage_max_h * HOUR_MS),
                             "limit": "over" if age_h > limits.storage_max_h
                             else "near" if age_h >= NEAR_LIMIT * limits.storage_max_h else "ok"})
            bags.sort(key=lambda b: (b["since"], b["bag"]))
            alerts = [{"id": a.id, "type": a.type, "source": a.source, "priority": a.priority, "state": a.state,
                       "onset": a.onset, "value": a.value, "message": a.message}
                      for a in state.alerts.open() if a.type in STORE_ALERTS]
            return {"limit_c": limits.storage_max_c, "max_hours": limits.storage_max_h,
                    "near_hours": round(NEAR_LIMIT * limits.storage_max_h, 2), "now": now, "loggers": rows,
                    "bags_held": len(bags), "oldest_since": bags[0]["since"] if bags else None, "bags": bags,
                    "alerts": alerts}

        try:
            return await asyncio.to_thread(read)
        except StoreError as exc:
            raise HTTPException(503, f"store unavailable: {exc}") from exc

    return router
