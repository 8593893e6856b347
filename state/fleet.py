"""The biomedical engineers' fleet records: maintenance plans per model, work orders, recalls, connection log.

The device registry itself is :mod:`state.registry`; this module keeps what biomedical engineering adds
around it. ``connection_log`` holds changes of connection state only (never every heartbeat), written by
the API's fleet recorder (:mod:`api.fleet_recorder`) and read back for uptime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from .models import (
    LINK_KINDS,
    MAINTENANCE_KINDS,
    WORK_ORDER_KINDS,
    ConnectionLogRow,
    DeviceRow,
    MaintenancePlanRow,
    RecallRow,
    WorkOrderRow,
)
from .sessions import Sessions

MaintenanceKind = Literal["pm", "calibration"]
WorkOrderKind = Literal["pm", "calibration", "repair", "firmware", "recall"]


class MaintenancePlan(msgspec.Struct, frozen=True):
    """Planned maintenance of a model: ``kind`` every ``interval_days``."""

    model: str
    kind: str
    manufacturer: str
    interval_days: int
    manufacturer_schedule: bool
    created: int
    updated: int


class WorkOrder(msgspec.Struct, frozen=True):
    """A work order on a device (status open, assigned or closed)."""

    id: int
    device: str
    kind: str
    status: str
    planned: bool
    title: str
    due_at: int | None
    opened_at: int
    opened_by: str
    assigned_to: str | None
    assigned_at: int | None
    closed_at: int | None
    closed_by: str | None
    notes: str
    parts: list[str]


class Recall(msgspec.Struct, frozen=True):
    """A recall as imported; empty fields name nothing (a firmware range may be open on either side)."""

    id: str
    manufacturer: str = ""
    model: str = ""
    product_code: str = ""
    udi: str = ""
    firmware_min: str = ""
    firmware_max: str = ""
    title: str = ""
    issued_at: int | None = None
    imported_at: int = 0


class LinkChange(msgspec.Struct, frozen=True):
    """A device or gateway entering a connection state at ``ts``."""

    subject: str
    kind: str  # device, gateway
    gateway: str
    state: str  # connecting, connected, lost, gateway_offline (devices); online, offline (gateways)
    ts: int


class OrderError(ValueError):
    """A work-order change that its state does not allow (closing a closed order)."""


def _plan(row: MaintenancePlanRow) -> MaintenancePlan:
    return MaintenancePlan(row.model, row.kind, row.manufacturer, row.interval_days, row.manufacturer_schedule,
                           row.created, row.updated)


def _order(row: WorkOrderRow) -> WorkOrder:
    return WorkOrder(row.id, row.device_id, row.kind, row.status, row.planned, row.title, row.due_at, row.opened_at,
                     row.opened_by, row.assigned_to, row.assigned_at, row.closed_at, row.closed_by, row.notes,
                     list(row.parts))


def _recall(row: RecallRow) -> Recall:
    return Recall(row.id, row.manufacturer, row.model, row.product_code, row.udi, row.firmware_min, row.firmware_max,
                  row.title, row.issued_at, row.imported_at)


class Fleet:
    """Maintenance plans, work orders, recalls and the connection log."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    # --- maintenance plans -------------------------------------------------------------------------------
    def set_plan(self, model: str, kind: str, *, interval_days: int, now: int, manufacturer: str = "",
                 manufacturer_schedule: bool = True) -> MaintenancePlan:
        """Create or change the schedule of ``kind`` (pm, calibration) for a model."""
        if kind not in MAINTENANCE_KINDS:
            raise ValueError(f"maintenance kind {kind!r}: expected one of {MAINTENANCE_KINDS}")
        if interval_days <= 0:
            raise ValueError("maintenance interval must be at least one day")
        with self._sessions.write(f"saving maintenance plan {model}/{kind}") as session:
            row = session.get(MaintenancePlanRow, (model, kind))
            if row is None:
                row = MaintenancePlanRow(model=model, kind=kind, manufacturer=manufacturer, interval_days=interval_days,
                                         manufacturer_schedule=manufacturer_schedule, created=now, updated=now)
                session.add(row)
            else:
                row.manufacturer, row.interval_days = manufacturer, interval_days
                row.manufacturer_schedule, row.updated = manufacturer_schedule, now
            session.flush()
            return _plan(row)

    def plans(self) -> list[MaintenancePlan]:
        """Every plan by model and kind."""
        with self._sessions.read("reading maintenance plans") as session:
            query = select(MaintenancePlanRow).order_by(MaintenancePlanRow.model, MaintenancePlanRow.kind)
            return [_plan(r) for r in session.scalars(query)]

    # --- work orders -------------------------------------------------------------------------------------
    def open_order(self, device: str, kind: str, *, by: str, now: int, title: str = "", due_at: int | None = None,
                   planned: bool = False) -> WorkOrder:
        """Open a work order on a device; ``KeyError`` for an unknown device."""
        if kind not in WORK_ORDER_KINDS:
            raise ValueError(f"work order kind {kind!r}: expected one of {WORK_ORDER_KINDS}")
        with self._sessions.write(f"opening a work order on {device}") as session:
            if session.get(DeviceRow, device) is None:
                raise KeyError(device)
            row = WorkOrderRow(device_id=device, kind=kind, status="open", planned=planned, title=title,
                               due_at=due_at, opened_at=now, opened_by=by, notes="", parts=[])
            session.add(row)
            session.flush()
            return _order(row)

    def assign(self, order_id: int, to: str, *, now: int) -> WorkOrder:
        """Assign an open order to an engineer; ``KeyError`` if unknown, :class:`OrderError` if closed."""
        with self._sessions.write(f"assigning work order {order_id}") as session:
            row = session.get(WorkOrderRow, order_id)
            if row is None:
                raise KeyError(order_id)
            if row.status == "closed":
                raise OrderError(f"work order {order_id} is closed")
            row.status, row.assigned_to, row.assigned_at = "assigned", to, now
            session.flush()
            return _order(row)

    def close(self, order_id: int, *, by: str, now: int, notes: str = "", parts: Sequence[str] = ()) -> WorkOrder:
        """Close an order with notes and the parts used; ``KeyError`` if unknown, :class:`OrderError` if closed."""
        with self._sessions.write(f"closing work order {order_id}") as session:
            row = session.get(WorkOrderRow, order_id)
            if row is None:
                raise KeyError(order_id)
            if row.status == "closed":
                raise OrderError(f"work order {order_id} is already closed")
            row.status, row.closed_at, row.closed_by, row.notes, row.parts = "closed", now, by, notes, list(parts)
            session.flush()
            return _order(row)

    def order(self, order_id: int) -> WorkOrder | None:
        """One work order, or None."""
        with self._sessions.read(f"reading work order {order_id}") as session:
            row = session.get(WorkOrderRow, order_id)
            return None if row is None else _order(row)

    def orders(self, *, status: str | None = None, device: str | None = None, planned: bool | None = None,
               due_from: int | None = None, due_to: int | None = None) -> list[WorkOrder]:
        """Work orders by id, filtered by status, device, planned or not, and due date in ``[due_from, due_to)``."""
        query = select(WorkOrderRow).order_by(WorkOrderRow.id)
        if status == "not_closed":
            query = query.where(WorkOrderRow.status != "closed")
        elif status is not None:
            query = query.where(WorkOrderRow.status == status)
        if device is not None:
            query = query.where(WorkOrderRow.device_id == device)
        if planned is not None:
            query = query.where(WorkOrderRow.planned == planned)
        if due_from is not None:
            query = query.where(WorkOrderRow.due_at >= due_from)
        if due_to is not None:
            query = query.where(WorkOrderRow.due_at < due_to)
        with self._sessions.read("reading work orders") as session:
            return [_order(r) for r in session.scalars(query)]

    def last_completed(self) -> dict[tuple[str, str], int]:
        """When each device last had each kind of work done: ``(device, kind) -> closed_at``."""
        query = (select(WorkOrderRow.device_id, WorkOrderRow.kind, func.max(WorkOrderRow.closed_at))
                 .where(WorkOrderRow.status == "closed").group_by(WorkOrderRow.device_id, WorkOrderRow.kind))
        with self._sessions.read("reading completed maintenance") as session:
            return {(d, k): int(at) for d, k, at in session.execute(query) if at is not None}

    # --- recalls -----------------------------------------------------------------------------------------
    def save_recalls(self, recalls: Sequence[Recall], *, now: int) -> int:
        """Insert or replace recalls by id (a re-import updates them); returns how many were saved."""
        with self._sessions.write(f"saving {len(recalls)} recalls") as session:
            for recall in recalls:
                fields: dict[str, Any] = msgspec.structs.asdict(recall)
                fields["imported_at"] = now
                row = session.get(RecallRow, recall.id)
                if row is None:
                    session.add(RecallRow(**fields))
                else:
                    for key, value in fields.items():
                        setattr(row, key, value)
        return len(recalls)

    def recalls(self) -> list[Recall]:
        """Every recall by id."""
        with self._sessions.read("reading recalls") as session:
            return [_recall(r) for r in session.scalars(select(RecallRow).order_by(RecallRow.id))]

    def recall(self, recall_id: str) -> Recall | None:
        """One recall, or None."""
        with self._sessions.read(f"reading recall {recall_id}") as session:
            row = session.get(RecallRow, recall_id)
            return None if row is None else _recall(row)

    # --- connection log ----------------------------------------------------------------------------------
    def record_links(self, changes: Sequence[LinkChange]) -> int:
        """Append connection-state changes; one already recorded (same subject, time, state) is skipped.

        Idempotent, so several API processes hearing the same gateway status write it once.
        """
        if not changes:
            return 0
        for change in changes:
            if change.kind not in LINK_KINDS:
                raise ValueError(f"link kind {change.kind!r}: expected one of {LINK_KINDS}")
        rows = [msgspec.structs.asdict(c) for c in changes]
        dialect = postgresql if self._sessions.dialect == "postgresql" else sqlite
        statement = dialect.insert(ConnectionLogRow).values(rows).on_conflict_do_nothing(
            index_elements=["subject", "ts", "state"]).returning(ConnectionLogRow.n)
        with self._sessions.write(f"recording {len(rows)} connection changes") as session:
            return len(session.execute(statement).all())  # rowcount is -1 on psycopg for this statement

    def links(self, *, start: int, end: int, subjects: Sequence[str] | None = None) -> list[LinkChange]:
        """Changes in ``[start, end)`` in time order (of some subjects)."""
        query = select(ConnectionLogRow).where(ConnectionLogRow.ts >= start, ConnectionLogRow.ts < end)
        if subjects is not None:
            query = query.where(ConnectionLogRow.subject.in_(list(subjects)))
        query = query.order_by(ConnectionLogRow.ts, ConnectionLogRow.n)
        with self._sessions.read("reading the connection log") as session:
            return [LinkChange(r.subject, r.kind, r.gateway, r.state, r.ts) for r in session.scalars(query)]

    def links_before(self, ts: int) -> dict[str, LinkChange]:
        """Each subject's newest change before ``ts``: its state as ``ts`` began."""
        newest = (select(ConnectionLogRow.subject, func.max(ConnectionLogRow.ts).label("ts"))
                  .where(ConnectionLogRow.ts < ts).group_by(ConnectionLogRow.subject).subquery())
        query = (select(ConnectionLogRow)
                 .join(newest, (ConnectionLogRow.subject == newest.c.subject) & (ConnectionLogRow.ts == newest.c.ts))
                 .order_by(ConnectionLogRow.n))
        with self._sessions.read("reading connection states") as session:
            return {r.subject: LinkChange(r.subject, r.kind, r.gateway, r.state, r.ts) for r in session.scalars(query)}
