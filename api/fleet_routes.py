"""Fleet management for biomedical engineers under ``/api/v1/fleet``: the registry, health, uptime, locating
devices, utilisation and reports (maintenance, work orders, firmware and recalls: :mod:`api.fleet_upkeep`).

Roles (docs/fleet.md): ``biomed`` everything, site-wide; ``admin`` creates, updates, retires and imports
registry rows; ``nurse`` and ``charge_nurse`` read the devices of their units only (another unit's device
answers 404 like a missing one); ``facilities`` locates devices; ``auditor`` reads reports. Registry
changes are audited. Nothing here carries patient data.
"""

# No `from __future__ import annotations` here: FastAPI reads the Depends(...) of local names in the
# route signatures at definition time, which string annotations would hide.

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api import fleet_figures as figures
from api import schemas
from api.access import Access, not_found
from api.fleet_data import CSV_FIELDS, FleetData, RegistryCsvError, device_out, parse_registry_csv, to_csv
from api.fleet_recorder import FleetRecorder
from api.fleet_upkeep import upkeep_router
from api.security import Principal
from api.times import parse_time
from api.view import GaugeSample, LiveView
from devices.clock import now_ms
from devices.site import Site
from state.db import State
from state.errors import StateError
from state.registry import Device
from storage.base import StoreError, TimeSeriesStore

log = logging.getLogger(__name__)

DAY_MS = figures.DAY_MS
MAX_DAYS = 92
GAUGE_TTL_S = 30.0
T = TypeVar("T")
Report = Literal["devices", "health", "gateways", "uptime", "utilisation", "due", "work_orders", "completion",
                 "firmware", "recalls"]


class DeviceIn(BaseModel):
    """A device to register (id, driver and gateway required)."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    driver: str = Field(min_length=1, max_length=64)
    gateway: str = Field(min_length=1, max_length=64)
    unit: str | None = None
    bed: str | None = None
    manufacturer: str = Field("", max_length=200)
    model: str = Field("", max_length=200)
    serial_number: str = Field("", max_length=200)
    udi: str | None = Field(None, max_length=200)
    risk_class: str | None = Field(None, max_length=16)
    life_support: bool = False
    firmware: str = Field("", max_length=100)
    connection: dict[str, Any] = Field(default_factory=dict)


class DeviceChange(BaseModel):
    """Fields to change on a registered device (those not sent keep their value)."""

    driver: str | None = Field(None, min_length=1, max_length=64)
    gateway: str | None = Field(None, min_length=1, max_length=64)
    unit: str | None = None
    bed: str | None = None
    manufacturer: str | None = Field(None, max_length=200)
    model: str | None = Field(None, max_length=200)
    serial_number: str | None = Field(None, max_length=200)
    udi: str | None = Field(None, max_length=200)
    risk_class: str | None = Field(None, max_length=16)
    life_support: bool | None = None
    firmware: str | None = Field(None, max_length=100)
    connection: dict[str, Any] | None = None


class CsvIn(BaseModel):
    """A registry CSV (columns of ``GET /api/v1/fleet/devices.csv``; ``id`` required, others optional)."""

    csv: str = Field(max_length=5_000_000)


def period(start: str | None, end: str | None, default_days: int = 7) -> tuple[int, int]:
    """``[start, end)`` from query values: default the last ``default_days`` days, at most MAX_DAYS."""
    end_ms = parse_time(end, now_ms())
    start_ms = parse_time(start, end_ms - default_days * DAY_MS)
    if not 0 < end_ms - start_ms <= MAX_DAYS * DAY_MS:
        raise HTTPException(422, f"the period must be positive and at most {MAX_DAYS} days")
    return start_ms, end_ms


async def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """A blocking read or write in a thread; the state or store being down answers 503."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except (StateError, StoreError) as exc:
        raise HTTPException(503, f"unavailable: {exc}") from exc


def csv_response(rows: list[dict[str, Any]], name: str, fields: tuple[str, ...] | None = None) -> Response:
    """Rows as a CSV download."""
    return Response(to_csv(rows, fields), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="wardlink-fleet-{name}.csv"'})


class FleetGauges:
    """The fleet's gauges for /metrics: computed in a thread at most every GAUGE_TTL_S, never during a scrape."""

    def __init__(self, data: FleetData) -> None:
        """Gauges over ``data``."""
        self._data = data
        self._samples: list[GaugeSample] = []
        self._at = float("-inf")
        self._task: asyncio.Task[None] | None = None

    def compute(self, now: int) -> list[GaugeSample]:
        """Every gauge, now (blocking)."""
        data = self._data
        devices = data.devices()
        states: dict[str, int] = dict.fromkeys(("connected", "connecting", "lost", "gateway_offline", "unknown"), 0)
        live = data.live()
        for device in devices:
            state = data.link_state(device, now, live)
            states[state] = states.get(state, 0) + 1
        out: list[GaugeSample] = [("wardlink_fleet_devices", "registered devices by connection state",
                                   {"state": s}, float(n)) for s, n in states.items()]
        gateways: dict[str, int] = dict.fromkeys(("online", "stale", "offline", "unknown"), 0)
        for gateway in data.gateways(devices, now):
            gateways[gateway["state"]] += 1
        out += [("wardlink_fleet_gateways", "gateways by state", {"state": s}, float(n)) for s, n in gateways.items()]
        for heard, (via, health) in sorted(live.items()):  # communication quality, as its gateway last said it
            labels = {"device": heard, "gateway": via}
            out.append(("wardlink_fleet_frames_rejected", "frames (messages, replies) a device link rejected since its "
                        "gateway started", labels, float(health.frames_bad)))
            out.append(("wardlink_fleet_link_retries", "requests a device link sent again since its gateway started",
                        labels, float(health.retries)))
        due = figures.due_items(devices, data.state.fleet.plans(), data.state.fleet.last_completed())
        for kind in ("pm", "calibration"):
            out.append(("wardlink_fleet_maintenance_overdue", "planned maintenance items past their due date",
                        {"kind": kind}, float(sum(1 for d in due if d.kind == kind and d.overdue(now)))))
        affected = {m.device for r in data.state.fleet.recalls() for m in figures.recall_matches(r, devices)}
        out.append(("wardlink_fleet_recall_affected_devices", "devices named by a recall", {}, float(len(affected))))
        behind = sum(len(m.behind) for m in figures.firmware_drift(devices))
        out.append(("wardlink_fleet_firmware_behind_devices", "devices on older firmware than others of their model",
                    {}, float(behind)))
        return out

    async def refresh(self) -> None:
        """Recompute now (in a thread)."""
        try:
            self._samples = await asyncio.to_thread(self.compute, now_ms())
        except StateError as exc:
            log.warning("fleet gauges not refreshed: %s", exc)
        self._at = time.monotonic()

    def samples(self, _now: int) -> list[GaugeSample]:
        """The last computed gauges; starts a refresh when they are older than GAUGE_TTL_S."""
        if time.monotonic() - self._at > GAUGE_TTL_S and (self._task is None or self._task.done()):
            with contextlib.suppress(RuntimeError):  # no loop (a synchronous caller): keep the last values
                self._task = asyncio.get_running_loop().create_task(self.refresh())
        return self._samples


def fleet_router(site: Site, state: State, store: TimeSeriesStore, view: LiveView, access: Access) -> APIRouter:
    """The fleet routes; registers the connection recorder and the fleet gauges on the live view."""
    router = APIRouter(prefix="/api/v1/fleet", tags=["fleet"])
    data = FleetData(site, state, store, view)
    recorder = FleetRecorder(state.fleet)
    view.gateway_listeners.append(recorder.observe)
    gauges = FleetGauges(data)
    view.gauge_sources.append(gauges.samples)

    readers = Depends(access.allow("biomed", "admin", "nurse", "charge_nurse"))
    editors = Depends(access.allow("biomed", "admin"))
    exporters = Depends(access.allow("biomed", "admin", "auditor"))
    clinical_or_biomed = Depends(access.allow("biomed", "nurse", "charge_nurse"))
    locators = Depends(access.allow("biomed", "facilities", "nurse", "charge_nurse"))
    biomed = Depends(access.allow("biomed"))
    reporters = Depends(access.allow("biomed", "auditor"))
    units = {u.id for u in site.units}
    beds = {bed: u.id for u in site.units for bed in u.beds}

    def synced_devices(include_retired: bool = False) -> list[Device]:
        now = now_ms()
        data.sync_discovered(now)
        return data.devices(include_retired=include_retired)

    async def scoped_device(principal: Principal, device_id: str) -> Device:
        """The device if the caller may see it; 404 alike for missing and out of scope."""
        await run(data.sync_discovered, now_ms())
        device = await run(state.registry.device, device_id)
        if device is None:
            raise not_found(f"device {device_id!r}")
        access.check_unit(principal, device.unit, f"device {device_id!r}")
        return device

    def check_place(unit: str | None, bed: str | None) -> str | None:
        """The unit a device belongs to: the given one, else its bed's; 422 for names the site lacks."""
        if unit is not None and unit not in units:
            raise HTTPException(422, f"unit {unit!r} is not a unit of the site")
        if bed is not None and bed not in beds:
            raise HTTPException(422, f"bed {bed!r} is not a bed of the site")
        return unit if unit is not None else beds.get(bed) if bed is not None else None

    # --- registry --------------------------------------------------------------------------------------------
    def registry_rows(principal: Principal, include_retired: bool) -> list[dict[str, Any]]:
        devices = synced_devices(include_retired)
        located = data.locations()
        return [device_out(d, located.get(d.id)) for d in devices if principal.sees_unit(d.unit)]

    @router.get("/devices")
    async def list_devices(principal: Annotated[Principal, readers], unit: str | None = None,
                           high_risk: bool | None = None, include_retired: bool = False) -> list[dict[str, Any]]:
        """The registry: identity, risk, firmware, owning unit, location, bed, gateway and connection settings.

        Biomedical engineers and admins see every device; nurses the devices of their units."""
        rows = await run(registry_rows, principal, include_retired)
        return [r for r in rows if (unit is None or r["unit"] == unit) and
                (high_risk is None or r["high_risk"] == high_risk)]

    @router.get("/devices.csv", responses=schemas.CSV)
    async def export_devices(principal: Annotated[Principal, exporters], include_retired: bool = True) -> Response:
        """The registry as CSV (the columns ``POST /devices/import`` reads)."""
        rows = await run(registry_rows, principal, include_retired)
        await access.audited(principal, object="fleet registry", action="fleet.export", unit=None,
                             detail={"rows": len(rows)})
        return csv_response(rows, "devices", CSV_FIELDS)

    @router.post("/devices/import")
    async def import_devices(body: CsvIn, principal: Annotated[Principal, editors]) -> dict[str, Any]:
        """Create or update devices from CSV; every row is checked before any is written (audited)."""
        try:
            rows = parse_registry_csv(body.csv, units, beds)
        except RegistryCsvError as exc:
            raise HTTPException(422, str(exc)) from None
        now = now_ms()
        created = updated = 0
        for row in rows:
            fields = dict(row)
            device_id = fields.pop("id")
            existing = await run(state.registry.device, device_id)
            if existing is None and not (fields.get("driver") and fields.get("gateway")):
                raise HTTPException(422, f"device {device_id}: a new device needs driver and gateway")
            await run(state.registry.upsert_device, device_id, now=now, **fields)
            created, updated = created + (existing is None), updated + (existing is not None)
        await access.audited(principal, object="fleet registry", action="fleet.import", unit=None,
                             detail={"created": created, "updated": updated})
        return {"created": created, "updated": updated}

    @router.post("/devices", status_code=201)
    async def create_device(body: DeviceIn, principal: Annotated[Principal, editors]) -> dict[str, Any]:
        """Register a device (409 if the id is taken; audited)."""
        unit = check_place(body.unit, body.bed)
        if await run(state.registry.device, body.id) is not None:
            raise HTTPException(409, f"device {body.id!r} is already registered")
        fields = body.model_dump(exclude={"id", "unit"})
        device = await run(state.registry.upsert_device, body.id, now=now_ms(), unit=unit, **fields)
        await access.audited(principal, object=f"device {body.id}", action="fleet.device.create", unit=unit,
                             detail={"model": body.model, "gateway": body.gateway})
        return device_out(device, None)

    @router.get("/devices/{device}")
    async def get_device(device: str, principal: Annotated[Principal, readers]) -> dict[str, Any]:
        """One device with its location (retired ones too)."""
        found = await scoped_device(principal, device)
        located = await run(data.locations)
        return device_out(found, located.get(found.id))

    @router.put("/devices/{device}")
    async def change_device(device: str, body: DeviceChange,
                            principal: Annotated[Principal, editors]) -> dict[str, Any]:
        """Change registry fields of a device (only those sent; audited with the fields changed)."""
        await scoped_device(principal, device)
        fields = body.model_dump(exclude_unset=True)
        if "unit" in fields or "bed" in fields:
            fields["unit"] = check_place(fields.get("unit"), fields.get("bed"))
        updated = await run(state.registry.upsert_device, device, now=now_ms(), **fields)
        await access.audited(principal, object=f"device {device}", action="fleet.device.update", unit=updated.unit,
                             detail={"fields": sorted(fields)})
        return device_out(updated, (await run(data.locations)).get(device))

    @router.post("/devices/{device}/retire")
    async def retire_device(device: str, principal: Annotated[Principal, editors]) -> dict[str, Any]:
        """Retire a device: it stays in the registry for history and leaves the fleet's figures (audited)."""
        found = await scoped_device(principal, device)
        retired = found if found.retired_at is not None else await run(state.registry.retire, device, now_ms())
        await access.audited(principal, object=f"device {device}", action="fleet.device.retire", unit=found.unit)
        return device_out(retired, None)

    # --- health ----------------------------------------------------------------------------------------------
    @router.get("/devices/{device}/health")
    async def device_health(device: str, principal: Annotated[Principal, clinical_or_biomed],
                            hours: Annotated[int, Query(ge=1, le=24 * MAX_DAYS)] = 24) -> dict[str, Any]:
        """Link state, last seen, battery, technical alarms and errors, frames rejected, clock skew."""
        found = await scoped_device(principal, device)
        return await run(data.health, found, now_ms(), hours * 3_600_000)

    def health_rows(hours: int) -> list[dict[str, Any]]:
        now = now_ms()
        return [data.health(d, now, hours * 3_600_000) for d in synced_devices()]

    @router.get("/health")
    async def fleet_health(principal: Annotated[Principal, biomed], unit: str | None = None,
                           state_: Annotated[str | None, Query(alias="state")] = None,
                           hours: Annotated[int, Query(ge=1, le=24 * MAX_DAYS)] = 24) -> list[dict[str, Any]]:
        """Every device's health (filter by owning unit and link state)."""
        rows = await run(health_rows, hours)
        return [r for r in rows if (unit is None or r["unit"] == unit) and (state_ is None or r["state"] == state_)]

    @router.get("/gateways")
    async def gateway_health(principal: Annotated[Principal, biomed]) -> list[dict[str, Any]]:
        """Per gateway: online, stale or offline (birth, heartbeats, last will), outbox, its devices' states."""
        devices = await run(synced_devices)
        return data.gateways(devices, now_ms())

    def uptime_rows(start: int, end: int) -> list[dict[str, Any]]:
        devices = synced_devices()
        ids = [d.id for d in devices]
        before = state.fleet.links_before(start)
        changes = state.fleet.links(start=start, end=end, subjects=ids)
        rows = []
        for device in devices:
            up = figures.uptime(device.id, before.get(device.id), changes, start, end)
            rows.append({"device": device.id, "unit": device.unit, "gateway": device.gateway,
                         "period_ms": up.period_ms, "known_ms": up.known_ms, "connected_ms": up.connected_ms,
                         "uptime": up.ratio, "outages": up.outages})
        return rows

    @router.get("/uptime")
    async def fleet_uptime(principal: Annotated[Principal, reporters], start: str | None = None,
                           end: str | None = None) -> list[dict[str, Any]]:
        """Per device: share of the period connected, of the part its state was known, and outages."""
        start_ms, end_ms = period(start, end)
        return await run(uptime_rows, start_ms, end_ms)

    # --- locating --------------------------------------------------------------------------------------------
    @router.get("/devices/{device}/location")
    async def locate_device(device: str, principal: Annotated[Principal, locators]) -> dict[str, Any]:
        """Where a device is: its asset's location (``room`` None when the device wears no tag or was never seen)."""
        found = await scoped_device(principal, device)
        location = (await run(data.locations)).get(found.id)
        return {"device": found.id, "unit": found.unit, "bed": found.bed,
                **(device_out(found, location)["location"] or {"room": None})}

    # --- utilisation -----------------------------------------------------------------------------------------
    def utilisation_rows(start: int, end: int) -> dict[str, Any]:
        groups, step = data.usage(synced_devices(), start, end)
        return {"start": start, "end": end, "step_ms": step,
                "groups": [{"type": g.type, "unit": g.unit, "devices": len(g.devices), "in_use_ms": g.in_use_ms,
                            "period_ms": g.period_ms, "utilisation": g.ratio, "idle": g.idle} for g in groups],
                "idle": [{"type": g.type, "unit": g.unit, "devices": g.idle} for g in groups if g.idle],
                "suggestions": [{"type": m.type, "from_unit": m.from_unit, "to_unit": m.to_unit,
                                 "devices": m.devices} for m in figures.redistribution(groups)]}

    @router.get("/utilisation")
    async def fleet_utilisation(principal: Annotated[Principal, reporters], start: str | None = None,
                                end: str | None = None) -> dict[str, Any]:
        """Share of time in use per device type and unit (pumps infusing, monitors on a patient), idle devices,
        and suggested moves of idle devices to busier units."""
        start_ms, end_ms = period(start, end)
        return await run(utilisation_rows, start_ms, end_ms)

    upkeep = upkeep_router(site, state, data, access, run=run, period=period, scoped_device=scoped_device,
                           synced_devices=synced_devices)
    router.include_router(upkeep.router)

    # --- reports ---------------------------------------------------------------------------------------------
    async def report_rows(name: str, principal: Principal, start: str | None, end: str | None) -> list[dict[str, Any]]:
        if name == "devices":
            return await run(registry_rows, principal, True)
        if name == "health":
            return await run(health_rows, 24)
        if name == "gateways":
            return data.gateways(await run(synced_devices), now_ms())
        if name == "uptime":
            return await run(uptime_rows, *period(start, end))
        if name == "utilisation":
            rows: list[dict[str, Any]] = (await run(utilisation_rows, *period(start, end)))["groups"]
            return rows
        return await upkeep.report(name, start, end)

    @router.get("/reports/{report}.csv", responses=schemas.CSV)
    async def report_csv(report: Report, principal: Annotated[Principal, reporters], start: str | None = None,
                         end: str | None = None) -> Response:
        """A fleet report as CSV (the same rows as the JSON report)."""
        rows = await report_rows(report, principal, start, end)
        await access.audited(principal, object=f"fleet report {report}", action="fleet.report", unit=None)
        return csv_response(rows, report)

    @router.get("/reports/{report}")
    async def report_json(report: Report, principal: Annotated[Principal, reporters], start: str | None = None,
                          end: str | None = None) -> list[dict[str, Any]]:
        """A fleet report as JSON rows: devices, health, gateways, uptime, utilisation, due, work_orders,
        completion, firmware, recalls."""
        rows = await report_rows(report, principal, start, end)
        await access.audited(principal, object=f"fleet report {report}", action="fleet.report", unit=None)
        return rows

    return router
