"""Asset status from telemetry, par-level shortfalls and utilisation (pure functions over registry data).

* **In use from telemetry**: an asset linked to a device follows what the device says it is doing. An
  infusion pump (``WARDLINK_PUMP_STATE``, gateway/drivers/modbus_pump/map.md) infusing, paused, in keep
  vein open or stopped by an alarm is ``in_use``; when it stops after use it becomes ``dirty`` (it has
  been on a patient and must be cleaned before the next one). Clean and in repair are set by staff;
  an asset in repair is never changed by telemetry.
* **Par level**: a unit should have ``minimum`` clean assets of a type at hand. Available means clean,
  not lost, and in one of the unit's rooms (an asset never located counts for its owning unit).
* **Utilisation**: the share of the period an asset of a type was ``in_use``, from the status history,
  per type and unit (the owning unit); infusion pumps are typically 30-45 % utilised.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from devices.contract import FLAG_NO_ALARM, Observation
from state.assets import Asset, AssetEvent, AssetStatus, ParLevel

PUMP_STATE: Final = "WARDLINK_PUMP_STATE"
PUMP_IN_USE: Final = frozenset({1.0, 2.0, 3.0, 4.0})  # infusing, paused, stopped by an alarm, keep vein open
PUMP_STOPPED: Final = 0.0


def status_from(observation: Observation, current: str) -> AssetStatus | None:
    """The status a device's reading implies for its asset (None: no change)."""
    if observation.metric != PUMP_STATE or observation.flags & FLAG_NO_ALARM or current == "in_repair":
        return None
    if observation.value in PUMP_IN_USE:
        return None if current == "in_use" else "in_use"
    if observation.value == PUMP_STOPPED and current == "in_use":
        return "dirty"
    return None


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A unit with fewer clean assets of a type at hand than its par level."""

    unit: str
    type: str
    minimum: int
    available: int

    @property
    def missing(self) -> int:
        """How many are missing to reach the par level."""
        return self.minimum - self.available


def availability(assets: Iterable[Asset], room_units: Mapping[str, str | None]) -> dict[tuple[str, str], int]:
    """Clean, not lost assets per (unit, type): the unit of the room they are in, else their owning unit."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for asset in assets:
        if asset.status != "clean" or (asset.location is not None and asset.location.lost):
            continue
        unit = room_units.get(asset.location.room) if asset.location is not None else asset.unit
        if unit is not None:
            counts[unit, asset.type] += 1
    return counts


def shortfalls(assets: Iterable[Asset], levels: Iterable[ParLevel],
               room_units: Mapping[str, str | None]) -> list[Shortfall]:
    """Par levels not met, by unit and type."""
    available = availability(assets, room_units)
    return [Shortfall(p.unit, p.type, p.minimum, available.get((p.unit, p.type), 0))
            for p in sorted(levels, key=lambda p: (p.unit, p.type)) if available.get((p.unit, p.type), 0) < p.minimum]


@dataclass(frozen=True, slots=True)
class Utilisation:
    """How much of a period the assets of one type and unit were in use."""

    type: str
    unit: str | None
    assets: int
    in_use_ms: int
    period_ms: int

    @property
    def ratio(self) -> float:
        """In-use time over available time (assets x period), 0..1."""
        total = self.assets * self.period_ms
        return round(self.in_use_ms / total, 4) if total else 0.0


def utilisation(assets: Sequence[Asset], history: Iterable[AssetEvent], before: Mapping[str, str],
                start: int, end: int) -> list[Utilisation]:
    """In-use share per (type, owning unit) over ``[start, end)``.

    ``history`` is the status lines of the period in time order, ``before`` each asset's status as the
    period began (an asset with neither counts as never in use in the period).
    """
    if end <= start:
        raise ValueError("utilisation: the period must end after it starts")
    status = dict(before)
    since = dict.fromkeys(status, start)
    used: dict[str, int] = defaultdict(int)
    for line in history:
        if line.event != "status" or line.status is None or not start <= line.ts < end:
            continue
        if status.get(line.asset) == "in_use":
            used[line.asset] += line.ts - since[line.asset]
        status[line.asset], since[line.asset] = line.status, line.ts
    for asset, current in status.items():
        if current == "in_use":
            used[asset] += end - since[asset]
    groups: dict[tuple[str, str | None], list[Asset]] = defaultdict(list)
    for item in assets:
        groups[item.type, item.unit].append(item)
    return [Utilisation(type_, unit, len(members), sum(used.get(a.id, 0) for a in members), end - start)
            for (type_, unit), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))]
