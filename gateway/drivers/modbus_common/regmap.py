"""Register maps: the TOML that describes a Modbus device, checked and compiled into points, bits and a read plan.

The format is documented in docs/modbus.md. Loading validates everything a device cannot tell us later:
addresses after the address base, types per register table, references between points, metric units. A
bad map fails at start-up with :class:`ModbusConfigError` naming the map and the field.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Final, Literal

import msgspec

from devices import mdc
from devices.contract import FLAG_INVALID, FLAG_UNVERIFIED, AlarmKind, Priority
from gateway.drivers.modbus_common.codec import WORDS, ValueType, WordOrder, check_words
from gateway.drivers.modbus_common.errors import ModbusConfigError, RegisterError

Table = Literal["holding", "input", "coil", "discrete"]
TABLES: Final[tuple[Table, ...]] = ("holding", "input", "coil", "discrete")
BIT_TABLES: Final = frozenset({"coil", "discrete"})
# Most a single read may ask for (Modbus application protocol, section 6): registers and bits.
MAX_READ: Final[dict[Table, int]] = {"holding": 125, "input": 125, "coil": 2000, "discrete": 2000}
MAX_EXPONENT: Final = 12
_FLAGS: Final = {"invalid": FLAG_INVALID, "unverified": FLAG_UNVERIFIED}

# A register dump: table -> wire address -> word (bits as 0 or 1). Golden cases store exactly this.
Snapshot = dict[str, dict[int, int]]


class PointSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One value in the device (``[[points]]``): where it is, how to decode it, what it reports as."""

    name: str
    address: int
    table: Table = "holding"
    type: ValueType | None = None  # uint16 for registers, bool for coils and discrete inputs
    word_order: WordOrder | None = None  # default: the map's
    scale: float = 1.0
    offset: float = 0.0
    exponent: str | None = None  # a point holding a power of ten: value * 10 ** (sign * exponent)
    exponent_sign: Literal[1, -1] = 1
    metric: str | None = None  # None: read only to serve bits or exponents
    code: int | None = None
    unit: str | None = None
    stream: str | None = None
    sentinels: list[int] = []
    invalid_below: float | None = None
    invalid_above: float | None = None
    enum: dict[int, float] = {}


class BitSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One status bit (``[[bits]]``): an event while active, flags on other points, or a 0/1 metric."""

    name: str
    point: str
    bit: int = 0
    active: Literal["set", "clear"] = "set"
    event: str | None = None
    priority: Priority = "medium"
    alarm_kind: AlarmKind = "technical"
    text: str = ""
    source: str | None = None
    flag: Literal["invalid", "unverified"] | None = None
    applies_to: list[str] = []
    metric: str | None = None
    code: int = 0


class TextSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """ASCII text in consecutive registers, two characters per register."""

    address: int
    count: int
    table: Literal["holding", "input"] = "holding"


class IdentitySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Identity registers (``[identity]``), read on first contact and after every reconnection."""

    model: TextSpec | None = None
    serial_number: TextSpec | None = None
    firmware: TextSpec | None = None


class MapSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A whole register map file."""

    name: str
    points: list[PointSpec]
    description: str = ""
    manufacturer: str = ""
    model: str = ""
    address_base: int | dict[Table, int] = 0
    word_order: WordOrder = "big"
    stream: str = "numerics"
    sensor_error_priority: Priority = "medium"
    max_block: int = 60
    max_gap: int = 0
    bits: list[BitSpec] = []
    identity: IdentitySpec | None = None


@dataclass(frozen=True, slots=True)
class Point:
    """A compiled point: wire address, decoding and what it reports."""

    name: str
    table: Table
    address: int
    type: ValueType
    word_order: WordOrder
    scale: float
    offset: float
    exponent: str | None
    exponent_sign: int
    metric: str | None
    code: int
    unit: str
    stream: str
    sentinels: frozenset[int]
    invalid_below: float | None
    invalid_above: float | None
    enum: Mapping[int, float]

    @property
    def words(self) -> int:
        """Registers (or bits) the point spans."""
        return WORDS[self.type]


@dataclass(frozen=True, slots=True)
class Bit:
    """A compiled status bit."""

    name: str
    point: str
    bit: int
    active_when_set: bool
    event: str | None
    priority: Priority
    alarm_kind: AlarmKind
    text: str
    source: str | None
    flag: int
    applies_to: tuple[str, ...]
    metric: str | None
    code: int


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers or bits of ``table`` from wire address ``address``."""

    table: Table
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class TextField:
    """A compiled identity text."""

    table: Table
    address: int
    count: int


@dataclass(frozen=True)
class RegisterMap:
    """A compiled register map: points, bits, identity texts and the reads that cover them."""

    name: str
    description: str
    manufacturer: str
    model: str
    sensor_error_priority: Priority
    points: tuple[Point, ...]
    bits: tuple[Bit, ...]
    identity: Mapping[str, TextField]
    blocks: tuple[Block, ...]
    identity_blocks: tuple[Block, ...]

    @cached_property
    def by_name(self) -> dict[str, Point]:
        """Points by name."""
        return {p.name: p for p in self.points}

    def point(self, name: str) -> Point:
        """The point called ``name`` (KeyError if the map has none)."""
        return self.by_name[name]


def load_map(path: Path) -> RegisterMap:
    """Read, validate and compile a map file; ModbusConfigError naming the file and field otherwise."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModbusConfigError(f"register map {path}: {exc}") from exc
    return compile_map(data, str(path))


def compile_map(data: object, origin: str) -> RegisterMap:
    """Validate parsed TOML (or JSON) data as a map and compile it; ``origin`` names it in errors."""
    try:
        spec = msgspec.convert(data, MapSpec, str_keys=True)
    except msgspec.ValidationError as exc:
        raise ModbusConfigError(f"register map {origin}: {exc}") from exc
    try:
        return _compile(spec)
    except ModbusConfigError as exc:
        raise ModbusConfigError(f"register map {origin}: {exc}") from exc


def _base(spec: MapSpec, table: Table) -> int:
    if isinstance(spec.address_base, int):
        return spec.address_base
    return spec.address_base.get(table, 0)


def _wire(spec: MapSpec, table: Table, address: int, span: int, what: str) -> int:
    wire = address - _base(spec, table)
    if wire < 0 or wire + span - 1 > 0xFFFF:
        raise ModbusConfigError(f"{what}: address {address} is outside the {table} table with address_base "
                                f"{_base(spec, table)} (wire address {wire})")
    return wire


def _metric(refid: str, code: int | None, unit: str | None, what: str) -> tuple[int, str]:
    known = mdc.BY_REFID.get(refid)
    if known is None:
        if unit is None:
            raise ModbusConfigError(f"{what}: metric {refid} is not an MDC metric Wardlink knows, so it needs a unit")
        return code or 0, unit
    if unit is not None and unit != known.unit:
        raise ModbusConfigError(f"{what}: {refid} is reported in {known.unit!r}, not {unit!r}")
    return known.code if code is None else code, known.unit


def _point(spec: MapSpec, p: PointSpec) -> Point:
    what = f"point {p.name}"
    bits = p.table in BIT_TABLES
    value_type: ValueType = p.type or ("bool" if bits else "uint16")
    if bits and value_type != "bool":
        raise ModbusConfigError(f"{what}: a {p.table} holds one bit, so its type is bool, not {value_type}")
    integral = value_type not in ("float32", "bool")
    if (p.sentinels or p.enum) and not integral:
        raise ModbusConfigError(f"{what}: sentinels and enum need an integer type, not {value_type}")
    code, unit = _metric(p.metric, p.code, p.unit, what) if p.metric else (0, "")
    return Point(
        name=p.name, table=p.table, address=_wire(spec, p.table, p.address, WORDS[value_type], what),
        type=value_type, word_order=p.word_order or spec.word_order, scale=p.scale, offset=p.offset,
        exponent=p.exponent, exponent_sign=p.exponent_sign, metric=p.metric, code=code, unit=unit,
        stream=p.stream or spec.stream, sentinels=frozenset(p.sentinels), invalid_below=p.invalid_below,
        invalid_above=p.invalid_above, enum=dict(p.enum),
    )


def _bit(b: BitSpec, points: Mapping[str, Point]) -> Bit:
    what = f"bit {b.name}"
    point = points.get(b.point)
    if point is None:
        raise ModbusConfigError(f"{what}: no point called {b.point!r}")
    if point.type == "float32" or not 0 <= b.bit < (1 if point.type == "bool" else 16 * point.words):
        raise ModbusConfigError(f"{what}: bit {b.bit} does not exist in {point.type} point {point.name}")
    missing = [name for name in b.applies_to if name not in points]
    if missing:
        raise ModbusConfigError(f"{what}: applies_to names no point {missing}")
    if (b.flag is None) != (not b.applies_to):
        raise ModbusConfigError(f"{what}: flag and applies_to go together")
    if b.event is None and b.flag is None and b.metric is None:
        raise ModbusConfigError(f"{what}: does nothing; give it an event, a flag or a metric")
    return Bit(name=b.name, point=b.point, bit=b.bit, active_when_set=b.active == "set", event=b.event,
               priority=b.priority, alarm_kind=b.alarm_kind, text=b.text, source=b.source,
               flag=_FLAGS[b.flag] if b.flag else 0, applies_to=tuple(b.applies_to), metric=b.metric, code=b.code)


def _check_exponents(points: Mapping[str, Point]) -> None:
    for point in points.values():
        if point.exponent is None:
            continue
        ref = points.get(point.exponent)
        if ref is None:
            raise ModbusConfigError(f"point {point.name}: exponent names no point {point.exponent!r}")
        if ref.type not in ("int16", "uint16") or ref.exponent is not None or ref.enum:
            raise ModbusConfigError(f"point {point.name}: exponent point {ref.name} must be a plain int16 or uint16")


def _unique(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ModbusConfigError(f"{what} {name!r} appears twice")
        seen.add(name)


def plan(spans: Iterable[tuple[Table, int, int]], max_block: int, max_gap: int) -> tuple[Block, ...]:
    """Merge (table, address, count) spans into as few reads as allowed by ``max_block`` and ``max_gap``."""
    blocks: list[Block] = []
    spans = sorted(spans)
    for table in TABLES:
        limit = min(MAX_READ[table], max_block * (16 if table in BIT_TABLES else 1))
        current: Block | None = None
        for _, address, count in (s for s in spans if s[0] == table):
            if current is not None:
                end = max(current.address + current.count, address + count)
                if address <= current.address + current.count + max_gap and end - current.address <= limit:
                    current = Block(table, current.address, end - current.address)
                    continue
                blocks.append(current)
            current = Block(table, address, count)
        if current is not None:
            blocks.append(current)
    return tuple(blocks)


def _compile(spec: MapSpec) -> RegisterMap:
    if not 1 <= spec.max_block <= 125 or spec.max_gap < 0:
        raise ModbusConfigError(f"max_block must be 1..125 and max_gap >= 0 (got {spec.max_block}, {spec.max_gap})")
    if not spec.points:
        raise ModbusConfigError("a map needs at least one point")
    _unique((p.name for p in spec.points), "point")
    _unique((b.name for b in spec.bits), "bit")
    points = {p.name: _point(spec, p) for p in spec.points}
    _check_exponents(points)
    bits = tuple(_bit(b, points) for b in spec.bits)
    identity: dict[str, TextField] = {}
    if spec.identity is not None:
        for field in ("model", "serial_number", "firmware"):
            text: TextSpec | None = getattr(spec.identity, field)
            if text is None:
                continue
            if not 1 <= text.count <= 32:
                raise ModbusConfigError(f"identity {field}: count must be 1..32 registers")
            identity[field] = TextField(text.table, _wire(spec, text.table, text.address, text.count,
                                                          f"identity {field}"), text.count)
    return RegisterMap(
        name=spec.name, description=spec.description, manufacturer=spec.manufacturer, model=spec.model,
        sensor_error_priority=spec.sensor_error_priority, points=tuple(points.values()), bits=bits,
        identity=identity,
        blocks=plan(((p.table, p.address, p.words) for p in points.values()), spec.max_block, spec.max_gap),
        identity_blocks=plan(((t.table, t.address, t.count) for t in identity.values()), spec.max_block, 0),
    )


def words_at(snapshot: Mapping[str, Mapping[int, int]], table: Table, address: int, count: int) -> list[int]:
    """The words (or bits) ``address .. address+count-1`` of ``table``; RegisterError if any is missing or bad."""
    column = snapshot.get(table, {})
    try:
        words = [column[address + i] for i in range(count)]
    except KeyError as exc:
        raise RegisterError(f"{table} register {exc.args[0]} is not in the snapshot") from exc
    check_words(words)
    return words
