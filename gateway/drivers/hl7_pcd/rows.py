"""Reading one OBX row the way IHE PCD writes it: MDC identity, UCUM unit, equipment id, status and flags.

Result status (OBX-11) and the flags it sets, so alerting ignores what a device did not vouch for:

- ``F`` final, ``R`` (the normal status of device data, not verified by a person), ``C`` correction,
  ``U`` changed to final, and blank (treated as ``R``: suppressing alarms on a sender that omits the
  field would be the dangerous error) -> no flag;
- ``X`` cannot be obtained, ``D`` deleted, ``W`` wrong, ``N`` not asked -> ``FLAG_INVALID``;
- ``P`` preliminary, ``S`` partial, ``I``/``O`` pending, and anything unknown -> ``FLAG_UNVERIFIED``.

OBX-8 ``DEMO`` (a monitor in demo mode) sets ``FLAG_DEMO``.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from devices import mdc
from devices.contract import FLAG_DEMO, FLAG_INVALID, FLAG_UNVERIFIED
from gateway.drivers.hl7_pcd.parser import CACHE_SIZE, MAX_CACHED_KEY, Segment, Separators

log = logging.getLogger(__name__)

# MDC unit codes (IEEE 11073-10101 partition 4) -> UCUM, by code and by reference id.
_MDC_UNITS: Final = (
    (262656, "MDC_DIM_DIMLESS", "1"),
    (262688, "MDC_DIM_PERCENT", "%"),
    (263762, "MDC_DIM_MILLI_L", "mL"),
    (264864, "MDC_DIM_BEAT_PER_MIN", "/min"),
    (264928, "MDC_DIM_RESP_PER_MIN", "/min"),
    (265266, "MDC_DIM_MILLI_L_PER_HR", "mL/h"),
    (265987, "MDC_DIM_KILO_PASCAL", "kPa"),
    (266016, "MDC_DIM_MMHG", "mm[Hg]"),
    (266418, "MDC_DIM_MILLI_VOLT", "mV"),
    (268192, "MDC_DIM_DEGC", "Cel"),
)
UNIT_BY_CODE: Final = {code: ucum for code, _, ucum in _MDC_UNITS}
UNIT_BY_REFID: Final = {refid: ucum for _, refid, ucum in _MDC_UNITS}
# Plain-text units senders write instead of UCUM.
_UNIT_TEXT: Final = {"bpm": "/min", "1/min": "/min", "mmhg": "mm[Hg]", "degc": "Cel", "°c": "Cel", "ml/h": "mL/h",
                     "ml/hr": "mL/h", "ml": "mL", "kpa": "kPa"}

_OK_STATUS: Final = frozenset({"F", "R", "C", "U", ""})
_INVALID_STATUS: Final = frozenset({"X", "D", "W", "N"})
_EUI64 = re.compile(r"[0-9A-Fa-f]{16}")
_UUID = re.compile(r"(?:urn:uuid:)?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})", re.IGNORECASE)
_ID_TYPES: Final = frozenset({"EUI-64", "URN", "UUID", "GUID", "ISO", "DNS", "MAC"})
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.:-]+")
MAX_NAME: Final = 128

T = TypeVar("T")


def by_field_text(read: Callable[[Segment, int], T]) -> Callable[[Segment, int], T]:
    """``read(segment, field)`` remembered by the field's raw text and separators, in a bounded cache.

    A sender repeats the same OBX-3/6/8/18 texts in every message, and reading them again each time was
    much of the decode time. The result depends on nothing but that text (and the separators), which is why a
    one-field segment stands in for the row on a miss. MSH-1/MSH-2 are read as they are (never split),
    and texts longer than ``MAX_CACHED_KEY`` are not cached: the keys come from the network.
    """

    # A dict emptied when full rather than functools.lru_cache: the key needs only the separators' ``key``,
    # while a miss needs the separators themselves.
    cache: dict[tuple[str, str], T] = {}

    @functools.wraps(read)
    def reader(segment: Segment, field: int) -> T:
        text = segment.raw(field)
        if len(text) > MAX_CACHED_KEY or (field <= 2 and segment.id == "MSH"):
            return read(segment, field)
        key = (text, segment.seps.key)
        try:
            return cache[key]
        except KeyError:
            pass
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        value = cache[key] = read(Segment(["", text], segment.seps), 1)
        return value

    reader.cache = cache  # type: ignore[attr-defined]  # for tests and memory checks
    return reader


@dataclass(frozen=True, slots=True)
class Identity:
    """What OBX-3 names: the metric as stored, its MDC code (0 if none) and the known metric, if any."""

    metric: str
    code: int
    known: mdc.Metric | None


@dataclass(frozen=True, slots=True)
class Equipment:
    """An equipment identifier: ``kind`` is ``eui64``, ``uuid`` or ``equipment_id`` (anything else)."""

    kind: str
    value: str

    def device_id(self) -> str:
        """A stable device id derived from the identifier, e.g. ``hl7-0030e60000000001``."""
        return ("hl7-" + _BAD_ID_CHARS.sub("-", self.value.lower()))[:64]


@dataclass(frozen=True, slots=True)
class Reading:
    """What a numeric OBX row says besides its value and times: identity, UCUM unit, status and demo flags."""

    ident: Identity
    unit: str
    flags: int


def reading(segment: Segment) -> Reading:
    """:func:`identity`, :func:`unit`, :func:`status_flags` of OBX-11 and :func:`is_demo` of an OBX row, at once.

    Not remembered here: :func:`row_of` keeps the whole row's meaning, and the field readers keep theirs.
    """
    ident = identity(segment)
    return Reading(ident, unit(segment, ident.known),
                   status_flags(segment.get(11)) | (FLAG_DEMO if is_demo(segment) else 0))


def identity(segment: Segment, field: int = 3) -> Identity:
    """Metric of an identifier field ``<code>^<REFID>^MDC``; unknown codes pass through, never dropped."""
    return _identity(segment, field)


@by_field_text
def _identity(segment: Segment, field: int) -> Identity:
    """:func:`identity`, uncached."""
    ident, text, system = (segment.get(field, c).strip() for c in (1, 2, 3))
    if system.upper() not in ("", "MDC"):
        # Not MDC (LOINC, a vendor table): keep the sender's coding, prefixed so it cannot pass for MDC.
        return Identity(f"{system}:{ident or text}"[:MAX_NAME], 0, None)
    code = int(ident) if ident.isascii() and ident.isdigit() and len(ident) <= 9 else 0
    known = mdc.BY_REFID.get(text) if text else mdc.BY_CODE.get(code)
    if known is not None:
        # The reference id is the key (senders drift on numbers), so a known metric gets its canonical code.
        return Identity(known.refid, known.code, known)
    metric = text or (f"MDC_{code}" if code else ident)
    return Identity(metric[:MAX_NAME], code, None)


def unit(segment: Segment, known: mdc.Metric | None) -> str:
    """UCUM unit of an OBX row: the known metric's, unless OBX-6 says otherwise (kPa etCO2 stays kPa)."""
    sent = _sent_unit(segment, 6)
    if known is not None and (not sent or sent == known.unit):
        return known.unit
    return sent or (known.unit if known else "")


@by_field_text
def _sent_unit(segment: Segment, field: int) -> str:
    """The unit OBX-6 (``field``) names, as UCUM where it can be mapped."""
    ident, text, system = (segment.get(field, c).strip() for c in (1, 2, 3))
    if system.upper() == "UCUM":
        return ident or text
    if ident.isascii() and ident.isdigit() and int(ident) in UNIT_BY_CODE:
        return UNIT_BY_CODE[int(ident)]
    for name in (text, ident):
        if name in UNIT_BY_REFID:
            return UNIT_BY_REFID[name]
    raw = text or ident
    return _UNIT_TEXT.get(raw.lower(), raw)[:MAX_NAME]


def status_flags(status: str) -> int:
    """Flags implied by an OBX-11 result status (see the module docstring)."""
    status = status.strip().upper()
    if status in _OK_STATUS:
        return 0
    if status in _INVALID_STATUS:
        return FLAG_INVALID
    return FLAG_UNVERIFIED


def is_demo(segment: Segment) -> bool:
    """True when OBX-8 (abnormal flags, a repeating field) carries ``DEMO``."""
    return _has_demo(segment, 8)


@by_field_text
def _has_demo(segment: Segment, field: int) -> bool:
    """:func:`is_demo` of field ``field``, uncached."""
    return any(rep.strip().upper() == "DEMO" for rep in _reps(segment, field))


def abnormal_flags(segment: Segment) -> list[str]:
    """OBX-8 repetitions, upper-cased (``A~PM~SP`` -> ``["A", "PM", "SP"]``)."""
    return [rep.strip().upper() for rep in _reps(segment, 8) if rep.strip()]


def _reps(segment: Segment, field: int) -> list[str]:
    return [segment.get(field, 1, rep) for rep in range(len(segment.repetitions(field)))]


@by_field_text
def equipment(segment: Segment, field: int) -> Equipment | None:
    """The equipment id in an EI/HD field (OBX-18, MSH-3): an EUI-64, a UUID, or the typed/first component."""
    for rep in range(len(segment.repetitions(field))):
        found = equipment_of(segment.components(field, rep))
        if found is not None:
            return found
    return None


def equipment_of(components: list[str]) -> Equipment | None:
    """Pick the identifier out of components such as ``0030E6...^EUI-64`` or ``urn:uuid:...^^...^URN``."""
    values = [c.strip() for c in components]
    for value in values:
        if _EUI64.fullmatch(value):
            return Equipment("eui64", value.upper())
    for value in values:
        match = _UUID.fullmatch(value)
        if match:
            return Equipment("uuid", match.group(1).lower())
    for index, value in enumerate(values):
        if index and value.upper() in _ID_TYPES:
            before = next((v for v in reversed(values[:index]) if v), "")
            if before:
                return Equipment("equipment_id", before[:64])
    first = next((v for v in values if v and v.upper() not in _ID_TYPES), "")
    return Equipment("equipment_id", first[:64]) if first else None


NUMBER: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,2})?")  # HL7 NM, plus an exponent some send


# What OBX-2 makes of a row: a blank value type is a device row (the MDS/VMD/channel tree: its OBX-18 names
# the equipment of the rows under it), NM a numeric reading, anything else (ST, CWE, NA ...) is skipped.
DEVICE_ROW: Final = 0
NUMERIC_ROW: Final = 1
OTHER_ROW: Final = 2
ROW_WIDTH: Final = 19  # OBX-0 (the id) to OBX-18; shorter rows are read as if padded with empty fields
# The fields a row's meaning depends on besides OBX-5 (value) and OBX-14 (time), which change every message.
ROW_KEY: Final = operator.itemgetter(2, 3, 4, 6, 8, 11, 18)
# Most senders end a row at OBX-14 (its time) or soon after: such a row has no OBX-18 and is keyed without it,
# so it needs no padding (a 6-tuple key never equals a 7-tuple one, and both mean what the row says).
STAMP_WIDTH: Final = 15  # OBX-0 to OBX-14: a row this long is read without padding
SHORT_ROW_KEY: Final = operator.itemgetter(2, 3, 4, 6, 8, 11)


@dataclass(frozen=True, slots=True)
class Row:
    """What an OBX row says apart from its set id, value (OBX-5) and time (OBX-14); see :func:`row_of`.

    Flat, so that the per-row loop reads each part with one attribute look-up.
    """

    kind: int  # DEVICE_ROW, NUMERIC_ROW or OTHER_ROW
    seps: Separators  # the delimiters it was read with (the cache key leaves them out)
    own: Equipment | None  # OBX-18
    containment: str  # OBX-4 as read; ``contained`` is it stripped, or None when blank
    contained: str | None
    metric: str  # of a numeric row (see Identity); "" when OBX-3 names none, or for other rows
    code: int
    unit: str
    flags: int  # from OBX-11 (status) and OBX-8 (DEMO)
    low: float  # plausible range of a known metric (mdc.is_plausible), else -inf .. inf
    high: float


# Bounded like the caches of by_field_text; keyed on ROW_KEY(fields), and each entry holds its separators.
_ROWS: dict[tuple[str, ...], Row] = {}


def row_of(fields: list[str], seps: Separators) -> Row:
    """The :class:`Row` of an OBX row split into fields (``fields[n]`` is OBX-n, at least STAMP_WIDTH of them).

    A monitor sends the same rows with new values every few seconds, so a row's meaning is read once
    per distinct text of the fields it depends on (the key) and kept in a bounded cache. The separators
    are not in the key (so a look-up hashes no more than the row's texts): an entry read with other
    separators is read again.
    """
    key = ROW_KEY(fields) if len(fields) >= ROW_WIDTH else SHORT_ROW_KEY(fields)
    found = _ROWS.get(key)
    if found is not None and found.seps is seps:
        return found
    found = _read_row(Segment(fields, seps))
    if sum(map(len, key)) <= MAX_CACHED_KEY:
        if len(_ROWS) >= CACHE_SIZE:
            _ROWS.clear()
        _ROWS[key] = found
    return found


def _read_row(segment: Segment) -> Row:
    """:func:`row_of`, uncached: the general readers applied to the row."""
    own = equipment(segment, 18)
    containment = segment.get(4)
    contained = containment.strip() or None
    value_type = segment.get(2).strip().upper()
    if value_type != "NM":
        kind = DEVICE_ROW if not value_type else OTHER_ROW
        return Row(kind, segment.seps, own, containment, contained, "", 0, "", 0, -math.inf, math.inf)
    found = reading(segment)
    known = mdc.BY_REFID.get(found.ident.metric)
    low, high = known.plausible if known is not None else (-math.inf, math.inf)
    return Row(NUMERIC_ROW, segment.seps, own, containment, contained, found.ident.metric, found.ident.code,
               found.unit, found.flags, low, high)
