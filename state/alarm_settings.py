"""Alarm settings per unit and bed: which clinical default rule set a unit uses, and limit overrides.

The settings are plain data here (rule names and fields); the alert engine knows what they mean. Every
change returns the old and new values so the caller can audit it (who, old, new, when).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from sqlalchemy import select

from .models import AlarmLimitRow, AlarmProfileRow
from .sessions import Sessions

DEFAULT_RULESET = "adult"
OVERRIDABLE: Final = frozenset({"limit", "per_min", "window_s", "priority", "delay_s", "hysteresis", "enabled",
                                "medium_at", "high_at"})
"""Rule fields a unit or bed may override (the alert engine and the API both refuse any other)."""
SETTINGS_LOCK: Final = 0x5741524453455454  # PostgreSQL advisory lock: two first writers of a row must not both insert


class LimitOverride(msgspec.Struct, frozen=True):
    """Settings of one rule overridden for a unit (``bed`` None) or one bed."""

    unit: str
    bed: str | None
    rule: str
    settings: dict[str, Any]
    updated: int
    updated_by: str


class AlarmSettings:
    """Rule-set choice per unit and per-unit / per-bed overrides of rule settings."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def ruleset(self, unit: str) -> str:
        """The rule set a unit uses (``adult`` unless chosen)."""
        with self._sessions.read(f"reading the rule set of {unit}") as session:
            row = session.get(AlarmProfileRow, unit)
            return DEFAULT_RULESET if row is None else row.ruleset

    def rulesets(self) -> dict[str, str]:
        """Every unit's chosen rule set (units not listed use ``adult``)."""
        with self._sessions.read("reading rule sets") as session:
            return {r.unit: r.ruleset for r in session.scalars(select(AlarmProfileRow))}

    def set_ruleset(self, unit: str, ruleset: str, by: str, at: int) -> tuple[str, str]:
        """Choose a unit's rule set; return ``(old, new)``."""
        with self._sessions.write(f"setting the rule set of {unit}") as session:
            self._sessions.lock(session, SETTINGS_LOCK)
            row = session.get(AlarmProfileRow, unit, with_for_update=True)
            old = DEFAULT_RULESET if row is None else row.ruleset
            if row is None:
                row = AlarmProfileRow(unit=unit)
                session.add(row)
            row.ruleset, row.updated, row.updated_by = ruleset, at, by
            return old, ruleset

    def overrides(self, unit: str | None = None) -> list[LimitOverride]:
        """Overrides (of one unit, or all), unit-wide ones before bed ones."""
        query = select(AlarmLimitRow).order_by(AlarmLimitRow.unit, AlarmLimitRow.bed, AlarmLimitRow.rule)
        if unit is not None:
            query = query.where(AlarmLimitRow.unit == unit)
        with self._sessions.read("reading alarm limit overrides") as session:
            return [LimitOverride(r.unit, r.bed or None, r.rule, dict(r.settings), r.updated, r.updated_by)
                    for r in session.scalars(query)]

    def set_override(self, unit: str, bed: str | None, rule: str, settings: dict[str, Any], by: str,
                     at: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Set (merge into) or, with empty ``settings``, remove an override; return ``(old, new)`` settings."""
        with self._sessions.write(f"setting alarm limits of {rule} at {bed or unit}") as session:
            self._sessions.lock(session, SETTINGS_LOCK)
            row = session.get(AlarmLimitRow, (unit, bed or "", rule), with_for_update=True)
            old = None if row is None else dict(row.settings)
            if not settings:
                if row is not None:
                    session.delete(row)
                return old, None
            new = {**(old or {}), **settings}
            if row is None:
                row = AlarmLimitRow(unit=unit, bed=bed or "", rule=rule)
                session.add(row)
            row.settings, row.updated, row.updated_by = new, at, by
            return old, new
