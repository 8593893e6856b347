"""Escalations and deliveries: each alert's persisted escalation deadline, its fired steps, and per-recipient delivery.

Every step is recorded in one transaction that first locks the alert's row and reads its state there:
an acknowledgement committed before it stops the escalation, and one racing it waits for the step to
commit (the acknowledgement's conditional UPDATE needs the same row). So no step fires after a
committed acknowledgement. Deadlines are stored, not held in memory, so a restarted alert service
keeps them.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .models import AlarmLogRow, AlertRow, DeliveryRow, EscalationRow, EscalationStepRow
from .sessions import Sessions

DeliveryStatus = Literal["sent", "delivered", "read", "accepted", "declined", "failed"]
RECEIVER_STATUSES: Final = ("delivered", "read", "accepted", "declined")
_RANK: Final = {"sent": 0, "failed": 0, "delivered": 1, "read": 2, "accepted": 3, "declined": 3}


class Escalation(msgspec.Struct, frozen=True):
    """An alert's escalation: the last step fired and when the next one is due (None: stopped)."""

    alert_id: str
    unit: str | None
    bed: str | None
    priority: str
    step: int
    next_at: int | None
    state: str


class Step(msgspec.Struct, frozen=True):
    """One fired step."""

    n: int
    alert_id: str
    step: int
    target: str
    reason: str
    at: int
    recipients: list[str]


class Delivery(msgspec.Struct, frozen=True):
    """One alert sent to one member of staff on one channel, with how far it got."""

    id: int
    alert_id: str
    step: int
    staff: str
    channel: str
    status: str
    sent_at: int
    confirm_by: int | None = None
    delivered_at: int | None = None
    read_at: int | None = None
    accepted_at: int | None = None
    declined_at: int | None = None
    detail: str = ""


class Fired(msgspec.Struct, frozen=True):
    """What :meth:`Escalations.fire` did: the step and its deliveries, and the alert as stored."""

    step: Step
    deliveries: list[Delivery]
    alert: dict[str, Any]


class StepPlan(msgspec.Struct, frozen=True):
    """The step to record: whom, on which channels, why, and the deadline of the step after it."""

    step: int
    target: str
    reason: str
    recipients: list[str]
    channels: list[str]
    next_at: int | None
    confirm_by: int | None


def _escalation(row: EscalationRow) -> Escalation:
    return Escalation(row.alert_id, row.unit, row.bed, row.priority, row.step, row.next_at, row.state)


def _delivery(row: DeliveryRow) -> Delivery:
    return Delivery(row.id, row.alert_id, row.step, row.staff, row.channel, row.status, row.sent_at, row.confirm_by,
                    row.delivered_at, row.read_at, row.accepted_at, row.declined_at, row.detail)


def _step(row: EscalationStepRow) -> Step:
    return Step(row.n, row.alert_id, row.step, row.target, row.reason, row.at, list(row.recipients))


class Escalations:
    """Escalation deadlines, fired steps and deliveries."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def _lock_alert(self, session: Session, alert_id: str) -> AlertRow | None:
        """The alert's row, locked until the transaction ends (SQLite's write transaction already is exclusive)."""
        query = select(AlertRow).where(AlertRow.id == alert_id)
        if self._sessions.dialect == "postgresql":
            query = query.with_for_update()
        return session.scalars(query).first()

    def fire(self, alert_id: str, expected_step: int, plan: StepPlan, at: int, *, unit: str | None = None,
             bed: str | None = None) -> Fired | None:
        """Record step ``plan.step`` if the alert is still active and unacknowledged and the escalation is at
        ``expected_step`` (-1: not started); return what was recorded, or None (stopped, or fired by another).
        """
        with self._sessions.write(f"escalating alert {alert_id}") as session:
            alert = self._lock_alert(session, alert_id)
            if alert is None:
                return None
            row = session.get(EscalationRow, alert_id)
            if alert.state != "active":
                if row is not None and row.state == "running":
                    row.state = "acknowledged" if alert.state == "acknowledged" else "resolved"
                    row.next_at, row.updated = None, at
                    self._close_deliveries(session, alert_id)
                return None
            if row is None:
                if expected_step != -1:
                    return None
                row = EscalationRow(alert_id=alert_id, unit=unit if unit is not None else alert.unit,
                                    bed=bed if bed is not None else alert.bed, priority=alert.priority, step=-1,
                                    next_at=None, state="running", created=at, updated=at)
                session.add(row)
            elif row.step != expected_step or row.state != "running":
                return None  # another instance fired it, or it was accepted
            if alert.silenced_until is not None and alert.silenced_until > at and row.step >= 0:
                row.next_at, row.updated = alert.silenced_until, at  # paused: no escalation until the pause ends
                return None
            row.step, row.next_at, row.updated = plan.step, plan.next_at, at
            row.state = "running" if plan.next_at is not None else "exhausted"
            step = EscalationStepRow(alert_id=alert_id, step=plan.step, target=plan.target, reason=plan.reason, at=at,
                                     recipients=list(plan.recipients))
            session.add(step)
            self._close_deliveries(session, alert_id)  # the earlier step's unconfirmed ones no longer escalate
            rows = [DeliveryRow(alert_id=alert_id, step=plan.step, staff=staff, channel=channel, status="sent",
                                sent_at=at, confirm_by=plan.confirm_by, detail="")
                    for staff in plan.recipients for channel in plan.channels]
            session.add_all(rows)
            session.add(AlarmLogRow(alert_id=alert_id, state=alert.state, priority=alert.priority, at=at, actor=None,
                                    body=alert.body, event="notified" if plan.step == 0 else "escalated",
                                    detail={"step": plan.step, "target": plan.target, "reason": plan.reason,
                                            "recipients": list(plan.recipients)}))
            session.flush()
            return Fired(_step(step), [_delivery(r) for r in rows], dict(alert.body))

    def _close_deliveries(self, session: Session, alert_id: str) -> None:
        """Stop waiting for confirmations of an alert's deliveries."""
        session.execute(update(DeliveryRow).where(DeliveryRow.alert_id == alert_id, DeliveryRow.confirm_by.is_not(None))
                        .values(confirm_by=None).execution_options(synchronize_session=False))

    def stop(self, alert_id: str, state: Literal["acknowledged", "resolved", "exhausted"], at: int) -> bool:
        """End a running escalation (acknowledged, resolved, or no step left); True if it was running."""
        with self._sessions.write(f"stopping escalation of {alert_id}") as session:
            row = session.get(EscalationRow, alert_id)
            if row is None or row.state != "running":
                return False
            row.state, row.next_at, row.updated = state, None, at
            self._close_deliveries(session, alert_id)
            return True

    def hasten(self, alert_id: str, at: int) -> bool:
        """Bring a running escalation's next step forward to ``at`` (a receiver declined or did not confirm)."""
        with self._sessions.write(f"hastening escalation of {alert_id}") as session:
            row = session.get(EscalationRow, alert_id)
            if row is None or row.state != "running" or row.next_at is None:
                return False
            row.next_at = min(row.next_at, at)
            return True

    def due(self, now: int, limit: int = 100) -> list[Escalation]:
        """Running escalations whose next step is due, oldest deadline first."""
        query = (select(EscalationRow).where(EscalationRow.state == "running", EscalationRow.next_at <= now)
                 .order_by(EscalationRow.next_at).limit(limit))
        with self._sessions.read("reading due escalations") as session:
            return [_escalation(r) for r in session.scalars(query)]

    def next_deadline(self) -> int | None:
        """The earliest deadline: of a running escalation, or of a delivery awaiting confirmation."""
        with self._sessions.read("reading the next escalation deadline") as session:
            escalation = session.scalar(select(func.min(EscalationRow.next_at)).where(EscalationRow.state == "running"))
            delivery = session.scalar(select(func.min(DeliveryRow.confirm_by)))
        known = [t for t in (escalation, delivery) if t is not None]
        return min(known) if known else None

    def get(self, alert_id: str) -> Escalation | None:
        """One alert's escalation, or None."""
        with self._sessions.read(f"reading escalation of {alert_id}") as session:
            row = session.get(EscalationRow, alert_id)
            return None if row is None else _escalation(row)

    def steps(self, alert_id: str) -> list[Step]:
        """The fired steps of an alert, in order."""
        query = select(EscalationStepRow).where(EscalationStepRow.alert_id == alert_id).order_by(EscalationStepRow.n)
        with self._sessions.read(f"reading escalation steps of {alert_id}") as session:
            return [_step(r) for r in session.scalars(query)]

    def deliveries(self, *, alert_id: str | None = None, staff: str | None = None) -> list[Delivery]:
        """Deliveries of an alert or to a member of staff (or all), oldest first."""
        query = select(DeliveryRow).order_by(DeliveryRow.id)
        if alert_id is not None:
            query = query.where(DeliveryRow.alert_id == alert_id)
        if staff is not None:
            query = query.where(DeliveryRow.staff == staff)
        with self._sessions.read("reading deliveries") as session:
            return [_delivery(r) for r in session.scalars(query)]

    def delivery(self, delivery_id: int) -> Delivery | None:
        """One delivery, or None."""
        with self._sessions.read(f"reading delivery {delivery_id}") as session:
            row = session.get(DeliveryRow, delivery_id)
            return None if row is None else _delivery(row)

    def unconfirmed(self, now: int) -> list[Delivery]:
        """Deliveries still only sent when their confirmation was due."""
        query = (select(DeliveryRow).where(DeliveryRow.confirm_by <= now, DeliveryRow.status == "sent")
                 .order_by(DeliveryRow.confirm_by))
        with self._sessions.read("reading unconfirmed deliveries") as session:
            return [_delivery(r) for r in session.scalars(query)]

    def give_up(self, delivery_id: int, at: int, detail: str) -> bool:
        """Mark a delivery nobody confirmed (or nobody can receive) failed, exactly once: True if this call did it."""
        with self._sessions.write(f"giving up delivery {delivery_id}") as session:
            done = session.execute(
                update(DeliveryRow).where(DeliveryRow.id == delivery_id, DeliveryRow.status == "sent")
                .values(status="failed", confirm_by=None, detail=detail[:200])
                .returning(DeliveryRow.id).execution_options(synchronize_session=False)).first()
            return done is not None

    def mark(self, delivery_id: int, status: DeliveryStatus, at: int, *, staff: str | None = None,
             detail: str = "") -> Delivery:
        """Record a receiver's progress on a delivery (delivered < read < accepted | declined); never goes back.

        ``staff`` (when given) must be the recipient. Accepting stops the escalation; when every recipient
        of the current step has declined, the next step is brought forward to now. Raises ``KeyError``
        for an unknown delivery (or another recipient's) and ``ValueError`` for a status change not allowed.
        """
        if status not in RECEIVER_STATUSES and status != "failed":
            raise ValueError(f"delivery status {status!r}: expected one of {RECEIVER_STATUSES}")
        with self._sessions.write(f"updating delivery {delivery_id}") as session:
            row = session.get(DeliveryRow, delivery_id)
            if row is None or (staff is not None and row.staff != staff):
                raise KeyError(delivery_id)
            if row.status in ("accepted", "declined") and status in ("accepted", "declined") and status != row.status:
                raise ValueError(f"delivery {delivery_id} is already {row.status}")
            if _RANK[status] > _RANK[row.status] or (row.status == "failed" and status != "failed"):
                row.status = status
            if row.delivered_at is None and status != "failed":
                row.delivered_at = at  # any answer from the receiver means it arrived
            if row.read_at is None and status in ("read", "accepted", "declined"):
                row.read_at = at
            if status == "accepted" and row.accepted_at is None:
                row.accepted_at = at
            if status == "declined" and row.declined_at is None:
                row.declined_at = at
            row.confirm_by = None
            if detail:
                row.detail = detail[:200]
            escalation = session.get(EscalationRow, row.alert_id)
            if escalation is not None and escalation.state == "running" and escalation.step == row.step:
                if status == "accepted":
                    escalation.state, escalation.next_at, escalation.updated = "accepted", None, at
                elif status == "declined" and escalation.next_at is not None:
                    answers = session.execute(select(DeliveryRow.staff, DeliveryRow.status).where(
                        DeliveryRow.alert_id == row.alert_id, DeliveryRow.step == row.step)).all()
                    declined = {who for who, state in answers if state == "declined"}
                    if declined >= {who for who, _ in answers}:  # everyone of this step said no: next step now
                        escalation.next_at = min(escalation.next_at, at)
            session.flush()
            return _delivery(row)
