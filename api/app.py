"""The HTTP and WebSocket API (FastAPI): beds, vitals, history, alerts, devices, health, and every router.

Every route declares who may call it (``Depends(access.allow(...))``, see :mod:`api.access`); only
sign-in, the liveness probe and ``/metrics`` (for the hospital's monitoring network) are open.
"""

# No `from __future__ import annotations`: FastAPI reads the Depends(...) of local names in parameter
# annotations, which only works when annotations are evaluated where the route is defined.
import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, RedirectResponse

from api import metrics, schemas
from api.access import Access, not_found
from api.alerts_routes import Catalogue, alerts_router
from api.audit_routes import audit_router
from api.auth_routes import auth_router
from api.console import console_router
from api.facilities_routes import facilities_router
from api.fleet_routes import fleet_router
from api.limits import Limits, LimitSettings
from api.navigation_routes import navigation_router
from api.reports_routes import reports_router
from api.routing_routes import routing_router
from api.security import Authenticator, Principal
from api.times import parse_time
from api.view import LiveView
from api.waste_routes import waste_router
from devices import mdc
from devices.clock import now_ms
from devices.contract import Alert, DeviceInfo, Notification
from devices.site import Site
from facilities.sitemap import SiteMap
from facilities.waste import WasteSettings
from state.alarm_settings import DEFAULT_RULESET
from state.db import State
from storage.base import HistoryPoint, Latest, StoreError, TimeSeriesStore

log = logging.getLogger(__name__)

_STEP = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")
_STEP_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1000}
GATEWAY_STALE_MS = 20_000
Start = Annotated[str | None, Query(description="epoch ms or ISO 8601; default one hour ago")]
End = Annotated[str | None, Query(description="epoch ms or ISO 8601; default now")]
Step = Annotated[str | None, Query(description="bucket width (60s, 1m, 1h): mean/min/max per bucket")]


def parse_step(value: str | None) -> int | None:
    """``60``, ``60s``, ``1m``, ``500ms``, ``1h`` to milliseconds."""
    if not value:
        return None
    match = _STEP.match(value.strip())
    if not match or float(match.group(1)) <= 0:
        raise HTTPException(422, f"step {value!r}: expected a duration such as 60s, 1m or 1h")
    return int(float(match.group(1)) * _STEP_MS[match.group(2)])


def iso(ms: int) -> str:
    """Epoch ms as ISO 8601 UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


FACILITIES_ALERTS = ("asset.", "par.", "tag.", "waste.")
"""Alert types facilities staff handle (asset location, par levels, tags, medical waste)."""


@dataclass(frozen=True)
class ApiParts:
    """Everything the API serves from (built by the composition root, :mod:`wardlink.runner`)."""

    site: Site
    store: TimeSeriesStore
    view: LiveView
    state: State
    auth: Authenticator
    catalogue: Catalogue  # alerts.ruleset.catalogue(), handed in: the API never imports the alert engine
    default_ruleset: str = DEFAULT_RULESET
    site_map: SiteMap | None = None
    waste: WasteSettings | None = None
    limits: LimitSettings = field(default_factory=LimitSettings)
    # Priority -> escalation steps as (target, timeout_s), from alerts.delivery.routing (plain data, like the
    # catalogue): the console shows when an unacknowledged alert escalates next and to whom.
    ladders: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


def sees_alert(access: Access, principal: Principal, alert: Alert) -> bool:
    """Whether a live alert is the caller's: their units' alerts (clinical), facilities' kinds, or technical ones."""
    if principal.role in ("nurse", "charge_nurse"):
        return principal.sees_unit(access.unit_of_alert(alert))
    if principal.role == "facilities":
        return alert.type.startswith(FACILITIES_ALERTS)
    if principal.role == "biomed":
        return alert.category == "technical"
    return False


def create_app(parts: ApiParts) -> FastAPI:
    """Build the application: its own routes, every router, and the request limits around it all."""
    site, store, view, state = parts.site, parts.store, parts.view, parts.state
    app = FastAPI(title="Wardlink API", version="0.2.0", responses=schemas.ERRORS,
                  description="Device telemetry, vitals and alarms for a hospital's connected devices. "
                              "Sign in with POST /api/v1/auth/token and send Authorization: Bearer <token>.")
    access = Access(site, state, parts.auth)
    app.state.access = access
    clinical = Depends(access.allow("nurse", "charge_nurse"))
    ward_roles = Depends(access.allow("nurse", "charge_nurse", "facilities", "biomed"))
    alert_roles = Depends(access.allow("nurse", "charge_nurse", "facilities", "biomed"))
    device_roles = Depends(access.allow("nurse", "charge_nurse", "biomed"))
    operations = Depends(access.allow("biomed", "admin", "charge_nurse", "nurse", "facilities"))

    async def in_thread(fn: Any, /, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except StoreError as exc:
            raise HTTPException(503, f"store unavailable: {exc}") from exc

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console/")

    @app.get("/api/v1/health/live")
    async def live() -> dict[str, str]:
        """Liveness for load balancers and orchestrators: the process answers (no detail, no sign-in)."""
        return {"status": "ok"}

    @app.get("/api/v1/beds", response_model=list[schemas.Bed])
    async def list_beds(principal: Annotated[Principal, ward_roles]) -> list[schemas.Bed]:
        """Beds of the caller's units (site-wide roles: every bed) with the devices bound to each; no patient data."""
        return [schemas.Bed(id=bed, unit=unit.id, devices=[
            schemas.DeviceRef(id=d.id, kind=d.kind, model=d.model) for d in site.devices_at(bed)])
            for unit in site.units if principal.sees_unit(unit.id) for bed in unit.beds]

    @app.get("/api/v1/beds/{bed}/vitals", response_model=list[schemas.Vital])
    async def bed_vitals(bed: str, principal: Annotated[Principal, clinical]) -> list[schemas.Vital]:
        """Latest value, unit, MDC code and time per metric at a bed (a read of patient data: audited)."""
        unit = access.unit_of_bed(principal, bed)
        latest = await in_thread(store.latest, bed=bed)
        await access.audited(principal, object=f"bed {bed} vitals", action="read", unit=unit)
        return [_vital(v) for v in latest]

    @app.get("/api/v1/beds/{bed}/vitals/{metric}", response_model=schemas.History)
    async def bed_history(
        bed: str, metric: str, principal: Annotated[Principal, clinical],
        start: Start = None, end: End = None, step: Step = None,
    ) -> schemas.History:
        """History of one metric at a bed, downsampled when ``step`` is given (audited)."""
        unit = access.unit_of_bed(principal, bed)
        return await history(principal, unit, {"bed": bed}, metric, start, end, step)

    async def history(principal: Principal, unit: str | None, where: dict[str, str], metric: str,
                      start: str | None, end: str | None, step: str | None) -> schemas.History:
        """One metric's history at a bed or of a device (``where``), downsampled when ``step`` is given; audited."""
        refid = mdc.resolve(metric)
        end_ms = parse_time(end, now_ms() + 1)
        start_ms = parse_time(start, end_ms - 3_600_000)
        if start_ms >= end_ms:
            raise HTTPException(422, "start must be before end")
        step_ms = parse_step(step)
        points = await in_thread(store.history, **where, metric=refid, start_ms=start_ms, end_ms=end_ms,
                                 step_ms=step_ms)
        await access.audited(principal, object=f"{' '.join(next(iter(where.items())))} {refid}", action="read",
                             unit=unit, detail={"start": start_ms, "end": end_ms})
        known = mdc.BY_REFID.get(refid)
        return schemas.History(bed=where.get("bed"), device=where.get("device"), metric=refid,
                               code=known.code if known else None, unit=known.unit if known else None,
                               start=iso(start_ms), end=iso(end_ms), step_ms=step_ms,
                               points=[_point(p, step_ms is not None) for p in points])

    @app.get("/api/v1/alerts", response_model=list[schemas.AlertOut])
    async def list_alerts(
        principal: Annotated[Principal, alert_roles],
        state: Annotated[str | None, Query(pattern="^(active|acknowledged|resolved|open)$")] = None,
        unit: str | None = None, bed: str | None = None,
    ) -> list[schemas.AlertOut]:
        """The caller's alerts, newest first; ``state=active`` for the open ones, ``resolved`` for recent history.

        Nurses see their units' alerts, facilities staff asset and waste alerts, biomedical engineers
        technical alerts."""
        pool = list(view.resolved.values()) if state == "resolved" else list(view.alerts.values())
        if state is None:
            pool += list(view.resolved.values())
        pool = [a for a in pool if sees_alert(access, principal, a)]
        if state in ("active", "acknowledged"):
            pool = [a for a in pool if a.state == state]
        if unit:
            pool = [a for a in pool if access.unit_of_alert(a) == unit]
        if bed:
            pool = [a for a in pool if a.bed == bed]
        pool.sort(key=lambda a: a.updated, reverse=True)
        if principal.role in ("nurse", "charge_nurse"):  # beds and their values: patient-linked
            await access.audited(principal, object="alerts", action="read", unit=unit,
                                 detail={"state": state, "bed": bed, "count": len(pool)})
        return [schemas.AlertOut(**msgspec.to_builtins(a)) for a in pool]

    @app.websocket("/api/v1/alerts/stream")
    async def alert_stream(ws: WebSocket) -> None:
        """The caller's alerts (as ``GET /api/v1/alerts``): a snapshot, then every transition as it happens.

        Authenticate with a single-use ``?ticket=`` from ``POST /api/v1/auth/ws-ticket``."""
        principal = await access.websocket_principal(ws)
        if principal is None or principal.role not in ("nurse", "charge_nurse", "facilities", "biomed"):
            await ws.close(code=1008, reason="sign in: a ticket from POST /api/v1/auth/ws-ticket")
            return
        await ws.accept()
        if principal.role in ("nurse", "charge_nurse"):
            await access.audited(principal, object="alerts stream", action="subscribe", unit=None)
        subscriber = view.subscribe()
        watcher = asyncio.create_task(_until_gone(ws))  # the client sends nothing: this notices it leave at once
        try:
            await ws.send_json({"type": "snapshot", "alerts": [
                msgspec.to_builtins(a) for a in view.alerts.values() if sees_alert(access, principal, a)]})
            while not watcher.done():
                getter = asyncio.ensure_future(subscriber.queue.get())
                done, _ = await asyncio.wait({getter, watcher}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if subscriber.overflowed:
                        break
                    if not done:
                        await ws.send_json({"type": "ping", "ts": now_ms()})
                    continue
                item = getter.result()
                if isinstance(item, Notification):  # an escalation step fired: who has the alert now
                    if sees_alert(access, principal, item.alert) and principal.role in ("nurse", "charge_nurse"):
                        await ws.send_json({"type": "escalation", "alert_id": item.alert.id, "step": item.step,
                                            "target": item.target, "staff": item.staff, "reason": item.reason,
                                            "sent": item.sent})
                elif sees_alert(access, principal, item):
                    await ws.send_json({"type": "alert", "alert": msgspec.to_builtins(item)})
                if subscriber.overflowed:  # too slow: what is still queued is stale; it resynchronises on reconnect
                    break
        except WebSocketDisconnect:
            pass
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await watcher
            view.unsubscribe(subscriber)
            if subscriber.overflowed:
                with contextlib.suppress(RuntimeError):
                    await ws.close(code=1013, reason="too slow: reconnect and resynchronise")

    async def registry() -> dict[str, schemas.DeviceOut]:
        """Site devices and those gateways discovered (newest announcement wins), with live link state."""
        health = {h.device: h for g in view.gateways.values() for h in g.devices}
        out: dict[str, schemas.DeviceOut] = {}
        for d in site.devices:
            out[d.id] = schemas.DeviceOut(id=d.id, kind=d.kind, gateway=d.gateway, bed=d.bed,
                                          manufacturer=d.manufacturer, model=d.model, serial_number=d.serial_number)
        announced = await in_thread(store.events, kind="dev", start_ms=0, end_ms=2**62, limit=100_000)
        for info in announced:
            if not isinstance(info, DeviceInfo):
                continue
            known = out.get(info.device)
            out[info.device] = schemas.DeviceOut(
                id=info.device, kind=info.driver, gateway=info.gateway or (known.gateway if known else ""),
                bed=info.bed or (known.bed if known else None),
                manufacturer=info.manufacturer or (known.manufacturer if known else ""),
                model=info.model or (known.model if known else ""),
                serial_number=info.serial_number or (known.serial_number if known else ""),
                firmware=info.firmware, identifiers=info.identifiers, discovered=info.discovered and known is None)
        for device_id, device in out.items():
            h = health.get(device_id)
            if h is not None:
                device.state = h.state
                device.last_seen = iso(h.last_seen) if h.last_seen else None
                device.frames_ok, device.frames_bad = h.frames_ok, h.frames_bad
        return out

    def device_unit(device: schemas.DeviceOut) -> str | None:
        """A device's unit: its bed's, else its gateway's."""
        return (access.bed_units.get(device.bed) if device.bed else None) or access.gateway_units.get(device.gateway)

    async def scoped_device(principal: Principal, device: str) -> str | None:
        """A device's unit when the caller may see the device; 404 alike for missing and out of scope."""
        found = (await registry()).get(device)
        unit = device_unit(found) if found is not None else None
        if found is None or not principal.sees_unit(unit):
            raise not_found(f"device {device!r}")
        return unit

    @app.get("/api/v1/devices", response_model=list[schemas.DeviceOut])
    async def list_devices(principal: Annotated[Principal, device_roles]) -> list[schemas.DeviceOut]:
        """Devices (declared and discovered) with identifiers, bed, gateway, firmware and link state: every
        device for biomedical engineers, their units' devices for nurses."""
        return [d for d in (await registry()).values() if principal.sees_unit(device_unit(d))]

    @app.get("/api/v1/devices/{device}/vitals", response_model=list[schemas.Vital])
    async def device_vitals(device: str, principal: Annotated[Principal, device_roles]) -> list[schemas.Vital]:
        """Latest value per metric of one device (audited)."""
        unit = await scoped_device(principal, device)
        latest = await in_thread(store.latest, device=device)
        await access.audited(principal, object=f"device {device} vitals", action="read", unit=unit)
        return [_vital(v) for v in latest]

    @app.get("/api/v1/devices/{device}/vitals/{metric}", response_model=schemas.History)
    async def device_history(
        device: str, metric: str, principal: Annotated[Principal, device_roles],
        start: Start = None, end: End = None, step: Step = None,
    ) -> schemas.History:
        """History of one metric of a device (its telemetry wherever it was bound), downsampled with ``step``."""
        unit = await scoped_device(principal, device)
        return await history(principal, unit, {"device": device}, metric, start, end, step)

    @app.get("/api/v1/health", response_model=schemas.Health)
    async def health(principal: Annotated[Principal, operations]) -> schemas.Health:
        """Each component's state: broker, store, gateways, ingest and alerts."""
        now = now_ms()
        try:
            stats = await asyncio.to_thread(store.stats)
            store_state = schemas.Component(state="ok", detail=msgspec.to_builtins(stats))
        except StoreError as exc:
            store_state = schemas.Component(state="down", detail={"error": str(exc)})
        gateways = {
            g.gateway: schemas.Component(
                state=("offline" if g.state == "offline" else "stale" if now - g.ts > GATEWAY_STALE_MS else "online"),
                detail={"last_heard": iso(view.gateway_heard.get(g.gateway, g.ts)), "outbox_depth": g.outbox_depth,
                        "outbox_shed": g.outbox_shed,
                        "devices": {d.device: d.state for d in g.devices}})
            for g in view.gateways.values()}
        services = {
            name: schemas.Component(
                state=("offline" if s.state == "offline" else "stale" if now - s.ts > GATEWAY_STALE_MS else "online"),
                detail={"last_heard": iso(s.ts), "lag_ms": s.lag_ms, "counters": s.counters})
            for name, s in view.services.items()}
        broker = schemas.Component(state="ok" if view.connected else "down",
                                   detail={"url": view.address.url, "embedded": view.embedded_broker})
        parts_ok = [broker.state == "ok", store_state.state == "ok",
                    all(c.state == "online" for c in (*gateways.values(), *services.values()))]
        return schemas.Health(status="ok" if all(parts_ok) else "degraded", broker=broker, store=store_state,
                              gateways=gateways, services=services,
                              open_alerts=len(view.alerts), live_clients=len(view.subscribers))

    @app.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
    async def prometheus_metrics() -> PlainTextResponse:
        """Prometheus text exposition of every worker's counters (label ``instance``) and the API's own view.

        Open, for the monitoring network: it carries counters and states, no patient data."""
        return PlainTextResponse(metrics.render(view, now_ms()), media_type=metrics.CONTENT_TYPE)

    app.include_router(auth_router(access))
    app.include_router(console_router(access, parts.site_map))
    app.include_router(audit_router(access))
    app.include_router(routing_router(site, state, view, access, ladders=parts.ladders))
    app.include_router(alerts_router(site, state, access, parts.catalogue, default_ruleset=parts.default_ruleset))
    app.include_router(reports_router(site, access))
    app.include_router(facilities_router(site, state, store, access, site_map=parts.site_map))
    app.include_router(waste_router(site, state, access, parts.waste, store=store, site_map=parts.site_map))
    app.include_router(fleet_router(site, state, store, view, access))
    if parts.site_map is not None:
        app.include_router(navigation_router(parts.site_map, state, access))
    app.state.limit_counters = {"body_too_large": 0, "rate_limited": 0}
    app.add_middleware(Limits, settings=parts.limits, counters=app.state.limit_counters, verified=access.verified)
    return app


async def _until_gone(ws: WebSocket) -> None:
    """Read (and drop) what a client sends on a stream that expects nothing, until it disconnects."""
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass


def _vital(latest: Latest) -> schemas.Vital:
    known = mdc.BY_REFID.get(latest.metric)
    return schemas.Vital(metric=latest.metric, label=known.label if known else latest.metric,
                         code=latest.code or None, value=latest.value, unit=latest.unit, ts=latest.ts,
                         time=iso(latest.ts), device=latest.device, flags=latest.flags)


def _point(point: HistoryPoint, bucket: bool) -> schemas.Point:
    if bucket:
        return schemas.Point(ts=point.ts, time=iso(point.ts), mean=point.value, min=point.min, max=point.max,
                             count=point.count)
    return schemas.Point(ts=point.ts, time=iso(point.ts), value=point.value)
