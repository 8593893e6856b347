"""Fleet upkeep routes under ``/api/v1/fleet``: maintenance plans and due dates, work orders, completion,
locating what is due, firmware across the fleet, and recalls matched to it (built by :mod:`api.fleet_routes`).

Overdue maintenance is computed and listed (``GET /maintenance/due?overdue=true``, the
``wardlink_fleet_maintenance_overdue`` gauge), not published as a bus alert: a due date passes without any
event to react to, and the biomedical engineers' worklist is where it is handled.
"""

# No `from __future__ import annotations` here: FastAPI reads the Depends(...) of local names in the
# route signatures at definition time, which string annotations would hide.

import csv
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, TypeVar

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from api import fleet_figures as figures
from api.access import Access, not_found
from api.fleet_data import FleetData, device_out
from api.security import Principal
from devices.clock import now_ms
from devices.site import Site
from state.db import State
from state.fleet import OrderError, Recall, WorkOrder
from state.registry import Device

DAY_MS = figures.DAY_MS
T = TypeVar("T")
MAX_RECALLS = 10_000
RECALL_FIELDS = ("id", "manufacturer", "model", "product_code", "udi", "firmware_min", "firmware_max", "title",
                 "issued_at")


class PlanIn(BaseModel):
    """A model's maintenance schedule."""

    interval_days: int = Field(ge=1, le=3650)
    manufacturer: str = Field("", max_length=200)
    manufacturer_schedule: bool = True


class ScheduleIn(BaseModel):
    """Open planned work orders for everything due within ``horizon_days``."""

    horizon_days: int = Field(30, ge=0, le=366)


class OrderIn(BaseModel):
    """A work order to open."""

    device: str = Field(min_length=1, max_length=64)
    kind: Literal["pm", "calibration", "repair", "firmware", "recall"]
    title: str = Field("", max_length=200)
    due_at: int | None = None


class AssignIn(BaseModel):
    """Who takes a work order."""

    to: str = Field(min_length=1, max_length=64)


class CloseIn(BaseModel):
    """What was done: notes and parts used."""

    notes: str = Field("", max_length=10_000)
    parts: list[str] = Field(default_factory=list, max_length=200)


class RecallIn(BaseModel):
    """One recall (any of manufacturer, model, product code, UDI; an optional firmware range)."""

    id: str = Field(min_length=1, max_length=64)
    manufacturer: str = Field("", max_length=200)
    model: str = Field("", max_length=200)
    product_code: str = Field("", max_length=200)
    udi: str = Field("", max_length=200)
    firmware_min: str = Field("", max_length=100)
    firmware_max: str = Field("", max_length=100)
    title: str = Field("", max_length=500)
    issued_at: int | None = None


class RecallsIn(BaseModel):
    """A recall file: a JSON list under ``recalls``, or CSV text under ``csv`` (columns as RecallIn)."""

    recalls: list[RecallIn] = Field(default_factory=list, max_length=MAX_RECALLS)
    csv: str = Field("", max_length=5_000_000)


def _order_out(order: WorkOrder) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(order)
    return out


def parse_recalls(body: RecallsIn) -> list[Recall]:
    """The recalls of a file (JSON or CSV); 422 naming the row for a bad one."""
    items = list(body.recalls)
    if body.csv:
        reader = csv.DictReader(io.StringIO(body.csv))
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            raise HTTPException(422, "recall CSV: the header must name at least the id column")
        for number, row in enumerate(reader, start=2):
            values: dict[str, Any] = {k: (v or "").strip() for k, v in row.items() if k in RECALL_FIELDS}
            issued = values.pop("issued_at", "")
            try:
                items.append(RecallIn(**values, issued_at=int(issued) if issued else None))
            except ValueError as exc:
                raise HTTPException(422, f"recall CSV row {number}: {exc}") from None
    if not items:
        raise HTTPException(422, "no recalls: send a list under 'recalls' or CSV text under 'csv'")
    for item in items:
        if not (item.manufacturer or item.model or item.product_code or item.udi):
            raise HTTPException(422, f"recall {item.id}: name a manufacturer and model, a product code or a UDI")
    return [Recall(**item.model_dump()) for item in items]


class Runner(Protocol):
    """Runs a blocking call in a thread (503 when the state or store is down)."""

    def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Awaitable[T]:
        """Run ``fn``."""
        ...


@dataclass
class Upkeep:
    """The upkeep router and its reports (rows the fleet report routes serve as JSON and CSV)."""

    router: APIRouter
    report: Callable[[str, str | None, str | None], Awaitable[list[dict[str, Any]]]]


def upkeep_router(site: Site, state: State, data: FleetData, access: Access, *,
                  run: Runner, period: Callable[[str | None, str | None], tuple[int, int]],
                  scoped_device: Callable[[Principal, str], Awaitable[Device]],
                  synced_devices: Callable[[], list[Device]]) -> Upkeep:
    """Maintenance, work orders, firmware and recalls over the fleet ``data``."""
    router = APIRouter()
    biomed = Depends(access.allow("biomed"))
    reporters = Depends(access.allow("biomed", "auditor"))
    locators = Depends(access.allow("biomed", "facilities"))
    fleet = state.fleet

    # --- maintenance -----------------------------------------------------------------------------------------
    @router.get("/maintenance/plans")
    async def plans(principal: Annotated[Principal, reporters]) -> list[dict[str, Any]]:
        """Planned-maintenance and calibration schedules per model."""
        return [msgspec.to_builtins(p) for p in await run(fleet.plans)]

    @router.put("/maintenance/plans/{model}/{kind}")
    async def set_plan(model: str, kind: Literal["pm", "calibration"], body: PlanIn,
                       principal: Annotated[Principal, biomed]) -> dict[str, Any]:
        """Set a model's schedule: ``pm`` (planned maintenance) or ``calibration`` every ``interval_days`` (audited)."""
        plan = await run(fleet.set_plan, model, kind, interval_days=body.interval_days, now=now_ms(),
                         manufacturer=body.manufacturer, manufacturer_schedule=body.manufacturer_schedule)
        await access.audited(principal, object=f"maintenance plan {model}/{kind}", action="fleet.plan.set",
                             unit=None, detail={"interval_days": body.interval_days})
        out: dict[str, Any] = msgspec.to_builtins(plan)
        return out

    def due_rows(within_days: int | None, overdue: bool | None) -> list[dict[str, Any]]:
        now = now_ms()
        devices = {d.id: d for d in synced_devices()}
        items = figures.due_items(devices.values(), fleet.plans(), fleet.last_completed())
        located = data.locations()
        open_orders = {(o.device, o.kind): o.id for o in fleet.orders(status="not_closed")}
        rows = []
        for item in items:
            if within_days is not None and item.due_at >= now + within_days * DAY_MS:
                continue
            if overdue is not None and item.overdue(now) != overdue:
                continue
            device = devices[item.device]
            rows.append({"device": item.device, "unit": device.unit, "bed": device.bed, "model": item.model,
                         "kind": item.kind, "interval_days": item.interval_days, "last_done": item.last_done,
                         "due_at": item.due_at, "overdue": item.overdue(now),
                         "manufacturer_schedule": item.manufacturer_schedule,
                         "high_risk": device_out(device, None)["high_risk"],
                         "work_order": open_orders.get((item.device, item.kind)),
                         "location": device_out(device, located.get(item.device))["location"]})
        return rows

    @router.get("/maintenance/due")
    async def due(principal: Annotated[Principal, reporters],
                  within_days: Annotated[int | None, Query(ge=0, le=3650)] = None,
                  overdue: bool | None = None) -> list[dict[str, Any]]:
        """Next planned maintenance and calibration per device, soonest first (``overdue=true``: past due)."""
        return await run(due_rows, within_days, overdue)

    @router.get("/locate/due")
    async def locate_due(principal: Annotated[Principal, locators],
                         days: Annotated[int, Query(ge=0, le=366)] = 7) -> list[dict[str, Any]]:
        """Devices due for maintenance or calibration within ``days`` (this week by default), with where they are."""
        return await run(due_rows, days, None)

    def schedule(horizon_days: int, by: str) -> list[WorkOrder]:
        now = now_ms()
        items = figures.due_items(synced_devices(), fleet.plans(), fleet.last_completed())
        open_orders = {(o.device, o.kind) for o in fleet.orders(status="not_closed")}
        opened = []
        for item in items:
            if item.due_at < now + horizon_days * DAY_MS and (item.device, item.kind) not in open_orders:
                opened.append(fleet.open_order(item.device, item.kind, by=by, now=now, due_at=item.due_at,
                                               planned=True, title=f"planned {item.kind} ({item.interval_days} d)"))
        return opened

    @router.post("/maintenance/schedule")
    async def open_planned(body: ScheduleIn, principal: Annotated[Principal, biomed]) -> list[dict[str, Any]]:
        """Open a planned work order for every item due within the horizon that has none open (audited)."""
        opened = await run(schedule, body.horizon_days, principal.subject)
        await access.audited(principal, object="maintenance schedule", action="fleet.schedule", unit=None,
                             detail={"opened": len(opened), "horizon_days": body.horizon_days})
        return [_order_out(o) for o in opened]

    def completion_rows(start: int, end: int) -> list[dict[str, Any]]:
        orders = fleet.orders(planned=True, due_from=start, due_to=end)
        return [{"kind": c.kind, "start": start, "end": end, "due": c.due, "completed": c.completed,
                 "on_time": c.on_time, "rate": c.rate, "not_done": c.open}
                for c in figures.completion(orders, start, end)]

    @router.get("/maintenance/completion")
    async def completion(principal: Annotated[Principal, reporters], start: str | None = None,
                         end: str | None = None) -> list[dict[str, Any]]:
        """Planned work orders due in the period: how many were completed (by its end) and on time; the rate
        must reach 1.0 for manufacturer-schedule items."""
        return await run(completion_rows, *period(start, end))

    # --- work orders -----------------------------------------------------------------------------------------
    @router.get("/work-orders")
    async def orders(principal: Annotated[Principal, reporters],
                     status: Literal["open", "assigned", "closed", "not_closed"] | None = None,
                     device: str | None = None) -> list[dict[str, Any]]:
        """Work orders by id."""
        return [_order_out(o) for o in await run(fleet.orders, status=status, device=device)]

    @router.post("/work-orders", status_code=201)
    async def open_order(body: OrderIn, principal: Annotated[Principal, biomed]) -> dict[str, Any]:
        """Open a work order on a device (audited)."""
        device = await scoped_device(principal, body.device)
        order = await run(fleet.open_order, body.device, body.kind, by=principal.subject, now=now_ms(),
                          title=body.title, due_at=body.due_at)
        await access.audited(principal, object=f"work order {order.id}", action="fleet.order.open", unit=device.unit,
                             detail={"device": body.device, "kind": body.kind})
        return _order_out(order)

    async def change(order_id: int, principal: Principal, action: str, fn: Callable[..., WorkOrder],
                     **kwargs: Any) -> dict[str, Any]:
        try:
            order = await run(fn, order_id, now=now_ms(), **kwargs)
        except KeyError:
            raise not_found(f"work order {order_id}") from None
        except OrderError as exc:
            raise HTTPException(409, str(exc)) from None
        device = await run(state.registry.device, order.device)
        await access.audited(principal, object=f"work order {order_id}", action=action,
                             unit=device.unit if device else None, detail={k: v for k, v in kwargs.items()
                                                                           if k != "notes"})
        return _order_out(order)

    @router.post("/work-orders/{order_id}/assign")
    async def assign(order_id: int, body: AssignIn, principal: Annotated[Principal, biomed]) -> dict[str, Any]:
        """Assign a work order to an engineer (409 once closed; audited)."""
        return await change(order_id, principal, "fleet.order.assign", fleet.assign, to=body.to)

    @router.post("/work-orders/{order_id}/close")
    async def close(order_id: int, body: CloseIn, principal: Annotated[Principal, biomed]) -> dict[str, Any]:
        """Close a work order with notes and parts used (409 if already closed; audited)."""
        return await change(order_id, principal, "fleet.order.close", fleet.close, by=principal.subject,
                            notes=body.notes, parts=body.parts)

    # --- firmware and recalls --------------------------------------------------------------------------------
    def firmware_rows() -> list[dict[str, Any]]:
        return [{"manufacturer": m.manufacturer, "model": m.model, "devices": m.devices, "versions": m.versions,
                 "latest": m.latest, "drift": m.drift, "behind": m.behind, "unknown": m.unknown}
                for m in figures.firmware_drift(synced_devices())]

    @router.get("/firmware")
    async def firmware(principal: Annotated[Principal, reporters]) -> list[dict[str, Any]]:
        """Firmware versions per model across the fleet, the newest, and the devices behind it."""
        return await run(firmware_rows)

    def recall_rows(only: str | None = None) -> list[dict[str, Any]]:
        devices = {d.id: d for d in synced_devices()}
        located = data.locations()
        rows = []
        for recall in fleet.recalls():
            if only is not None and recall.id != only:
                continue
            affected = [{"device": m.device, "reason": m.reason, "firmware_unknown": m.firmware_unknown,
                         "unit": devices[m.device].unit, "bed": devices[m.device].bed,
                         "firmware": devices[m.device].firmware,
                         "location": device_out(devices[m.device], located.get(m.device))["location"]}
                        for m in figures.recall_matches(recall, devices.values())]
            rows.append({**msgspec.to_builtins(recall), "affected": affected})
        return rows

    @router.post("/recalls/import")
    async def import_recalls(body: RecallsIn, principal: Annotated[Principal, biomed]) -> dict[str, Any]:
        """Import recall records (JSON list or CSV); a re-import replaces them by id (audited)."""
        recalls = parse_recalls(body)
        saved = await run(fleet.save_recalls, recalls, now=now_ms())
        rows = await run(recall_rows)
        affected = sorted({a["device"] for r in rows if r["id"] in {x.id for x in recalls} for a in r["affected"]})
        await access.audited(principal, object="recalls", action="fleet.recalls.import", unit=None,
                             detail={"recalls": saved, "affected": len(affected)})
        return {"imported": saved, "affected": affected}

    @router.get("/recalls")
    async def recalls(principal: Annotated[Principal, reporters]) -> list[dict[str, Any]]:
        """Every recall with the devices it affects and where they are."""
        return await run(recall_rows)

    @router.get("/recalls/{recall_id}")
    async def recall(recall_id: str, principal: Annotated[Principal, reporters]) -> dict[str, Any]:
        """One recall with its affected devices, located."""
        rows = await run(recall_rows, recall_id)
        if not rows:
            raise not_found(f"recall {recall_id!r}")
        out: dict[str, Any] = rows[0]
        return out

    async def report(name: str, start: str | None, end: str | None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]]
        if name == "due":
            rows = await run(due_rows, None, None)
        elif name == "work_orders":
            rows = [_order_out(o) for o in await run(fleet.orders)]
        elif name == "completion":
            rows = await run(completion_rows, *period(start, end))
        elif name == "firmware":
            rows = await run(firmware_rows)
        elif name == "recalls":
            rows = [{**{k: v for k, v in r.items() if k != "affected"}, "device": a["device"], "reason": a["reason"],
                     "unit": a["unit"], "room": (a["location"] or {}).get("room")}
                    for r in await run(recall_rows) for a in r["affected"]]
        else:
            raise not_found(f"report {name!r}")
        return rows

    del site  # the site's units are read through the registry rows
    return Upkeep(router, report)
