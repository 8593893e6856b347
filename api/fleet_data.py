"""What the fleet routes read: the registry with asset locations, discovered devices, live health, usage.

:class:`FleetData` gathers rows from the relational state, the time-series store and the live view; the
figures themselves are pure (:mod:`api.fleet_figures`). Every method is synchronous (run it in a thread).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from api import fleet_figures as figures
from api.view import LiveView
from devices.contract import FLAG_CLOCK_SKEW, DeviceEvent, DeviceInfo
from devices.site import Site
from state.assets import AssetLocation
from state.db import State
from state.registry import Device
from storage.base import HistoryPoint, TimeSeriesStore

log = logging.getLogger(__name__)

HIGH_RISK_CLASSES: Final = frozenset({"iib", "iii", "c", "d", "high"})  # EU MDR IIb/III, IVD C/D, or "high"
BATTERY_METRICS: Final = ("WARDLINK_BATTERY_CHARGE", "MDC_ATTR_VAL_BATT_CHARGE")
GATEWAY_STALE_MS: Final = 20_000
SYNC_OVERLAP_MS: Final = 60_000
CSV_FIELDS: Final = ("id", "driver", "gateway", "unit", "bed", "manufacturer", "model", "serial_number", "udi",
                     "risk_class", "life_support", "firmware", "connection", "retired_at")


@dataclass(frozen=True, slots=True)
class Usage:
    """How a device type shows it is in use: the metric to read and the test of a bucket of it."""

    type: str
    metric: str
    in_use: Callable[[HistoryPoint], bool]
    needs_bed: bool = False  # only devices bound to a bed (a vendor gateway is not a monitor)


def _pump_in_use(bucket: HistoryPoint) -> bool:
    return bucket.max >= 1.0  # WARDLINK_PUMP_STATE: 0 stopped; infusing, paused, alarm-stopped, KVO are in use


def _connected(bucket: HistoryPoint) -> bool:
    return bucket.count > 0  # a monitor sends vitals only while a patient is connected


USAGE: Final[dict[str, Usage]] = {
    "modbus_pump": Usage("infusion_pump", "WARDLINK_PUMP_STATE", _pump_in_use),
    "bedside_serial": Usage("monitor", "MDC_ECG_HEART_RATE", _connected, needs_bed=True),
    "hl7_pcd": Usage("monitor", "MDC_ECG_HEART_RATE", _connected, needs_bed=True),
}


def high_risk(device: Device) -> bool:
    """Life support, or a high risk class."""
    return device.life_support or (device.risk_class or "").casefold() in HIGH_RISK_CLASSES


def device_out(device: Device, location: AssetLocation | None) -> dict[str, Any]:
    """A registry row as the API shows it, with where the device is (its asset's location, if tagged)."""
    out: dict[str, Any] = msgspec.to_builtins(device)
    out["high_risk"] = high_risk(device)
    out["location"] = None if location is None else {
        "room": location.room, "zone": location.zone, "floor": location.floor, "last_seen": location.last_seen,
        "lost": location.lost}
    return out


def to_csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str] | None = None) -> str:
    """Rows as CSV text (nested values as JSON)."""
    names = list(fields or (rows[0].keys() if rows else []))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=names, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else
                         ("" if v is None else v) for k, v in row.items() if k in names})
    return out.getvalue()


class RegistryCsvError(ValueError):
    """A registry CSV that cannot be imported; the message names the row and the field."""


def parse_registry_csv(text: str, units: set[str], beds: Mapping[str, str]) -> list[dict[str, Any]]:
    """Rows of a registry CSV as ``upsert_device`` fields (every row checked before anything is written)."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "id" not in reader.fieldnames:
        raise RegistryCsvError("registry CSV: the header must name at least the id column")
    unknown = set(reader.fieldnames) - set(CSV_FIELDS)
    if unknown:
        raise RegistryCsvError(f"registry CSV: unknown columns {sorted(unknown)}")
    rows = []
    for number, raw in enumerate(reader, start=2):
        fields: dict[str, Any] = {}
        for key, value in raw.items():
            value = (value or "").strip()
            if key in ("id", "retired_at") or not value:
                continue  # an empty cell leaves the field as it is (clear a field with PUT /devices/{device})
            if key == "life_support":
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise RegistryCsvError(f"row {number}: life_support {value!r}: expected true or false")
                fields[key] = value.lower() in ("true", "1", "yes")
            elif key == "connection":
                try:
                    fields[key] = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise RegistryCsvError(f"row {number}: connection is not JSON: {exc}") from None
                if not isinstance(fields[key], dict):
                    raise RegistryCsvError(f"row {number}: connection must be a JSON object")
            elif key in ("unit", "bed", "udi", "risk_class"):
                fields[key] = value
            else:
                fields[key] = value
        device_id = (raw.get("id") or "").strip()
        if not device_id or len(device_id) > 64:
            raise RegistryCsvError(f"row {number}: id must be 1 to 64 characters")
        if fields.get("unit") is not None and fields["unit"] not in units:
            raise RegistryCsvError(f"row {number}: unit {fields['unit']!r} is not a unit of the site")
        if fields.get("bed") is not None:
            if fields["bed"] not in beds:
                raise RegistryCsvError(f"row {number}: bed {fields['bed']!r} is not a bed of the site")
            fields.setdefault("unit", beds[fields["bed"]])
        rows.append({"id": device_id, **fields})
    return rows


class FleetData:
    """Reads for the fleet routes over the state, the store and the live view."""

    def __init__(self, site: Site, state: State, store: TimeSeriesStore, view: LiveView) -> None:
        """Read from these parts."""
        self.site, self.state, self.store, self.view = site, state, store, view
        self.gateway_units = {g.id: g.unit for g in site.gateways}
        self._synced_to = 0

    def sync_discovered(self, now: int) -> int:
        """Record in the registry the identities gateways announced since the last sync (new devices, new
        firmware); returns how many devices changed."""
        start = max(0, self._synced_to - SYNC_OVERLAP_MS)
        newest: dict[str, DeviceInfo] = {}
        for info in self.store.events(kind="dev", start_ms=start, end_ms=now + 1, limit=100_000):
            if isinstance(info, DeviceInfo) and (info.device not in newest or info.ts >= newest[info.device].ts):
                newest[info.device] = info
        changed = 0
        for info in newest.values():
            known = self.state.registry.device(info.device)
            if known is not None and all(
                    not getattr(info, k) or getattr(info, k) == getattr(known, k)
                    for k in ("manufacturer", "model", "serial_number", "firmware")) and (
                    not info.identifiers.get("udi") or info.identifiers["udi"] == known.udi):
                continue
            device = self.state.registry.record_info(info)
            if device.unit is None:
                unit = (self.site.unit_of_bed(device.bed) if device.bed else None) or \
                    self.gateway_units.get(device.gateway)
                if unit is not None:
                    self.state.registry.upsert_device(device.id, now=info.ts, unit=unit)
            changed += 1
        self._synced_to = max(self._synced_to, now)
        return changed

    def devices(self, *, include_retired: bool = False) -> list[Device]:
        """The registry (after a sync of discovered devices)."""
        return self.state.registry.devices(include_retired=include_retired)

    def locations(self) -> dict[str, AssetLocation]:
        """Where each tagged device is: its asset's location, by device id."""
        return {a.device: a.location for a in self.state.assets.list() if a.device and a.location is not None}

    def live(self) -> dict[str, tuple[str, Any]]:
        """Each device's live link as last heard: device -> (gateway, DeviceHealth)."""
        return {h.device: (g.gateway, h) for g in self.view.gateways.values() for h in g.devices}

    def gateway_state(self, gateway: str, now: int) -> str | None:
        """online, stale (no status for a while) or offline; None if never heard."""
        status = self.view.gateways.get(gateway)
        if status is None:
            return None
        if status.state == "offline":
            return "offline"
        return "stale" if now - status.ts > GATEWAY_STALE_MS else "online"

    def link_state(self, device: Device, now: int, live: Mapping[str, tuple[str, Any]] | None = None) -> str:
        """connected, connecting, lost, gateway_offline, or unknown (never heard); ``live`` as :meth:`live`."""
        gateway_state = self.gateway_state(device.gateway, now)
        if gateway_state in ("offline", "stale"):
            return "gateway_offline"
        heard = (live if live is not None else self.live()).get(device.id)
        return str(heard[1].state) if heard is not None else "unknown"

    def health(self, device: Device, now: int, window_ms: int) -> dict[str, Any]:
        """One device's health: link, last seen, battery, error and technical-alarm counts, frames and retries,
        clock."""
        live = self.live().get(device.id)
        latest = self.store.latest(device=device.id)
        battery = next((x for m in BATTERY_METRICS for x in latest if x.metric == m), None)
        events = [e for e in self.store.events(device=device.id, kind="evt", start_ms=now - window_ms,
                                               end_ms=now + 1, limit=100_000) if isinstance(e, DeviceEvent)]
        technical = [e for e in events if e.alarm_kind == "technical" and e.phase == "start"]
        skews = [e.ts - e.device_ts for e in events if e.device_ts is not None]
        health = live[1] if live is not None else None
        frames = (health.frames_ok + health.frames_bad) if health is not None else 0
        return {
            "device": device.id, "gateway": device.gateway, "unit": device.unit,
            "gateway_state": self.gateway_state(device.gateway, now), "state": self.link_state(device, now, live=(
                {device.id: live} if live is not None else {})),
            "last_seen": health.last_seen if health is not None else (max((x.ts for x in latest), default=None)),
            "battery_pct": battery.value if battery is not None else None,
            "battery_at": battery.ts if battery is not None else None,
            "technical_alarms": len(technical),
            "errors": sum(1 for e in technical if e.priority in ("high", "medium")),
            "frames_ok": health.frames_ok if health is not None else None,
            "frames_rejected": health.frames_bad if health is not None else None,
            "rejected_ratio": round(health.frames_bad / frames, 4) if health is not None and frames else None,
            "retries": health.retries if health is not None else None,
            "clock_skew_flagged": any(x.flags & FLAG_CLOCK_SKEW for x in latest),
            "clock_skew_ms": skews[-1] if skews else None,
            "window_ms": window_ms,
        }

    def gateways(self, devices: Iterable[Device], now: int) -> list[dict[str, Any]]:
        """Per gateway: state from birth, heartbeats and last will; outbox; its devices' link states."""
        members: dict[str, list[Device]] = {}
        live = self.live()
        for device in devices:
            members.setdefault(device.gateway, []).append(device)
        out = []
        for gateway in sorted({g.id for g in self.site.gateways} | set(self.view.gateways) | set(members)):
            status = self.view.gateways.get(gateway)
            states: dict[str, int] = {}
            for device in members.get(gateway, []):
                state = self.link_state(device, now, live)
                states[state] = states.get(state, 0) + 1
            out.append({"gateway": gateway, "unit": self.gateway_units.get(gateway),
                        "state": self.gateway_state(gateway, now) or "unknown",
                        "last_heard": self.view.gateway_heard.get(gateway),
                        "version": status.version if status else None,
                        "outbox_depth": status.outbox_depth if status else None,
                        "outbox_shed": status.outbox_shed if status else None,
                        "devices": dict(sorted(states.items()))})
        return out

    def usage(self, devices: Iterable[Device], start: int, end: int) -> tuple[list[figures.UsageGroup], int]:
        """In-use time per (type, owning unit) from telemetry over ``[start, end)``; also the bucket width."""
        step = max(60_000, -(-(end - start) // 10_000 // 60_000) * 60_000)
        types: dict[str, str] = {}
        units: dict[str, str | None] = {}
        used: dict[str, int] = {}
        for device in devices:
            usage = USAGE.get(device.driver)
            if usage is None or (usage.needs_bed and device.bed is None):
                continue
            buckets = self.store.history(device=device.id, metric=usage.metric, start_ms=start, end_ms=end,
                                         step_ms=step)
            types[device.id], units[device.id] = usage.type, device.unit
            used[device.id] = figures.in_use_ms(buckets, step, start, end, usage.in_use)
        return figures.usage_groups(types, units, used, end - start), step
