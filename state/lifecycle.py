"""The alert lifecycle as pure transitions: active -> acknowledged -> resolved, latching, silencing, repeats.

It lives beside the state because two writers meet on one alert: the alert engine (the condition) and
staff through the API (acknowledge, silence, comment). The engine applies these functions in memory;
the state applies the same ones inside its transactions, so an acknowledgement committed in the
database is final whatever the engine last believed (:func:`merge`).

Rules:

* one alert per (source, type): a repeat of the open condition updates it (``repeats`` + 1);
* a condition that clears resolves the alert, unless it is latched and not yet acknowledged: then it
  stays active with ``condition_cleared`` set, and the acknowledgement resolves it;
* acknowledging an active alert is idempotent; an acknowledged alert resolves when its condition clears;
* a silence (pause) lasts until a deadline and has a reason; it lapses by itself.
"""

from __future__ import annotations

import msgspec

from devices.contract import Alert

LATCHING_PRIORITIES = frozenset({"high"})


def latches(alert: Alert) -> bool:
    """Whether a new alert latches: high-priority physiological ones do (technical ones follow their device)."""
    return alert.priority in LATCHING_PRIORITIES and alert.alarm_kind != "technical"


def repeat(alert: Alert, now: int, message: str, value: float | None, priority: str) -> Alert:
    """The open alert reported again: updated in place, the condition holds again."""
    return msgspec.structs.replace(alert, updated=now, message=message, value=value, priority=priority,
                                   repeats=alert.repeats + 1, condition_cleared=False)


def clear(alert: Alert, now: int, value: float | None = None) -> Alert:
    """The condition has gone: resolved, or (latched and unacknowledged) active with ``condition_cleared``."""
    value = value if value is not None else alert.value
    if alert.state == "active" and alert.latched:
        return msgspec.structs.replace(alert, condition_cleared=True, updated=now, value=value)
    return msgspec.structs.replace(alert, state="resolved", condition_cleared=True, updated=now, value=value)


def acknowledge(alert: Alert, by: str, now: int) -> Alert:
    """Acknowledged by ``by``; resolved at once if the condition already cleared. Idempotent."""
    if alert.state != "active":
        return alert
    state = "resolved" if alert.condition_cleared else "acknowledged"
    return msgspec.structs.replace(alert, state=state, acknowledged_by=by, acknowledged_at=now, updated=now,
                                   silenced_until=None, silence_reason=None)


def silence(alert: Alert, until: int, reason: str, now: int) -> Alert:
    """Paused until ``until`` (no delivery, no escalation meanwhile) for ``reason``."""
    return msgspec.structs.replace(alert, silenced_until=until, silence_reason=reason, updated=now)


def silence_lapsed(alert: Alert, now: int) -> bool:
    """True when the alert's silence has run out and it is still open."""
    return alert.silenced_until is not None and now >= alert.silenced_until and alert.state != "resolved"


def unsilence(alert: Alert, now: int) -> Alert:
    """The silence is over: the alert is heard again."""
    return msgspec.structs.replace(alert, silenced_until=None, silence_reason=None, updated=max(now, alert.updated))


def merge(stored: Alert, incoming: Alert) -> Alert:
    """What to store when the engine's ``incoming`` state meets the committed ``stored`` one.

    Staff actions already committed win: a resolved alert stays resolved, an acknowledgement is never
    undone, and a silence set through the API is kept until its deadline.
    """
    if stored.state == "resolved":
        return stored
    merged = incoming
    if stored.state == "acknowledged" and incoming.state == "active":
        merged = msgspec.structs.replace(
            incoming, state="resolved" if incoming.condition_cleared else "acknowledged",
            acknowledged_by=stored.acknowledged_by, acknowledged_at=stored.acknowledged_at)
    silence_kept = stored.silenced_until is not None and stored.silenced_until > incoming.updated
    if silence_kept and merged.silenced_until is None and merged.state == "active":
        merged = msgspec.structs.replace(merged, silenced_until=stored.silenced_until,
                                         silence_reason=stored.silence_reason)
    return merged
