"""Alerts in their current state and the append-only alarm log of every transition (the alert engine's memory).

Two writers meet here: the alert engine (conditions) and staff (acknowledge, silence, comment), the
latter through the API or the escalation. Every write locks the alert's row and applies the pure
transitions of :mod:`state.lifecycle`, so an acknowledgement committed here is final: a later save
from an engine that has not heard of it keeps it (see :func:`state.lifecycle.merge`).
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from devices.contract import Alert

from . import lifecycle
from .models import AlarmLogRow, AlertRow
from .sessions import Sessions


class NotAllowed(PermissionError):
    """The member of staff is not assigned to the alert's unit now."""


class Transition(msgspec.Struct, frozen=True):
    """One line of the alarm log: ``event`` says what happened (onset, repeat, acknowledged, comment ...)."""

    n: int
    alert_id: str
    state: str
    at: int
    actor: str | None
    alert: Alert
    event: str | None = None
    detail: dict[str, Any] | None = None


class Episode(msgspec.Struct, frozen=True):
    """One alert as the alarm-load reports see it: when it rose, when its condition ended, who acknowledged when."""

    id: str
    type: str
    source: str
    alarm_kind: str
    priority: str
    state: str
    onset: int  # the condition's onset (a rule's persistence delay runs from here)
    raised_at: int  # the alert's first alarm-log line: when it rose
    delay_ms: int
    bed: str | None
    unit: str | None
    cleared_at: int | None  # the condition ended (first condition_cleared or resolved line)
    acknowledged_at: int | None
    resolved_at: int | None


class Comment(msgspec.Struct, frozen=True):
    """A comment on an alert."""

    alert_id: str
    at: int
    by: str
    text: str


def _body(alert: Alert) -> dict[str, Any]:
    """The alert as a JSON object (the contract's encoding)."""
    body: dict[str, Any] = msgspec.to_builtins(alert)
    return body


def _alert(body: dict[str, Any]) -> Alert:
    """The alert of a stored JSON object."""
    return msgspec.convert(body, Alert)


def _event(before: Alert | None, after: Alert) -> str:
    """The alarm-log event name of a change the engine made."""
    if before is None:
        return "onset"
    if after.state != before.state:
        return after.state
    if after.condition_cleared and not before.condition_cleared:
        return "condition_cleared"
    if before.silenced_until is not None and after.silenced_until is None:
        return "unsilenced"
    if after.repeats != before.repeats:
        return "repeat"
    return "update"


def _write(row: AlertRow, alert: Alert) -> None:
    """Copy the alert into its row (indexed columns plus the contract body)."""
    row.type, row.source, row.alarm_kind, row.priority = alert.type, alert.source, alert.alarm_kind, alert.priority
    row.state, row.onset, row.updated, row.bed, row.unit = alert.state, alert.onset, alert.updated, alert.bed, \
        alert.unit
    row.device_alert, row.latched, row.silenced_until = alert.device_alert, alert.latched, alert.silenced_until
    row.delay_ms = alert.delay_ms
    if alert.state == "resolved" and row.resolved_at is None:
        row.resolved_at = alert.updated
    row.body = _body(alert)


def _log(session: Session, alert: Alert, event: str, actor: str | None, detail: dict[str, Any] | None = None) -> None:
    session.add(AlarmLogRow(alert_id=alert.id, state=alert.state, priority=alert.priority, at=alert.updated,
                            actor=actor, body=_body(alert), event=event, detail=detail))


class Alerts:
    """The alerts table and the alarm log: ``save`` upserts and logs, ``open`` restores, staff actions are final."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def save(self, alert: Alert, *, actor: str | None = None, event: str | None = None,
             detail: dict[str, Any] | None = None) -> Alert:
        """Store the engine's new state of an alert and log the transition; return what was stored.

        What is stored may differ from ``alert``: committed staff actions win (an acknowledgement, a
        resolution, a silence), so the caller must adopt the returned alert. ``actor`` names who
        caused the transition, if anyone. Nothing is logged when nothing changed.
        """
        with self._sessions.write(f"saving alert {alert.id}") as session:
            row = session.get(AlertRow, alert.id, with_for_update=True)
            if row is None:
                row, before, stored = AlertRow(id=alert.id), None, alert
                session.add(row)
            else:
                before = _alert(row.body)
                stored = lifecycle.merge(before, alert)
                if stored == before:
                    return stored
            _write(row, stored)
            if stored.state == "acknowledged" and actor is not None and row.acknowledged_by is None:
                row.acknowledged_by, row.acknowledged_at = actor, stored.updated
            session.flush()
            _log(session, stored, event or _event(before, stored), actor, detail)
            return stored

    def acknowledge(self, alert_id: str, by: str, at: int, *, units: set[str] | None = None) -> tuple[Alert, bool]:
        """Acknowledge an active alert exactly once: ``(alert, True)`` if this call did it, else ``(alert, False)``.

        The alert's row is locked for the check and the change, so of racing callers (nurses, an
        escalation timer) exactly one wins, and a committed acknowledgement is final. A latched alert
        whose condition has cleared resolves. With ``units`` (the units ``by`` is assigned to now, see
        ``Assignments.units_of``), raises :class:`NotAllowed` unless the alert's unit is one of them
        (an alert of no unit needs ``by`` on duty somewhere). Raises ``KeyError`` for an unknown alert.
        """
        with self._sessions.write(f"acknowledging alert {alert_id}") as session:
            row = session.get(AlertRow, alert_id, with_for_update=True)
            if row is None:
                raise KeyError(alert_id)
            current = _alert(row.body)
            _check_unit(current, by, units)
            if current.state != "active":
                return current, False
            alert = lifecycle.acknowledge(current, by, max(at, current.updated))
            _write(row, alert)
            row.acknowledged_by, row.acknowledged_at = by, alert.updated
            _log(session, alert, "acknowledged", by)
            return alert, True

    def silence(self, alert_id: str, by: str, until: int, reason: str, at: int, *,
                units: set[str] | None = None) -> Alert:
        """Pause an open alert until ``until`` for ``reason`` (logged with who); ``KeyError`` if unknown or resolved."""
        with self._sessions.write(f"silencing alert {alert_id}") as session:
            row = session.get(AlertRow, alert_id, with_for_update=True)
            if row is None or row.state == "resolved":
                raise KeyError(alert_id)
            current = _alert(row.body)
            _check_unit(current, by, units)
            alert = lifecycle.silence(current, until, reason, max(at, current.updated))
            _write(row, alert)
            _log(session, alert, "silenced", by, {"until": until, "reason": reason})
            return alert

    def comment(self, alert_id: str, by: str, text: str, at: int, *, units: set[str] | None = None) -> Comment:
        """Append a comment to an alert's log; ``KeyError`` if the alert is unknown."""
        with self._sessions.write(f"commenting on alert {alert_id}") as session:
            row = session.get(AlertRow, alert_id, with_for_update=True)
            if row is None:
                raise KeyError(alert_id)
            current = _alert(row.body)
            _check_unit(current, by, units)
            session.add(AlarmLogRow(alert_id=alert_id, state=current.state, priority=current.priority, at=at,
                                    actor=by, body=row.body, event="comment", detail={"text": text}))
            return Comment(alert_id, at, by, text)

    def record(self, alert_id: str, event: str, at: int, *, actor: str | None = None,
               detail: dict[str, Any] | None = None) -> None:
        """Log an event about an alert that does not change its state (escalated, delivered, read ...)."""
        with self._sessions.write(f"logging {event} of alert {alert_id}") as session:
            row = session.get(AlertRow, alert_id)
            if row is None:
                raise KeyError(alert_id)
            session.add(AlarmLogRow(alert_id=alert_id, state=row.state, priority=row.priority, at=at, actor=actor,
                                    body=row.body, event=event, detail=detail))

    def last_log_n(self) -> int:
        """The number of the newest alarm-log line (0 when empty)."""
        with self._sessions.read("reading the alarm log") as session:
            return session.scalars(select(AlarmLogRow.n).order_by(AlarmLogRow.n.desc()).limit(1)).first() or 0

    def staff_actions(self, after: int, limit: int = 1000) -> list[Transition]:
        """Log lines after line ``after`` caused by staff (acknowledged, silenced, comment), oldest first."""
        query = select(AlarmLogRow).where(AlarmLogRow.n > after, AlarmLogRow.actor.is_not(None)) \
            .order_by(AlarmLogRow.n).limit(limit)
        with self._sessions.read("reading staff actions") as session:
            return [_transition(r) for r in session.scalars(query)]

    def is_acknowledged(self, alert_id: str) -> bool:
        """True once an acknowledgement of the alert is committed (it is final: escalation must stop)."""
        with self._sessions.read(f"reading alert {alert_id}") as session:
            row = session.get(AlertRow, alert_id)
            return row is not None and row.acknowledged_at is not None

    def comments(self, alert_id: str) -> list[Comment]:
        """An alert's comments, oldest first."""
        query = select(AlarmLogRow).where(AlarmLogRow.alert_id == alert_id, AlarmLogRow.event == "comment") \
            .order_by(AlarmLogRow.n)
        with self._sessions.read(f"reading comments of alert {alert_id}") as session:
            return [Comment(r.alert_id, r.at, r.actor or "", str((r.detail or {}).get("text", "")))
                    for r in session.scalars(query)]

    def open(self) -> list[Alert]:
        """Alerts not yet resolved, oldest update first."""
        query = select(AlertRow.body).where(AlertRow.state != "resolved").order_by(AlertRow.updated, AlertRow.id)
        with self._sessions.read("reading open alerts") as session:
            return [_alert(body) for body in session.scalars(query)]

    def get(self, alert_id: str) -> Alert | None:
        """One alert in its current state, or None."""
        with self._sessions.read(f"reading alert {alert_id}") as session:
            row = session.get(AlertRow, alert_id)
            return None if row is None else _alert(row.body)

    def between(self, start: int, end: int, unit: str | None = None) -> list[Alert]:
        """Alerts whose onset lies in ``[start, end)``, oldest first (of one unit, or all)."""
        query = select(AlertRow.body).where(AlertRow.onset >= start, AlertRow.onset < end) \
            .order_by(AlertRow.onset, AlertRow.id)
        if unit is not None:
            query = query.where(AlertRow.unit == unit)
        with self._sessions.read("reading alerts of a period") as session:
            return [_alert(body) for body in session.scalars(query)]

    def episodes(self, start: int, end: int, units: set[str] | None = None) -> list[Episode]:
        """Alerts that rose in ``[start, end)`` (of ``units``, or all) with their key times, oldest first."""
        raised = select(AlarmLogRow.alert_id, func.min(AlarmLogRow.at).label("at")) \
            .where(AlarmLogRow.event == "onset", AlarmLogRow.at >= start, AlarmLogRow.at < end) \
            .group_by(AlarmLogRow.alert_id).subquery()
        query = select(AlertRow, raised.c.at).join(raised, raised.c.alert_id == AlertRow.id) \
            .order_by(raised.c.at, AlertRow.id)
        if units is not None:
            query = query.where(AlertRow.unit.in_(sorted(units)))
        ended = select(AlarmLogRow.alert_id, func.min(AlarmLogRow.at)) \
            .where(AlarmLogRow.event.in_(("condition_cleared", "resolved"))).group_by(AlarmLogRow.alert_id)
        with self._sessions.read("reading alert episodes") as session:
            rows = session.execute(query).all()
            ends: dict[str, int] = {}
            for chunk in range(0, len(rows), 500):  # bounded IN lists
                ids = [row.id for row, _ in rows[chunk:chunk + 500]]
                found = session.execute(ended.where(AlarmLogRow.alert_id.in_(ids)))
                ends.update((alert_id, at) for alert_id, at in found)
        return [Episode(row.id, row.type, row.source, row.alarm_kind, row.priority, row.state, row.onset, at,
                        row.delay_ms, row.bed, row.unit, ends.get(row.id), row.acknowledged_at, row.resolved_at)
                for row, at in rows]

    def acknowledged_by(self, alert_id: str) -> tuple[str, int] | None:
        """Who acknowledged an alert and when, or None."""
        with self._sessions.read(f"reading alert {alert_id}") as session:
            row = session.get(AlertRow, alert_id)
            if row is None or row.acknowledged_by is None or row.acknowledged_at is None:
                return None
            return row.acknowledged_by, row.acknowledged_at

    def log(self, alert_id: str | None = None, limit: int = 1000) -> list[Alert]:
        """Transitions, oldest first (of one alert, or of all), as the alerts they produced."""
        return [t.alert for t in self.transitions(alert_id, limit)]

    def transitions(self, alert_id: str | None = None, limit: int = 1000, *, since: int | None = None,
                    until: int | None = None) -> list[Transition]:
        """Log lines, oldest first (of one alert, or of all, optionally in ``[since, until)``), with who caused each."""
        query = select(AlarmLogRow).order_by(AlarmLogRow.n).limit(limit)
        if alert_id is not None:
            query = query.where(AlarmLogRow.alert_id == alert_id)
        if since is not None:
            query = query.where(AlarmLogRow.at >= since)
        if until is not None:
            query = query.where(AlarmLogRow.at < until)
        with self._sessions.read("reading the alarm log") as session:
            return [_transition(r) for r in session.scalars(query)]


def _transition(row: AlarmLogRow) -> Transition:
    return Transition(row.n, row.alert_id, row.state, row.at, row.actor, _alert(row.body), row.event, row.detail)


def _check_unit(alert: Alert, by: str, units: set[str] | None) -> None:
    """Raise :class:`NotAllowed` unless ``units`` (when given) covers the alert's unit."""
    if units is None:
        return
    if (alert.unit is None and not units) or (alert.unit is not None and alert.unit not in units):
        raise NotAllowed(f"{by} is not assigned to unit {alert.unit or '(any)'} now")
