"""The fleet's figures as pure functions over registry rows: firmware drift, recall matches, maintenance due
dates and completion, uptime from the connection log, utilisation from telemetry, redistribution.

Nothing here does I/O, so each figure is checked against a scenario's known truth in the tests.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from state.fleet import LinkChange, MaintenancePlan, Recall, WorkOrder
from state.registry import Device
from storage.base import HistoryPoint

DAY_MS: Final = 86_400_000
UP_STATES: Final = frozenset({"connected"})
DOWN_STATES: Final = frozenset({"lost", "gateway_offline"})
IDLE_RATIO: Final = 0.05  # a device in use less than this share of the period is idle
BUSY_RATIO: Final = 0.8  # a unit whose devices of a type are in use more than this needs more of them
TARGET_RATIO: Final = 0.7  # moving devices aims to bring a busy unit down to this share
_PARTS = re.compile(r"[0-9]+|[A-Za-z]+")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """A sortable key for a firmware version: numbers compare as numbers (2.10 > 2.9), letters as text."""
    return tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in _PARTS.findall(version))


# --- firmware ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ModelFirmware:
    """The firmware versions one model runs across the fleet."""

    manufacturer: str
    model: str
    devices: int
    versions: dict[str, int]  # version -> devices
    latest: str | None
    behind: list[str]  # devices on an older version than ``latest``
    unknown: list[str]  # devices that never reported a version

    @property
    def drift(self) -> bool:
        """Whether the model runs more than one version."""
        return len(self.versions) > 1


def firmware_drift(devices: Iterable[Device]) -> list[ModelFirmware]:
    """Firmware versions per (manufacturer, model), the newest one, and who lags behind it."""
    groups: dict[tuple[str, str], list[Device]] = defaultdict(list)
    for device in devices:
        groups[device.manufacturer, device.model].append(device)
    out = []
    for (manufacturer, model), members in sorted(groups.items()):
        versions: dict[str, int] = defaultdict(int)
        for device in members:
            if device.firmware:
                versions[device.firmware] += 1
        latest = max(versions, key=version_key) if versions else None
        behind = sorted(d.id for d in members if d.firmware and latest and d.firmware != latest)
        unknown = sorted(d.id for d in members if not d.firmware)
        out.append(ModelFirmware(manufacturer, model, len(members), dict(sorted(versions.items())), latest, behind,
                                 unknown))
    return out


# --- recalls -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RecallMatch:
    """A device a recall names, and why."""

    recall: str
    device: str
    reason: str  # udi, product_code, model
    firmware_unknown: bool = False  # the recall has a firmware range and the device never reported its version


def _same(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def in_range(version: str, low: str, high: str) -> bool:
    """Whether ``version`` is within ``[low, high]`` (an empty bound is open)."""
    key = version_key(version)
    return (not low or key >= version_key(low)) and (not high or key <= version_key(high))


def recall_matches(recall: Recall, devices: Iterable[Device]) -> list[RecallMatch]:
    """The devices a recall names: the same UDI; else the product code (within the device's UDI, or its model);
    else the same manufacturer and model. A firmware range narrows the match; a device of unknown firmware
    is kept and flagged (it may be affected: someone must look)."""
    out = []
    for device in devices:
        reason = None
        if recall.udi and device.udi and _same(recall.udi, device.udi):
            reason = "udi"
        elif recall.product_code and (_same(recall.product_code, device.model) or (
                device.udi is not None and recall.product_code.casefold() in device.udi.casefold())) and (
                not recall.manufacturer or _same(recall.manufacturer, device.manufacturer)):
            reason = "product_code"
        elif recall.model and _same(recall.model, device.model) and (
                not recall.manufacturer or _same(recall.manufacturer, device.manufacturer)):
            reason = "model"
        if reason is None:
            continue
        ranged = bool(recall.firmware_min or recall.firmware_max)
        if ranged and device.firmware and not in_range(device.firmware, recall.firmware_min, recall.firmware_max):
            continue
        out.append(RecallMatch(recall.id, device.id, reason, firmware_unknown=ranged and not device.firmware))
    return sorted(out, key=lambda m: m.device)


# --- maintenance ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DueItem:
    """When a device's next planned maintenance or calibration is due."""

    device: str
    kind: str
    model: str
    interval_days: int
    last_done: int | None
    due_at: int
    manufacturer_schedule: bool

    def overdue(self, now: int) -> bool:
        """Whether the due date has passed."""
        return self.due_at < now


def due_items(devices: Iterable[Device], plans: Iterable[MaintenancePlan],
              last_completed: Mapping[tuple[str, str], int]) -> list[DueItem]:
    """Next due date per device and plan of its model: last completion + interval, or, for a device never
    serviced, the plan's creation + interval (the schedule's clock starts when it is set)."""
    by_model: dict[str, list[MaintenancePlan]] = defaultdict(list)
    for plan in plans:
        by_model[plan.model.casefold()].append(plan)
    out = []
    for device in devices:
        if device.retired_at is not None:
            continue
        for plan in by_model.get(device.model.casefold(), []):
            if plan.manufacturer and not _same(plan.manufacturer, device.manufacturer):
                continue
            last = last_completed.get((device.id, plan.kind))
            base = last if last is not None else plan.created
            out.append(DueItem(device.id, plan.kind, device.model, plan.interval_days, last,
                               base + plan.interval_days * DAY_MS, plan.manufacturer_schedule))
    return sorted(out, key=lambda d: (d.due_at, d.device, d.kind))


@dataclass(frozen=True, slots=True)
class Completion:
    """Planned work orders due in a period and how many were done (at all, and by their due date)."""

    kind: str
    due: int
    completed: int
    on_time: int
    open: list[int] = field(default_factory=list)  # the ids of those not done

    @property
    def rate(self) -> float:
        """Completed over due (1.0 when nothing was due)."""
        return round(self.completed / self.due, 4) if self.due else 1.0


def completion(orders: Iterable[WorkOrder], start: int, end: int) -> list[Completion]:
    """Completion of planned work orders due in ``[start, end)``, per kind and ``all``, as of ``end``."""
    groups: dict[str, list[WorkOrder]] = defaultdict(list)
    for order in orders:
        if order.planned and order.due_at is not None and start <= order.due_at < end:
            groups[order.kind].append(order)
            groups["all"].append(order)
    out = []
    for kind in sorted(groups, key=lambda k: (k == "all", k)):
        members = groups[kind]
        done = [o for o in members if o.closed_at is not None and o.closed_at < end]
        on_time = [o for o in done if o.due_at is not None and o.closed_at is not None and o.closed_at <= o.due_at]
        out.append(Completion(kind, len(members), len(done), len(on_time),
                              sorted(o.id for o in members if o not in done)))
    if not out:
        out.append(Completion("all", 0, 0, 0))
    return out


# --- uptime --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Uptime:
    """How long a device was connected in a period; ``known_ms`` is the part its state was known at all."""

    device: str
    period_ms: int
    connected_ms: int
    known_ms: int
    outages: int  # times it went from connected to lost or to an offline gateway

    @property
    def ratio(self) -> float | None:
        """Connected over known time (None when nothing was known)."""
        return round(self.connected_ms / self.known_ms, 4) if self.known_ms else None


def uptime(device: str, before: LinkChange | None, changes: Sequence[LinkChange], start: int, end: int) -> Uptime:
    """A device's uptime over ``[start, end)`` from its state as the period began and its changes in it."""
    if end <= start:
        raise ValueError("uptime: the period must end after it starts")
    state, since = (before.state, start) if before is not None else (None, start)
    connected = known = outages = 0
    for change in sorted((c for c in changes if c.subject == device and start <= c.ts < end), key=lambda c: c.ts):
        if state is not None:
            known += change.ts - since
            connected += change.ts - since if state in UP_STATES else 0
        if state in UP_STATES and change.state in DOWN_STATES:
            outages += 1
        state, since = change.state, change.ts
    if state is not None:
        known += end - since
        connected += end - since if state in UP_STATES else 0
    return Uptime(device, end - start, connected, known, outages)


# --- utilisation ---------------------------------------------------------------------------------------------
def in_use_ms(buckets: Iterable[HistoryPoint], step_ms: int, start: int, end: int,
              in_use: Callable[[HistoryPoint], bool]) -> int:
    """Time in use from one bucket per ``step_ms``: a bucket counts whole when ``in_use`` says so (clipped to
    the period)."""
    total = 0
    for bucket in buckets:
        if bucket.count and in_use(bucket):
            total += max(0, min(bucket.ts + step_ms, end) - max(bucket.ts, start))
    return total


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """Devices of one type owned by one unit, and how much of the period they were in use."""

    type: str
    unit: str | None
    devices: list[str]
    in_use_ms: int
    period_ms: int
    idle: list[str]  # in use less than IDLE_RATIO of the period

    @property
    def ratio(self) -> float:
        """In-use time over available time (devices x period), 0..1."""
        total = len(self.devices) * self.period_ms
        return round(self.in_use_ms / total, 4) if total else 0.0


def usage_groups(types: Mapping[str, str], units: Mapping[str, str | None], used: Mapping[str, int],
                 period_ms: int) -> list[UsageGroup]:
    """Group per-device in-use time (``used``) by (type, unit)."""
    groups: dict[tuple[str, str | None], list[str]] = defaultdict(list)
    for device, type_ in types.items():
        groups[type_, units.get(device)].append(device)
    return [UsageGroup(type_, unit, sorted(members), sum(used.get(d, 0) for d in members), period_ms,
                       sorted(d for d in members if used.get(d, 0) < IDLE_RATIO * period_ms))
            for (type_, unit), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))]


@dataclass(frozen=True, slots=True)
class Move:
    """A suggestion: lend idle devices of a type from one unit to a busier one."""

    type: str
    from_unit: str
    to_unit: str
    devices: list[str]


def redistribution(groups: Sequence[UsageGroup]) -> list[Move]:
    """Idle devices moved from units that do not use them to units whose devices of the type are busier than
    BUSY_RATIO, enough to bring those down to TARGET_RATIO; each lending unit keeps one idle device spare."""
    moves = []
    by_type: dict[str, list[UsageGroup]] = defaultdict(list)
    for group in groups:
        if group.unit is not None:
            by_type[group.type].append(group)
    for type_, members in sorted(by_type.items()):
        spare = {g.unit: list(g.idle[1:]) for g in members if g.unit is not None}
        for busy in sorted((g for g in members if g.ratio > BUSY_RATIO), key=lambda g: -g.ratio):
            needed = math.ceil(busy.in_use_ms / (TARGET_RATIO * busy.period_ms)) - len(busy.devices)
            for donor in sorted(spare, key=lambda u: -len(spare[u])):
                if needed <= 0 or donor == busy.unit or not spare[donor]:
                    continue
                lent, spare[donor] = spare[donor][:needed], spare[donor][needed:]
                needed -= len(lent)
                if busy.unit is not None:
                    moves.append(Move(type_, donor, busy.unit, lent))
    return moves
