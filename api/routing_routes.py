"""Routing API: staff, shift assignments (create, end, list per unit), routes, deliveries and the per-user stream.

Roles: staff records are the ``admin``'s; a unit's assignments are read by its nurses and charge nurse
and changed by its ``charge_nurse`` (and the ``admin``), every change audited; a bed's route and an
alert's deliveries are read by the unit's nurses; deliveries and the personal stream are the caller's
own (the member of staff is the authenticated principal, never a parameter). Reads of assignments (they
name beds and patients), routes, an alert's deliveries and the escalations are audited.
"""

# No `from __future__ import annotations`: FastAPI reads the Depends(...) of local names in parameter
# annotations, which only works when annotations are evaluated where the route is defined.
import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Depends, HTTPException, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from api.access import Access, not_found
from api.security import Principal
from api.view import LiveView, StaffSubscriber
from devices.clock import now_ms
from devices.contract import Alert, Notification
from devices.site import Site
from state.assignments import Assignment, Recipient
from state.db import State
from state.errors import StateError
from state.escalations import RECEIVER_STATUSES, Delivery, Escalations

log = logging.getLogger(__name__)

PING_S = 15.0
ANSWERS_PER_S = 10  # a nurse's answers to deliveries: a few a minute; a client past this is flooding
ANSWERS_BURST = 30


class StaffIn(BaseModel):
    """A member of staff to create or update."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    name: str
    role: str
    active: bool = True


class AssignmentIn(BaseModel):
    """A shift assignment: primary or buddy for a bed or patient, or charge for the whole unit."""

    staff: str
    unit: str
    role: Literal["primary", "buddy", "charge"]
    valid_from: int | None = None  # epoch ms; default now
    valid_to: int  # epoch ms, exclusive
    bed: str | None = None
    patient: str | None = None


class EndIn(BaseModel):
    """When an assignment ends (default now)."""

    at: int | None = None


class StatusIn(BaseModel):
    """A receiver's answer to a delivery."""

    status: Literal["delivered", "read", "accepted", "declined"]


def _delivery(delivery: Delivery) -> dict[str, object]:
    body: dict[str, object] = msgspec.to_builtins(delivery)
    return body


def routing_router(site: Site, state: State, view: LiveView, access: Access, *,
                   ladders: Mapping[str, Sequence[tuple[str, float]]] | None = None) -> APIRouter:
    """The routing endpoints over the relational state and the live view; ``ladders``: each priority's
    escalation steps as (target, timeout_s), to say where an unacknowledged alert goes next."""
    router = APIRouter(prefix="/api/v1", tags=["routing"])
    ladder_of = dict(ladders or {})
    assignments = state.assignments
    escalations = Escalations(state.sessions)
    units = {unit.id for unit in site.units}
    admin = Depends(access.allow("admin"))
    unit_staff = Depends(access.allow("nurse", "charge_nurse", "admin"))
    planners = Depends(access.allow("charge_nurse", "admin"))
    clinical = Depends(access.allow("nurse", "charge_nurse"))

    def in_scope(principal: Principal, unit: str | None, what: str) -> None:
        """Admins plan every unit; clinical staff their own; anything else answers like a missing object."""
        if principal.role != "admin":
            access.check_unit(principal, unit, what)
        elif unit not in units:
            raise not_found(what)

    async def call(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StateError as exc:
            raise HTTPException(503, f"state unavailable: {exc}") from exc

    @router.post("/staff", status_code=201)
    async def put_staff(staff: StaffIn, principal: Annotated[Principal, admin]) -> dict[str, object]:
        """Create or update a member of staff (audited)."""
        saved = await call(assignments.add_staff, staff.id, staff.name, staff.role, active=staff.active)
        await access.audited(principal, object=f"staff {staff.id}", action="staff.save", unit=None,
                             detail={"role": staff.role, "active": staff.active})
        return msgspec.to_builtins(saved)  # type: ignore[no-any-return]

    @router.get("/units/{unit}/assignments")
    async def list_assignments(unit: str, principal: Annotated[Principal, unit_staff],
                               at: int | None = None) -> list[dict[str, object]]:
        """Assignments of a unit in force at ``at`` (default now)."""
        in_scope(principal, unit, f"unit {unit!r}")
        found: list[Assignment] = await call(assignments.current, unit, now_ms() if at is None else at)
        await access.audited(principal, object=f"assignments of unit {unit}", action="read", unit=unit,
                             detail={"at": at, "count": len(found)})
        return [msgspec.to_builtins(a) for a in found]

    @router.post("/assignments", status_code=201)
    async def create_assignment(body: AssignmentIn, principal: Annotated[Principal, planners]) -> dict[str, object]:
        """Assign a member of staff for a shift (the unit's charge nurse or an admin; audited)."""
        in_scope(principal, body.unit, f"unit {body.unit!r}")
        if body.bed is not None and access.bed_units.get(body.bed) != body.unit:
            raise not_found(f"bed {body.bed!r}")
        if await call(assignments.staff, body.staff) is None:
            raise not_found(f"staff {body.staff!r}")
        try:
            made = await call(assignments.assign, body.staff, body.unit, body.role,
                              now_ms() if body.valid_from is None else body.valid_from, body.valid_to,
                              bed=body.bed, patient=body.patient)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        await access.audited(principal, object=f"assignment {made.id}", action="assignment.create", unit=body.unit,
                             detail=msgspec.to_builtins(made))
        return msgspec.to_builtins(made)  # type: ignore[no-any-return]

    @router.post("/assignments/{assignment_id}/end")
    async def end_assignment(assignment_id: int, principal: Annotated[Principal, planners],
                             body: EndIn | None = None) -> dict[str, object]:
        """End an assignment (now, or at ``at``; audited)."""
        existing: Assignment | None = await call(assignments.get, assignment_id)
        if existing is None:
            raise not_found(f"assignment {assignment_id}")
        in_scope(principal, existing.unit, f"assignment {assignment_id}")
        at = now_ms() if body is None or body.at is None else body.at
        try:
            ended = await call(assignments.end, assignment_id, at)
        except KeyError:
            raise not_found(f"assignment {assignment_id}") from None
        await access.audited(principal, object=f"assignment {assignment_id}", action="assignment.end",
                             unit=existing.unit, detail={"at": at})
        return msgspec.to_builtins(ended)  # type: ignore[no-any-return]

    @router.get("/beds/{bed}/route")
    async def bed_route(bed: str, principal: Annotated[Principal, clinical],
                        at: int | None = None) -> list[dict[str, object]]:
        """Who an alarm of this bed goes to now: primary, buddy, charge."""
        unit = access.unit_of_bed(principal, bed)
        route: list[Recipient] = await call(assignments.route, bed, now_ms() if at is None else at)
        await access.audited(principal, object=f"bed {bed} route", action="read", unit=unit, detail={"at": at})
        return [msgspec.to_builtins(r) for r in route]

    @router.get("/alerts/{alert_id}/delivery")
    async def alert_delivery(alert_id: str, principal: Annotated[Principal, clinical]) -> dict[str, object]:
        """An alert's escalation (state, step, next deadline), its fired steps and every delivery."""
        alert: Alert | None = await call(state.alerts.get, alert_id)
        if alert is None:
            raise not_found(f"alert {alert_id!r}")
        unit = access.unit_of_alert(alert)
        access.check_unit(principal, unit, f"alert {alert_id!r}")
        escalation = await call(escalations.get, alert_id)
        if escalation is None:
            raise not_found(f"delivery of alert {alert_id!r}")
        steps = await call(escalations.steps, alert_id)
        deliveries = await call(escalations.deliveries, alert_id=alert_id)
        await access.audited(principal, object=f"alert {alert_id} delivery", action="read", unit=unit)
        return {"escalation": msgspec.to_builtins(escalation), "steps": msgspec.to_builtins(steps),
                "deliveries": [_delivery(d) for d in deliveries]}

    def holders(target: str, unit: str | None, bed: str | None, at: int) -> list[str]:
        """Who holds a step's target now, read from the assignments as the alert service reads them."""
        if target == "team":
            return [r.staff for r in assignments.team(unit, at)] if unit else []
        try:
            route = assignments.route(bed, at) if bed else assignments.unit_route(unit, at) if unit else []
        except KeyError:
            route = []
        return [r.staff for r in route if r.role == target]

    def escalation_rows(alerts: list[Alert], at: int) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        held: dict[tuple[str, str | None, str | None], list[str]] = {}  # one read per step and bed
        for alert in alerts:
            escalation = escalations.get(alert.id)
            if escalation is None:
                continue  # not routed yet: the stream says when its first step fires
            fired = escalations.steps(alert.id)
            ladder = list(ladder_of.get(escalation.priority) or ladder_of.get("medium") or [])
            following = None
            if escalation.next_at is not None:  # the next step somebody holds now (vacant ones are skipped)
                for index in range(escalation.step + 1, len(ladder)):
                    key = (ladder[index][0], escalation.unit, escalation.bed)
                    if key not in held:
                        held[key] = holders(*key, at)
                    people = held[key]
                    if people:
                        following = {"step": index, "target": ladder[index][0], "staff": people}
                        break
            rows.append({**msgspec.to_builtins(escalation), "target": fired[-1].target if fired else None,
                         "staff": fired[-1].recipients if fired else [], "steps": len(ladder), "next": following})
        return rows

    @router.get("/escalations")
    async def list_escalations(principal: Annotated[Principal, clinical]) -> list[dict[str, object]]:
        """Where each open alert of the caller's units is in its escalation: the step, who has it, when the next
        step fires (``next_at``, None when stopped or at its last step) and who would get it now (``next``)."""
        alerts = [a for a in view.alerts.values()
                  if a.state == "active" and principal.sees_unit(access.unit_of_alert(a))]
        rows: list[dict[str, object]] = await call(escalation_rows, alerts, now_ms())
        await access.audited(principal, object="escalations", action="read", unit=None,
                             detail={"units": sorted(principal.units), "count": len(rows)})
        return rows

    @router.get("/deliveries")
    async def list_deliveries(principal: Annotated[Principal, clinical]) -> list[dict[str, object]]:
        """Deliveries to the caller, oldest first."""
        return [_delivery(d) for d in await call(escalations.deliveries, staff=principal.subject)]

    @router.post("/deliveries/{delivery_id}/status")
    async def delivery_status(delivery_id: int, body: StatusIn,
                              principal: Annotated[Principal, clinical]) -> dict[str, object]:
        """The caller's answer to a delivery to them: delivered, read, accepted (stops the escalation) or
        declined (next step now)."""
        try:
            updated = await call(escalations.mark, delivery_id, body.status, now_ms(), staff=principal.subject)
        except KeyError:
            raise not_found(f"delivery {delivery_id}") from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from exc
        return _delivery(updated)

    @router.websocket("/staff/stream")
    async def staff_stream(ws: WebSocket) -> None:
        """The caller's alerts: a snapshot of open deliveries, then each new one and its alert's updates.

        Authenticate with a single-use ``?ticket=`` from ``POST /api/v1/auth/ws-ticket``. Every
        notification written to the socket is recorded as delivered. The client answers with
        ``{"type": "status", "delivery": <id>, "status": "read" | "accepted" | "declined"}``.
        """
        principal = await access.websocket_principal(ws)
        if principal is None or principal.role not in ("nurse", "charge_nurse"):
            await ws.close(code=1008, reason="sign in: a ticket from POST /api/v1/auth/ws-ticket")
            return
        staff = principal.subject
        await ws.accept()
        stream = view.subscribe_staff(staff)
        try:
            await _snapshot(ws, stream)
            reader = asyncio.create_task(_answers(ws, staff))
            try:
                while not reader.done():
                    getter = asyncio.ensure_future(stream.queue.get())
                    done, _ = await asyncio.wait({getter, reader}, timeout=PING_S,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        if stream.overflowed:
                            break
                        if not done:
                            await ws.send_json({"type": "ping", "ts": now_ms()})
                        continue
                    await _send(ws, getter.result())
                    if stream.overflowed and stream.queue.empty():
                        break
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                    await reader
        except WebSocketDisconnect:
            pass
        finally:
            view.unsubscribe_staff(stream)
            if stream.overflowed:
                with contextlib.suppress(RuntimeError):
                    await ws.close(code=1013, reason="too slow: reconnect and resynchronise")

    async def _snapshot(ws: WebSocket, stream: StaffSubscriber) -> None:
        """Deliveries to this member of staff whose alert is still open (after a reconnect, nothing is missed)."""
        pending = [d for d in await call(escalations.deliveries, staff=stream.staff) if d.alert_id in view.alerts]
        stream.alerts.update(d.alert_id for d in pending)
        await ws.send_json({"type": "snapshot", "deliveries": [
            {**_delivery(d), "alert": msgspec.to_builtins(view.alerts[d.alert_id])} for d in pending]})
        for d in pending:
            if d.status == "sent":
                await call(escalations.mark, d.id, "delivered", now_ms(), staff=stream.staff)

    async def _send(ws: WebSocket, item: Alert | Notification) -> None:
        if isinstance(item, Notification):
            await ws.send_json({"type": "notification", "notification": msgspec.to_builtins(item)})
            with contextlib.suppress(KeyError):  # a delivery of another instance's database: nothing to record
                await call(escalations.mark, item.delivery, "delivered", now_ms(), staff=item.staff)
        else:
            await ws.send_json({"type": "alert", "alert": msgspec.to_builtins(item)})

    async def _answers(ws: WebSocket, staff: str) -> None:
        """The client's answers to deliveries; unreadable or foreign ones get an error frame. A client sending
        faster than :data:`ANSWERS_PER_S` (burst :data:`ANSWERS_BURST`) is flooding: it is disconnected (1008),
        so it cannot keep the state busy while other nurses' alarms wait."""
        tokens, last = float(ANSWERS_BURST), asyncio.get_running_loop().time()
        while True:
            message = await ws.receive_json()
            now = asyncio.get_running_loop().time()
            tokens = min(float(ANSWERS_BURST), tokens + (now - last) * ANSWERS_PER_S) - 1
            last = now
            if tokens < 0:
                view.dropped_clients += 1
                log.warning("staff stream of %s: more than %d messages a second; disconnected", staff, ANSWERS_PER_S)
                await ws.close(code=1008, reason="too many messages")
                return
            if not isinstance(message, dict) or message.get("type") != "status":
                await ws.send_json({"type": "error", "detail": "expected {type: status, delivery, status}"})
                continue
            if message.get("status") not in RECEIVER_STATUSES:
                await ws.send_json({"type": "error", "detail": f"status: expected one of {RECEIVER_STATUSES}"})
                continue
            try:
                updated = await call(escalations.mark, int(message["delivery"]), message["status"], now_ms(),
                                     staff=staff)
            except (KeyError, ValueError, TypeError) as exc:
                await ws.send_json({"type": "error", "detail": f"delivery {message.get('delivery')}: {exc}"})
                continue
            await ws.send_json({"type": "delivery", "delivery": _delivery(updated)})

    return router
