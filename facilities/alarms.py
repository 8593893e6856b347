"""Facilities alerts: an asset through an exit (theft), an asset lost, a unit below par, a tag's battery low.

Each alert has one id per condition (``fac.exit.<asset>``, ``fac.lost.<asset>``, ``fac.par.<unit>.<type>``,
``fac.battery.<asset>``), so a condition raised again while open counts a repeat instead of a second
alert, and it resolves when the condition clears: the asset is seen inside again, found again, the unit
is back at par, or the tag reports a charged battery (hysteresis of :data:`BATTERY_CLEAR_MARGIN`).
Alerts are ``advisory`` (about equipment, never a patient); they go to facilities staff.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import msgspec

from devices.contract import Alert, Priority
from devices.site import Room
from facilities.assets import Shortfall
from facilities.location import LocationEvent
from state.assets import Asset

PREFIX: Final = "fac."
TYPES: Final = ("asset.exit", "asset.lost", "par.below", "tag.battery_low")
BATTERY_CLEAR_MARGIN: Final = 10.0


class FacilityAlarms:
    """Raises and resolves the facilities alerts; keeps the open ones (restored from the state at start)."""

    def __init__(self, rooms: Mapping[str, Room], battery_low_pct: float = 20.0) -> None:
        """``rooms`` says which rooms are exits."""
        self.rooms = rooms
        self.battery_low_pct = battery_low_pct
        self.open: dict[str, Alert] = {}

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Adopt stored open alerts of ours."""
        for alert in alerts:
            self.adopt(alert)

    def adopt(self, alert: Alert) -> None:
        """Keep what was stored (a staff acknowledgement wins over our copy)."""
        if not alert.id.startswith(PREFIX):
            return
        if alert.state == "resolved":
            self.open.pop(alert.id, None)
        else:
            self.open[alert.id] = alert

    def _raise(self, alert_id: str, type_: str, source: str, priority: Priority, message: str, now: int,
               unit: str | None, value: float | None = None) -> Alert:
        current = self.open.get(alert_id)
        if current is not None:
            alert = msgspec.structs.replace(current, updated=now, repeats=current.repeats + 1, message=message,
                                            value=value)
        else:
            alert = Alert(id=alert_id, type=type_, source=source, alarm_kind="advisory", priority=priority,
                          state="active", onset=now, updated=now, message=message, unit=unit, value=value)
        self.open[alert_id] = alert
        return alert

    def _resolve(self, alert_id: str, now: int, why: str) -> Alert | None:
        current = self.open.pop(alert_id, None)
        if current is None:
            return None
        return msgspec.structs.replace(current, state="resolved", updated=now, condition_cleared=True,
                                       message=f"{current.message} - {why}")

    def location(self, events: Iterable[LocationEvent], assets: Mapping[str, Asset]) -> list[Alert]:
        """Alerts from location transitions: exits crossed, assets lost, lost or departed assets back inside."""
        out: list[Alert] = []
        for event in events:
            asset = assets.get(event.asset)
            unit = asset.unit if asset is not None else None
            what = f"{event.asset} ({asset.type})" if asset is not None else event.asset
            if event.kind == "lost":
                out.append(self._raise(f"{PREFIX}lost.{event.asset}", "asset.lost", event.asset, "medium",
                                       f"{what} not seen since it was in {event.room}", event.ts, unit))
                continue
            if event.kind != "entered":
                continue
            found = self._resolve(f"{PREFIX}lost.{event.asset}", event.ts, f"found in {event.room}")
            if found is not None:
                out.append(found)
            room = self.rooms.get(event.room)
            if room is not None and room.exit:
                out.append(self._raise(f"{PREFIX}exit.{event.asset}", "asset.exit", event.asset, "high",
                                       f"{what} passed exit {event.room}", event.ts, unit))
            else:
                back = self._resolve(f"{PREFIX}exit.{event.asset}", event.ts, f"back inside in {event.room}")
                if back is not None:
                    out.append(back)
        return out

    def battery(self, asset: Asset, percent: float, now: int) -> Alert | None:
        """A tag's battery reading: raise below the threshold, resolve once clearly charged again."""
        alert_id = f"{PREFIX}battery.{asset.id}"
        if percent <= self.battery_low_pct:
            if alert_id in self.open:
                return None  # already raised: a beacon reports every few seconds, do not count each
            return self._raise(alert_id, "tag.battery_low", asset.id, "low",
                               f"tag {asset.tag} of {asset.id} ({asset.type}): battery {percent:.0f} %", now,
                               asset.unit, percent)
        if percent >= self.battery_low_pct + BATTERY_CLEAR_MARGIN:
            return self._resolve(alert_id, now, f"battery {percent:.0f} %")
        return None

    def par(self, shortfalls: Iterable[Shortfall], units: Iterable[str], now: int) -> list[Alert]:
        """Raise a par alert per (unit, type) short, resolve those back at par (``units``: those checked)."""
        out: list[Alert] = []
        short = {f"{PREFIX}par.{s.unit}.{s.type}": s for s in shortfalls}
        for alert_id, s in short.items():
            current = self.open.get(alert_id)
            if current is not None and current.value == s.available:
                continue  # unchanged: not a repeat
            out.append(self._raise(alert_id, "par.below", s.unit, "low",
                                   f"{s.unit}: {s.available} clean {s.type} at hand, par level {s.minimum}", now,
                                   s.unit, float(s.available)))
        checked = set(units)
        for alert_id in [a for a, alert in self.open.items() if alert.type == "par.below" and a not in short]:
            if self.open[alert_id].unit in checked:
                resolved = self._resolve(alert_id, now, "back at par level")
                if resolved is not None:
                    out.append(resolved)
        return out
