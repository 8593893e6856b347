"""I/O-free decoding of a register snapshot through a map: typed values, status bits, then contract items.

Policy for values a device marks as not a measurement (a sentinel such as -32768, a reading outside
``invalid_below``/``invalid_above``, a float that is NaN or infinite, an exponent out of range): the
observation is **skipped** and a technical ``sensor.error`` event starts for that point; it ends when the
point reads a valid value again. A sentinel is not a value, so storing it (even flagged) would put
-3276.8 degC into charts and aggregates, while a flagged value raises no alarm at all; a fridge probe that
fails must be seen by someone. Status bits are level-triggered: an event starts on the first snapshot in
which its condition holds and ends on the first in which it does not. :class:`MapState` remembers which
conditions are active between snapshots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec

from devices import mdc
from devices.contract import FLAG_IMPLAUSIBLE, FLAG_INVALID, DeviceEvent, DeviceInfo, Item, Observation, Phase
from devices.site import DeviceSpec
from gateway.drivers.modbus_common.codec import decode_text, decode_value, shortest_float32
from gateway.drivers.modbus_common.errors import RegisterError
from gateway.drivers.modbus_common.regmap import MAX_EXPONENT, Bit, Point, RegisterMap, Snapshot, Table, words_at

SENSOR_ERROR = "sensor.error"
DEVICE_STREAM = "device"
ALARM_STREAM = "alarms"


@dataclass(frozen=True, slots=True)
class PointReading:
    """A decoded point: ``value`` is None when the device said "no measurement" (``error`` says why)."""

    raw: int | float
    value: float | None
    error: str = ""
    flags: int = 0


@dataclass(slots=True)
class MapState:
    """Conditions active after the last snapshot, keyed ``bit:<name>`` and ``sensor:<name>``."""

    active: set[str] = field(default_factory=set)


def _exact(value: int | float, scale: float, exponent: int, offset: float) -> float:
    # Decimal arithmetic, one rounding at the end: raw 366 * 0.1 gives exactly the float 36.6.
    number = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    return float((number * Decimal(repr(scale))).scaleb(exponent) + Decimal(repr(offset)))


def _raw(point: Point, snapshot: Mapping[str, Mapping[int, int]]) -> int | float:
    return decode_value(words_at(snapshot, point.table, point.address, point.words), point.type, point.word_order)


def _read(point: Point, raw: int | float, exponent: PointReading | None) -> PointReading:
    if isinstance(raw, float):
        if not math.isfinite(raw):
            return PointReading(raw, None, "not a finite number")
        base: int | float = shortest_float32(raw)
    else:
        base = raw
        if raw in point.sentinels:
            return PointReading(raw, None, f"sensor error code {raw}")
    if point.invalid_below is not None and raw < point.invalid_below:
        return PointReading(raw, None, f"raw value {raw} below {point.invalid_below:g}")
    if point.invalid_above is not None and raw > point.invalid_above:
        return PointReading(raw, None, f"raw value {raw} above {point.invalid_above:g}")
    if point.enum:
        mapped = point.enum.get(int(raw))
        # A code the map does not know is passed through as itself, flagged: never dropped, never guessed.
        return PointReading(raw, float(raw), flags=FLAG_INVALID) if mapped is None else PointReading(raw, mapped)
    power = 0
    if exponent is not None:
        if exponent.value is None:
            return PointReading(raw, None, f"exponent point unreadable ({exponent.error})")
        power = int(exponent.raw) * point.exponent_sign
        if abs(power) > MAX_EXPONENT:
            return PointReading(raw, None, f"exponent {power} out of range")
    return PointReading(raw, _exact(base, point.scale, power, point.offset))


def read_points(regmap: RegisterMap, snapshot: Mapping[str, Mapping[int, int]]) -> dict[str, PointReading]:
    """Decode every point of the map; RegisterError when the snapshot lacks a register or holds a bad word."""
    raws = {p.name: _raw(p, snapshot) for p in regmap.points}
    # Exponent points never have exponents themselves (the map checks), so one pass in two rounds suffices.
    plain = {p.name: _read(p, raws[p.name], None) for p in regmap.points if p.exponent is None}
    scaled = {p.name: _read(p, raws[p.name], plain[p.exponent]) for p in regmap.points if p.exponent is not None}
    return {p.name: plain[p.name] if p.exponent is None else scaled[p.name] for p in regmap.points}


def conditions(regmap: RegisterMap, readings: Mapping[str, PointReading]) -> dict[str, bool]:
    """Whether each status bit's condition holds (a bit defined ``active = "clear"`` holds when the bit is 0)."""
    out: dict[str, bool] = {}
    for bit in regmap.bits:
        point = regmap.point(bit.point)
        unsigned = int(readings[bit.point].raw) & ((1 << (16 * point.words)) - 1)
        is_set = bool((unsigned >> bit.bit) & 1)
        out[bit.name] = is_set == bit.active_when_set
    return out


def _event(spec: DeviceSpec, received: int, bit: Bit, phase: Phase) -> DeviceEvent:
    text = bit.text if phase == "start" else f"{bit.text} (cleared)" if bit.text else ""
    return DeviceEvent(device=spec.id, stream=ALARM_STREAM, seq=0, ts=received, event=bit.event or bit.name,
                       alarm_kind=bit.alarm_kind, priority=bit.priority, phase=phase, source=bit.source, text=text,
                       bed=spec.bed)


def _sensor_event(spec: DeviceSpec, regmap: RegisterMap, received: int, point: Point, phase: Phase,
                  reason: str) -> DeviceEvent:
    text = f"{point.name}: {reason}" if phase == "start" else f"{point.name}: valid again"
    return DeviceEvent(device=spec.id, stream=ALARM_STREAM, seq=0, ts=received, event=SENSOR_ERROR,
                       alarm_kind="technical", priority=regmap.sensor_error_priority, phase=phase,
                       source=point.metric, text=text, bed=spec.bed)


def _transition(state: MapState, key: str, active: bool) -> Phase | None:
    if active and key not in state.active:
        state.active.add(key)
        return "start"
    if not active and key in state.active:
        state.active.discard(key)
        return "end"
    return None


def to_items(spec: DeviceSpec, regmap: RegisterMap, snapshot: Mapping[str, Mapping[int, int]], state: MapState,
             received: int) -> list[Item]:
    """Contract items for one snapshot: event ends, event starts, then observations (``seq`` left 0)."""
    readings = read_points(regmap, snapshot)
    held = conditions(regmap, readings)
    events: list[Item] = []
    observations: list[Item] = []
    flags: dict[str, int] = {}
    for bit in regmap.bits:
        if held[bit.name] and bit.flag:
            for name in bit.applies_to:
                flags[name] = flags.get(name, 0) | bit.flag
        if bit.event is not None:
            phase = _transition(state, f"bit:{bit.name}", held[bit.name])
            if phase is not None:
                events.append(_event(spec, received, bit, phase))
        if bit.metric is not None:
            observations.append(Observation(device=spec.id, stream=regmap.point(bit.point).stream, seq=0,
                                            ts=received, metric=bit.metric, value=float(held[bit.name]), unit="1",
                                            code=bit.code, bed=spec.bed))
    for point in regmap.points:
        if point.metric is None:
            continue
        reading = readings[point.name]
        phase = _transition(state, f"sensor:{point.name}", reading.value is None)
        if phase is not None:
            events.append(_sensor_event(spec, regmap, received, point, phase, reading.error))
        if reading.value is None:
            continue
        point_flags = reading.flags | flags.get(point.name, 0)
        if not mdc.is_plausible(point.metric, reading.value):
            point_flags |= FLAG_IMPLAUSIBLE
        observations.append(Observation(device=spec.id, stream=point.stream, seq=0, ts=received,
                                        metric=point.metric, value=reading.value, unit=point.unit, code=point.code,
                                        bed=spec.bed, flags=point_flags))
    # Ends before starts: two bits may share an event and source (air high, air low), and a consumer keyed on
    # those must not see the new condition start and then end when the old one clears in the same poll.
    events.sort(key=lambda e: isinstance(e, DeviceEvent) and e.phase != "end")
    return events + observations


def identity(spec: DeviceSpec, regmap: RegisterMap, snapshot: Mapping[str, Mapping[int, int]], kind: str,
             received: int) -> DeviceInfo:
    """The device's identity from its identity registers, completed from the site file and the map."""
    texts = {name: decode_text(words_at(snapshot, f.table, f.address, f.count)) for name, f in regmap.identity.items()}
    serial = texts.get("serial_number", "") or spec.serial_number
    return DeviceInfo(device=spec.id, stream=DEVICE_STREAM, seq=0, ts=received, driver=kind, bed=spec.bed,
                      manufacturer=spec.manufacturer or regmap.manufacturer,
                      model=texts.get("model", "") or spec.model or regmap.model, serial_number=serial,
                      firmware=texts.get("firmware", ""), identifiers={"serial": serial} if serial else {})


def snapshot_from_dump(dump: object) -> Snapshot:
    """A snapshot from a JSON register dump: ``{"holding": {"0": 17, "4": [1, 2, 3]}}`` (a list fills upwards)."""
    try:
        tables = msgspec.convert(dump, dict[Table, dict[int, int | list[int]]], str_keys=True)
    except msgspec.ValidationError as exc:
        raise RegisterError(f"register dump: {exc}") from exc
    snapshot: Snapshot = {}
    for table, column in tables.items():
        out = snapshot.setdefault(table, {})
        for address, value in column.items():
            for offset, word in enumerate(value if isinstance(value, list) else [value]):
                out[address + offset] = word
    return snapshot


def decode_dumps(spec: DeviceSpec, regmap: RegisterMap, dumps: Sequence[object], kind: str,
                 received: int) -> list[Item]:
    """Items from a run of dumps, as the driver would produce them poll after poll (the golden cases' path)."""
    state = MapState()
    items: list[Item] = []
    for number, dump in enumerate(dumps):
        snapshot = snapshot_from_dump(dump)
        if number == 0 and regmap.identity:
            items.append(identity(spec, regmap, snapshot, kind, received))
        items.extend(to_items(spec, regmap, snapshot, state, received))
    return items
