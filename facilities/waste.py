"""Medical-waste tracking: every scan recorded in the custody chain, and the "waste." alerts (DOMAIN.md section 7).

The facilities service calls :meth:`WasteTracker.handle` with every ``WasteEvent`` (and every
``Observation``: those of a storage-room temperature logger matter here) and :meth:`WasteTracker.tick`
periodically. Both return the alerts raised, changed or resolved, for the service to publish.

Alerts (``type``, ``source``)::

    waste.weight_mismatch      bag     storage intake weight differs from the collected weight beyond tolerance
    waste.missing_step         bag     a scan skips a point (e.g. storage without a collector), or a bag
                                       sealed on the ward is not collected in time, or the disposer gave
                                       no manifest number
    waste.out_of_order         bag     a scan for a point the bag has passed, or earlier than its last step
    waste.storage_overdue      bag     held in storage beyond ``storage_max_h``
    waste.no_handover          unit    no bag of the unit left the ward by ``day_check_hour`` local time
    waste.storage_temperature  device  storage room above ``storage_max_c`` while it holds waste

Every alert escalates in three levels while it stays open: handler, then department head after
``escalate_after_min[0]`` minutes, then hospital after ``escalate_after_min[1]``; the level is in the
message and the priority (low, medium, high). Alerts derived from the records (overdue storage, no
handover, not collected) take their onset from the records, so a restarted tracker raises the same
alert at the same level. Records are never changed or deleted here: custody rows are append-only.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Annotated, Final

import msgspec

from devices.contract import FLAG_NO_ALARM, Alert, Observation, WasteEvent
from devices.site import Site
from state.db import State
from state.errors import CustodyError
from state.waste import Bag, Handover

if TYPE_CHECKING:
    from facilities.sitemap import SiteMap

log = logging.getLogger(__name__)

LEVELS: Final = ("handler", "department_head", "hospital")
"""The three escalation levels of a waste alert, first to last."""
PRIORITY_OF_LEVEL: Final = ("low", "medium", "high")
ORDER: Final = ("ward", "collector", "storage", "disposer")
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
YEAR_MS: Final = 366 * DAY_MS  # a year is never shorter than this, so a retention bound is never early


class WasteSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits of the waste rules (DOMAIN.md section 7); the ``[facilities.waste]`` table of the config."""

    storage_max_h: Annotated[float, msgspec.Meta(gt=0)] = 48.0
    weight_tolerance: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.02
    retention_years: Annotated[int, msgspec.Meta(ge=3)] = 3  # never less: the regulation's minimum
    escalate_after_min: tuple[Annotated[float, msgspec.Meta(gt=0)], Annotated[float, msgspec.Meta(gt=0)]] = (
        60.0, 240.0)  # minutes open before level 2 (department head) and level 3 (hospital)
    collect_within_h: Annotated[float, msgspec.Meta(gt=0)] = 24.0
    day_check_hour: Annotated[int, msgspec.Meta(ge=0, le=23)] = 20  # local hour after which "no handover" is due
    utc_offset_min: Annotated[int, msgspec.Meta(ge=-720, le=840)] = 480  # the hospital's local time (China)
    storage_max_c: float = 20.0
    storage_loggers: list[str] = []  # temperature loggers in the storage room (the site map adds its own)
    units: list[str] | None = None  # units expected to hand waste over daily; None: every unit of the site

    def __post_init__(self) -> None:
        """Escalation steps must come in order."""
        if self.escalate_after_min[0] >= self.escalate_after_min[1]:
            raise ValueError("escalate_after_min: the hospital level must come after the department head level")


def storage_loggers(site: Site, settings: WasteSettings, site_map: SiteMap | None) -> frozenset[str]:
    """The waste store's temperature loggers: ``storage_loggers``, and the devices the site map puts in a
    waste-storage room that are not the site's scan points."""
    loggers = set(settings.storage_loggers)
    if site_map is not None:
        scan_points = {d.id for d in site.devices if d.kind == "waste_mqtt"}
        loggers.update(d for room in site_map.rooms_of("waste_storage") for d in room.devices if d not in scan_points)
    return frozenset(loggers)


def retained_until(sealed_at: int, settings: WasteSettings) -> int:
    """The earliest time a bag's records may be archived away (never deleted by Wardlink itself)."""
    return sealed_at + settings.retention_years * YEAR_MS


def _alert_id(rule: str, subject: str) -> str:
    """A stable id within the 64 characters of the alert table."""
    text = f"waste.{rule}:{subject}"
    return text if len(text) <= 64 else f"waste.{rule}:{hashlib.sha256(subject.encode()).hexdigest()[:32]}"


class _Open(msgspec.Struct):
    """An open alert, the level it has reached, and whether the records (not a scan) raised it."""

    alert: Alert
    level: int
    derived: bool = False


class WasteTracker:
    """Records waste scans in the custody chain and raises "waste." alerts (called by the facilities service)."""

    def __init__(self, site: Site, state: State, settings: WasteSettings | None = None, *,
                 site_map: SiteMap | None = None) -> None:
        """Track the site's waste in ``state``; the site map (when given) names the storage room's loggers."""
        self.site, self.state, self.settings = site, state, settings or WasteSettings()
        self.loggers = storage_loggers(site, self.settings, site_map)
        self.units = self.settings.units if self.settings.units is not None else [u.id for u in site.units]
        self.zone = timezone(timedelta(minutes=self.settings.utc_offset_min))
        self.open: dict[str, _Open] = {}
        self.storage_temperature: dict[str, float] = {}  # logger -> its warmest probe's newest reading
        self._probes: dict[str, dict[str, float]] = {}  # logger -> metric -> newest reading

    # -- events -------------------------------------------------------------------------------------

    def handle(self, event: WasteEvent | Observation, now: int) -> list[Alert]:
        """Record one scan (or take a storage-room temperature reading); return alerts raised or changed.

        A scan the custody chain refuses is not recorded; it raises ``waste.missing_step`` or
        ``waste.out_of_order``. A repeated delivery of a recorded scan changes nothing.
        """
        if isinstance(event, Observation):
            return self._temperature(event, now)
        bag = self.state.waste.bag(event.bag)
        chain = self.state.waste.chain(event.bag) if bag is not None else []
        if self._duplicate(event, bag, chain):
            return []
        try:
            self.state.waste.record_scan(event)
        except CustodyError as exc:
            return [self._refused(event, bag, chain, str(exc), now)]
        out: list[Alert] = []
        if event.point == "storage" and chain:
            out += self._check_weight(event, chain[-1], bag, now)
        if event.point == "disposer" and not event.manifest:
            out.append(self._raise("missing_step", event.bag, now, event.ts, unit=_unit(bag, event),
                                   message=f"bag {event.bag}: handed to the disposer {event.handler} without a "
                                           "manifest number"))
        if event.point != "ward":  # a bag moving on closes what its previous place raised
            out += self._resolve(_alert_id("missing_step", event.bag), now, only_if_derived=True)
            if event.point == "disposer":
                out += self._resolve(_alert_id("storage_overdue", event.bag), now)
        if event.point in ("storage", "disposer"):
            out += self._check_temperature(now)
        return out

    @staticmethod
    def _duplicate(event: WasteEvent, bag: Bag | None, chain: list[Handover]) -> bool:
        """Whether this exact scan is already recorded (at-least-once delivery repeats scans)."""
        if event.point == "ward":
            return bag is not None and bag.sealed_at == event.ts and bag.sealed_by == event.handler
        return any(h.to_point == event.point and h.at == event.ts and h.handler == event.handler for h in chain)

    def _refused(self, event: WasteEvent, bag: Bag | None, chain: list[Handover], reason: str, now: int) -> Alert:
        """The alert of a scan the chain refused: a skipped point, or one out of order."""
        reached = "ward" if bag is not None and not chain else (chain[-1].to_point if chain else None)
        if reached is None:
            rule, what = "missing_step", f"scanned at {event.point} but never sealed on a ward"
        elif ORDER.index(event.point) > ORDER.index(reached) + 1:
            skipped = ", ".join(ORDER[ORDER.index(reached) + 1:ORDER.index(event.point)])
            rule, what = "missing_step", f"scanned at {event.point}, but the chain is at {reached} (no {skipped} scan)"
        else:
            rule, what = "out_of_order", f"scanned at {event.point} out of order ({reason})"
        log.warning("waste scan refused: %s", reason)
        return self._raise(rule, event.bag, now, event.ts, unit=_unit(bag, event), message=f"bag {event.bag}: {what}")

    def _check_weight(self, event: WasteEvent, collected: Handover, bag: Bag | None, now: int) -> list[Alert]:
        """Flag an intake whose weight differs from the collected weight beyond the tolerance."""
        if collected.to_point != "collector" or collected.weight_g <= 0:
            return []
        difference = (event.weight_g - collected.weight_g) / collected.weight_g
        if abs(difference) <= self.settings.weight_tolerance:
            return []
        return [self._raise("weight_mismatch", event.bag, now, event.ts, unit=_unit(bag, event),
                            value=round(difference * 100, 2),
                            message=f"bag {event.bag}: storage intake {event.weight_g:.0f} g differs from the "
                                    f"collected {collected.weight_g:.0f} g by {difference * 100:+.1f}% (limit "
                                    f"+/-{self.settings.weight_tolerance * 100:g}%): intake flagged")]

    def _temperature(self, obs: Observation, now: int) -> list[Alert]:
        """A logger's probes (air, product) each report; the store is as warm as its warmest probe."""
        if obs.device not in self.loggers or obs.unit != "Cel":
            return []
        probes = self._probes.setdefault(obs.device, {})
        if obs.flags & FLAG_NO_ALARM:  # a probe error: that probe no longer counts
            probes.pop(obs.metric, None)
        else:
            probes[obs.metric] = obs.value
        if probes:
            self.storage_temperature[obs.device] = max(probes.values())
        else:
            self.storage_temperature.pop(obs.device, None)
        return self._check_temperature(now)

    def _check_temperature(self, now: int) -> list[Alert]:
        """Raise or resolve the storage-temperature alert of every logger, given what storage holds now."""
        if not self.storage_temperature:
            return []
        held = self.state.waste.holding("storage")
        out: list[Alert] = []
        for device, value in sorted(self.storage_temperature.items()):
            alert_id = _alert_id("storage_temperature", device)
            if held and value > self.settings.storage_max_c:
                if alert_id not in self.open:
                    out.append(self._raise("storage_temperature", device, now, now, value=value,
                                           message=f"waste storage at {value:.1f} C (above "
                                                   f"{self.settings.storage_max_c:g} C) while holding {len(held)} "
                                                   f"bag{'s' * (len(held) > 1)}"))
            else:
                out += self._resolve(alert_id, now)
        return out

    # -- periodic checks ------------------------------------------------------------------------------

    def tick(self, now: int) -> list[Alert]:
        """Periodic checks (storage beyond its limit, not collected, no handover today, escalation)."""
        out: list[Alert] = []
        held = self.state.waste.holding("storage")
        limit_ms = int(self.settings.storage_max_h * HOUR_MS)
        overdue = set()
        for handover in held:
            if now - handover.at > limit_ms:
                alert_id = _alert_id("storage_overdue", handover.bag)
                overdue.add(alert_id)
                if alert_id not in self.open:
                    bag = self.state.waste.bag(handover.bag)
                    hours = (now - handover.at) / HOUR_MS
                    out.append(self._raise("storage_overdue", handover.bag, now, handover.at + limit_ms,
                                           unit=bag.unit if bag else None, value=round(hours, 1),
                                           message=f"bag {handover.bag}: in storage for {hours:.1f} h (limit "
                                                   f"{self.settings.storage_max_h:g} h)"))
        for alert_id in [a for a, o in self.open.items() if o.alert.type == "waste.storage_overdue"]:
            if alert_id not in overdue:
                out += self._resolve(alert_id, now)
        collect_ms = int(self.settings.collect_within_h * HOUR_MS)
        for bag in self.state.waste.unsealed_pending(now - collect_ms):
            if _alert_id("missing_step", bag.id) not in self.open:
                out.append(self._raise("missing_step", bag.id, now, bag.sealed_at + collect_ms, unit=bag.unit,
                                       derived=True,
                                       message=f"bag {bag.id}: sealed on {bag.unit or 'a ward'} by {bag.sealed_by} and "
                                               f"not collected within {self.settings.collect_within_h:g} h"))
        out += self._no_handover(now)
        if held:
            out += self._check_temperature(now)
        else:
            for alert_id in [a for a, o in self.open.items() if o.alert.type == "waste.storage_temperature"]:
                out += self._resolve(alert_id, now)
        out += self._escalate(now)
        return out

    def _no_handover(self, now: int) -> list[Alert]:
        """After the day's check hour, raise for every unit whose waste has not left the ward today."""
        local = datetime.fromtimestamp(now / 1000, tz=UTC).astimezone(self.zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        due = midnight + timedelta(hours=self.settings.day_check_hour)
        if local < due:
            return []
        since = int(midnight.timestamp() * 1000)
        handed = self.state.waste.collected_units(since, now + 1)
        day = local.strftime("%Y-%m-%d")
        out = []
        for unit in self.units:
            alert_id = _alert_id("no_handover", f"{unit}:{day}")
            if unit in handed:
                out += self._resolve(alert_id, now)
            elif alert_id not in self.open:
                out.append(self._raise("no_handover", f"{unit}:{day}", now, int(due.timestamp() * 1000), unit=unit,
                                       source=unit, message=f"unit {unit}: no waste handed over on {day} "
                                                            f"(checked after {self.settings.day_check_hour}:00)"))
        return out

    def _escalate(self, now: int) -> list[Alert]:
        """Move every open alert up a level once its time at the current level is over."""
        out = []
        for entry in self.open.values():
            before = entry.level
            self._escalate_one(entry, now)
            if entry.level > before:
                entry.alert = self._with_level(entry.alert, entry.level, now)
                out.append(entry.alert)
        return out

    # -- alert bookkeeping ----------------------------------------------------------------------------

    def level(self, alert_id: str) -> str | None:
        """Who an open alert is escalated to now (``handler``, ``department_head``, ``hospital``), or None."""
        entry = self.open.get(alert_id)
        return None if entry is None else LEVELS[entry.level]

    def _with_level(self, alert: Alert, level: int, now: int) -> Alert:
        text = alert.message.split("] ", 1)[-1]
        return msgspec.structs.replace(alert, priority=PRIORITY_OF_LEVEL[level], updated=now,
                                       message=f"[level {level + 1}: {LEVELS[level].replace('_', ' ')}] {text}")

    def _raise(self, rule: str, subject: str, now: int, onset: int, *, message: str, unit: str | None = None,
               value: float | None = None, source: str | None = None, derived: bool = False) -> Alert:
        """Open (or repeat) an alert at the level its age gives it."""
        alert_id = _alert_id(rule, subject)
        existing = self.open.get(alert_id)
        if existing is not None:
            existing.alert = msgspec.structs.replace(existing.alert, repeats=existing.alert.repeats + 1, updated=now,
                                                     value=value)
            return existing.alert
        alert = Alert(id=alert_id, type=f"waste.{rule}", source=source or subject, alarm_kind="advisory",
                      priority="low", state="active", onset=min(onset, now), updated=now, message=message, unit=unit,
                      value=value)
        entry = _Open(alert, 0, derived)
        self.open[alert_id] = entry
        self._escalate_one(entry, now)
        entry.alert = self._with_level(entry.alert, entry.level, now)
        return entry.alert

    def _escalate_one(self, entry: _Open, now: int) -> None:
        steps = [0.0, *self.settings.escalate_after_min]
        open_min = (now - entry.alert.onset) / 60_000
        entry.level = max(i for i, after in enumerate(steps) if open_min >= after)

    def _resolve(self, alert_id: str, now: int, *, only_if_derived: bool = False) -> list[Alert]:
        entry = self.open.get(alert_id)
        if entry is None or (only_if_derived and not entry.derived):
            return []
        del self.open[alert_id]
        return [msgspec.structs.replace(entry.alert, state="resolved", updated=now)]


def _unit(bag: Bag | None, event: WasteEvent) -> str | None:
    """The department a bag belongs to: as sealed, else as the scan says."""
    return bag.unit if bag is not None and bag.unit else event.unit


