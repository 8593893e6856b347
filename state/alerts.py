"""Alerts in their current state and the append-only log of every transition (the alert engine's memory)."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import select, update

from devices.contract import Alert

from .models import AlarmLogRow, AlertRow
from .sessions import Sessions


class Transition(msgspec.Struct, frozen=True):
    """One line of the alarm log."""

    n: int
    alert_id: str
    state: str
    at: int
    actor: str | None
    alert: Alert


def _body(alert: Alert) -> dict[str, Any]:
    """The alert as a JSON object (the contract's encoding)."""
    body: dict[str, Any] = msgspec.to_builtins(alert)
    return body


def _alert(body: dict[str, Any]) -> Alert:
    """The alert of a stored JSON object."""
    return msgspec.convert(body, Alert)


class Alerts:
    """Same semantics as :class:`alerts.state.AlertState`: ``save`` upserts and logs, ``open`` restores."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def save(self, alert: Alert, *, actor: str | None = None) -> None:
        """Store the alert's new state and append the transition to the log, in one transaction.

        ``actor`` is the member of staff behind the transition (an acknowledgement), if any.
        """
        body = _body(alert)
        with self._sessions.write(f"saving alert {alert.id}") as session:
            row = session.get(AlertRow, alert.id)
            if row is None:
                row = AlertRow(id=alert.id)
                session.add(row)
            row.type, row.source, row.alarm_kind, row.priority = alert.type, alert.source, alert.alarm_kind, \
                alert.priority
            row.state, row.onset, row.updated, row.bed, row.unit = alert.state, alert.onset, alert.updated, \
                alert.bed, alert.unit
            row.device_alert, row.body = alert.device_alert, body
            if alert.state == "acknowledged" and actor is not None and row.acknowledged_by is None:
                row.acknowledged_by, row.acknowledged_at = actor, alert.updated
            session.flush()
            session.add(AlarmLogRow(alert_id=alert.id, state=alert.state, priority=alert.priority, at=alert.updated,
                                    actor=actor, body=body))

    def acknowledge(self, alert_id: str, by: str, at: int) -> tuple[Alert, bool]:
        """Acknowledge an active alert exactly once: ``(alert, True)`` if this call did it, else ``(alert, False)``.

        The state change is a conditional UPDATE, so of two racing callers (a nurse and an escalation
        timer that checks first) exactly one wins. Raises ``KeyError`` for an unknown alert.
        """
        with self._sessions.write(f"acknowledging alert {alert_id}") as session:
            row = session.get(AlertRow, alert_id)
            if row is None:
                raise KeyError(alert_id)
            won = session.execute(
                update(AlertRow).where(AlertRow.id == alert_id, AlertRow.state == "active")
                .values(state="acknowledged", updated=at, acknowledged_by=by, acknowledged_at=at)
                .returning(AlertRow.id).execution_options(synchronize_session=False)).first() is not None
            session.refresh(row)
            if not won:
                return _alert(row.body), False
            alert = msgspec.structs.replace(_alert(row.body), state="acknowledged", updated=at)
            row.body = _body(alert)
            session.add(AlarmLogRow(alert_id=alert_id, state="acknowledged", priority=alert.priority, at=at,
                                    actor=by, body=row.body))
            return alert, True

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

    def transitions(self, alert_id: str | None = None, limit: int = 1000) -> list[Transition]:
        """Log lines, oldest first (of one alert, or of all), with who caused each."""
        query = select(AlarmLogRow).order_by(AlarmLogRow.n).limit(limit)
        if alert_id is not None:
            query = query.where(AlarmLogRow.alert_id == alert_id)
        with self._sessions.read("reading the alarm log") as session:
            return [Transition(r.n, r.alert_id, r.state, r.at, r.actor, _alert(r.body)) for r in session.scalars(query)]
