"""The fleet registry: units, beds and devices, seeded from the site file and kept by ingest and the API."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.orm import Session

from devices.contract import DeviceInfo
from devices.site import Site

from .models import BedRow, DeviceRow, UnitRow
from .sessions import Sessions

log = logging.getLogger(__name__)


class Device(msgspec.Struct, frozen=True):
    """A device as the registry holds it."""

    id: str
    driver: str
    gateway: str
    unit: str | None
    bed: str | None
    manufacturer: str
    model: str
    serial_number: str
    udi: str | None
    risk_class: str | None
    life_support: bool
    firmware: str
    connection: dict[str, Any]
    discovered: bool
    updated: int
    retired_at: int | None


class Bed(msgspec.Struct, frozen=True):
    """A bed and its unit."""

    id: str
    unit: str


_UNSET: Any = object()


def _device(row: DeviceRow) -> Device:
    """The struct of a row."""
    return Device(id=row.id, driver=row.driver, gateway=row.gateway, unit=row.unit_id, bed=row.bed_id,
                  manufacturer=row.manufacturer, model=row.model, serial_number=row.serial_number, udi=row.udi,
                  risk_class=row.risk_class, life_support=row.life_support, firmware=row.firmware,
                  connection=dict(row.connection), discovered=row.discovered, updated=row.updated,
                  retired_at=row.retired_at)


class Registry:
    """Units, beds and devices."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def seed_from_site(self, site: Site, now: int) -> int:
        """Load the site's units, beds and declared devices; idempotent. Returns how many rows changed.

        Existing rows are updated to match the site (names, bed units, device bindings); rows the site no
        longer names are left alone (retiring a device is an explicit act).
        """
        units_of_gateway = {g.id: g.unit for g in site.gateways}
        changed = 0
        with self._sessions.write("seeding the registry from the site") as session:
            for unit in site.units:
                changed += _put(session, UnitRow, unit.id, name=unit.name)
            session.flush()
            for unit in site.units:
                for position, bed in enumerate(unit.beds):
                    changed += _put(session, BedRow, bed, unit_id=unit.id, position=position)
            session.flush()
            for spec in site.devices:
                unit_id = (site.unit_of_bed(spec.bed) if spec.bed else None) or units_of_gateway.get(spec.gateway)
                changed += _put(session, DeviceRow, spec.id, driver=spec.kind, gateway=spec.gateway, unit_id=unit_id,
                                bed_id=spec.bed, manufacturer=spec.manufacturer, model=spec.model,
                                serial_number=spec.serial_number, connection=dict(spec.connection),
                                discovered=False, _touch=("updated", now))
        log.info("registry seeded from site %s: %d rows changed", site.id, changed)
        return changed

    def units(self) -> list[tuple[str, str]]:
        """Units as ``(id, name)``, by id."""
        with self._sessions.read("reading units") as session:
            return [(r.id, r.name) for r in session.scalars(select(UnitRow).order_by(UnitRow.id))]

    def beds(self, unit: str | None = None) -> list[Bed]:
        """Beds (of one unit, or all), in the site's order."""
        query = select(BedRow).order_by(BedRow.unit_id, BedRow.position, BedRow.id)
        if unit is not None:
            query = query.where(BedRow.unit_id == unit)
        with self._sessions.read("reading beds") as session:
            return [Bed(r.id, r.unit_id) for r in session.scalars(query)]

    def upsert_device(self, device_id: str, *, now: int, driver: str = _UNSET, gateway: str = _UNSET,
                      unit: str | None = _UNSET, bed: str | None = _UNSET, manufacturer: str = _UNSET,
                      model: str = _UNSET, serial_number: str = _UNSET, udi: str | None = _UNSET,
                      risk_class: str | None = _UNSET, life_support: bool = _UNSET, firmware: str = _UNSET,
                      connection: dict[str, Any] = _UNSET, discovered: bool = _UNSET) -> Device:
        """Create a device (driver and gateway required) or change the fields given; others keep their value."""
        fields = {k: v for k, v in {
            "driver": driver, "gateway": gateway, "unit_id": unit, "bed_id": bed, "manufacturer": manufacturer,
            "model": model, "serial_number": serial_number, "udi": udi, "risk_class": risk_class,
            "life_support": life_support, "firmware": firmware, "connection": connection, "discovered": discovered,
        }.items() if v is not _UNSET}
        with self._sessions.write(f"saving device {device_id}") as session:
            row = session.get(DeviceRow, device_id)
            if row is None:
                if "driver" not in fields or "gateway" not in fields:
                    raise ValueError(f"device {device_id}: a new device needs driver and gateway")
                row = DeviceRow(id=device_id, **fields, updated=now)
                session.add(row)
            else:
                for key, value in fields.items():
                    setattr(row, key, value)
                row.updated = now
            session.flush()
            return _device(row)

    def record_info(self, info: DeviceInfo) -> Device:
        """Record a device identity reported by its gateway (discovered at run time, or new firmware)."""
        udi = info.identifiers.get("udi")
        fields: dict[str, Any] = {"driver": info.driver, "gateway": info.gateway, "discovered": info.discovered}
        for key in ("manufacturer", "model", "serial_number", "firmware"):
            if getattr(info, key):
                fields[key] = getattr(info, key)
        if info.bed is not None:
            fields["bed"] = info.bed
        if udi:
            fields["udi"] = udi
        with self._sessions.read(f"reading device {info.device}") as session:
            existing = session.get(DeviceRow, info.device)
        if existing is not None:
            fields["discovered"] = existing.discovered  # a declared device stays declared
        return self.upsert_device(info.device, now=info.ts, **fields)

    def retire(self, device_id: str, at: int) -> Device:
        """Mark a device retired (it stays in the registry for history); raises ``KeyError`` if unknown."""
        with self._sessions.write(f"retiring device {device_id}") as session:
            row = session.get(DeviceRow, device_id)
            if row is None:
                raise KeyError(device_id)
            row.retired_at = at
            row.updated = at
            return _device(row)

    def device(self, device_id: str) -> Device | None:
        """One device, or None."""
        with self._sessions.read(f"reading device {device_id}") as session:
            row = session.get(DeviceRow, device_id)
            return None if row is None else _device(row)

    def devices(self, unit: str | None = None, *, gateway: str | None = None, bed: str | None = None,
                include_retired: bool = False) -> list[Device]:
        """Devices by id, filtered by owning unit, gateway or bound bed; retired ones only when asked."""
        query = select(DeviceRow).order_by(DeviceRow.id)
        if unit is not None:
            query = query.where(DeviceRow.unit_id == unit)
        if gateway is not None:
            query = query.where(DeviceRow.gateway == gateway)
        if bed is not None:
            query = query.where(DeviceRow.bed_id == bed)
        if not include_retired:
            query = query.where(DeviceRow.retired_at.is_(None))
        with self._sessions.read("reading devices") as session:
            return [_device(r) for r in session.scalars(query)]


def _put(session: Session, table: type[UnitRow | BedRow | DeviceRow], key: str, /, *,
         _touch: tuple[str, int] | None = None, **fields: Any) -> int:
    """Insert or update one row to ``fields``; 1 if anything changed (then ``_touch`` is set too), else 0."""
    row = session.get(table, key)
    if row is None:
        extra = {_touch[0]: _touch[1]} if _touch else {}
        session.add(table(id=key, **fields, **extra))
        return 1
    if all(getattr(row, k) == v for k, v in fields.items()):
        return 0
    for k, v in fields.items():
        setattr(row, k, v)
    if _touch:
        setattr(row, _touch[0], _touch[1])
    return 1
