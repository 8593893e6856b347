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

import logging
import re
from dataclasses import dataclass
from typing import Final

from devices import mdc
from devices.contract import FLAG_INVALID, FLAG_UNVERIFIED
from gateway.drivers.hl7_pcd.parser import Segment

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


def identity(segment: Segment, field: int = 3) -> Identity:
    """Metric of an identifier field ``<code>^<REFID>^MDC``; unknown codes pass through, never dropped."""
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
    sent = _sent_unit(segment)
    if known is not None and (not sent or sent == known.unit):
        return known.unit
    return sent or (known.unit if known else "")


def _sent_unit(segment: Segment) -> str:
    ident, text, system = (segment.get(6, c).strip() for c in (1, 2, 3))
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
    return any(rep.strip().upper() == "DEMO" for rep in _reps(segment, 8))


def abnormal_flags(segment: Segment) -> list[str]:
    """OBX-8 repetitions, upper-cased (``A~PM~SP`` -> ``["A", "PM", "SP"]``)."""
    return [rep.strip().upper() for rep in _reps(segment, 8) if rep.strip()]


def _reps(segment: Segment, field: int) -> list[str]:
    return [segment.get(field, 1, rep) for rep in range(len(segment.repetitions(field)))]


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
