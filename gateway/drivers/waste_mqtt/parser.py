"""I/O-free decoding of medical-waste scan payloads (one bag scanned at one handover point) into ``WasteEvent``.

A scan point (ward, collector, storage or disposer) publishes one JSON object per bag scan::

    {"scanner": "wst-3w-ward", "point": "ward", "bag": "MW-3W-20260101-0007", "category": "infectious",
     "weight_kg": 2.35, "handler": "N-1042", "department": "3W", "time": "2026-01-01T08:00:00+08:00"}

- ``scanner`` (required) is what the scan point calls itself; it must be the device's configured
  ``scanner_id`` (default: the device id): a scan point speaks only for itself.
- ``point`` (optional) must be the device's configured point when given.
- ``bag`` and ``handler`` (required): 1-64 printable characters.
- ``category`` (required): infectious, sharps, pathological, pharmaceutical, chemical (any case), or the
  Chinese names of the 医疗废物分类目录: 感染性废物, 损伤性废物, 病理性废物, 药物性废物, 化学性废物 (with or
  without 废物). Waste codes of the hazardous-waste list are not accepted: a misread code would
  silently misfile a bag, so the scanner must send a name.
- exactly one of ``weight_g`` and ``weight_kg`` (required): a finite number, 0 to 1000 kg.
- ``department`` (optional) becomes the event's ``unit``; otherwise the device's configured ``unit``.
- ``manifest`` (optional): the transfer manifest number the licensed disposer signs for (1-64 printable
  characters); kept on the disposer's handover record.
- ``time`` (optional): ISO 8601 (without a zone it is taken as UTC) or integer milliseconds since the
  epoch; kept as ``device_ts`` and flagged when more than 5 s from the gateway's receive time.

Unknown fields are ignored. Exceptions::

    ValueError
    └── ScanError   ``reason`` is oversize, malformed, invalid or foreign-scanner; ``field`` names the
                    offending field when there is one, and the message names the device and field
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

import msgspec

from devices.contract import FLAG_CLOCK_SKEW, WasteCategory, WasteEvent, WastePoint
from devices.site import DeviceSpec

CLOCK_SKEW_MS: Final = 5_000
DEFAULT_MAX_PAYLOAD: Final = 16 * 1024
MAX_WEIGHT_G: Final = 1_000_000.0
_MAX_TIME_MS: Final = 253_402_300_800_000  # year 10000
_MAX_TIME_TEXT: Final = 40
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_TEXT: Final = re.compile(r"[^\x00-\x1f\x7f]{1,64}")

CATEGORIES: Final[dict[str, WasteCategory]] = {
    "infectious": "infectious",
    "sharps": "sharps",
    "pathological": "pathological",
    "pharmaceutical": "pharmaceutical",
    "chemical": "chemical",
    "感染性废物": "infectious",
    "感染性": "infectious",
    "损伤性废物": "sharps",
    "损伤性": "sharps",
    "病理性废物": "pathological",
    "病理性": "pathological",
    "药物性废物": "pharmaceutical",
    "药物性": "pharmaceutical",
    "化学性废物": "chemical",
    "化学性": "chemical",
}

Reason = Literal["oversize", "malformed", "invalid", "foreign-scanner"]


class ScanError(ValueError):
    """A scan the driver refuses; ``reason`` says why and ``field`` names the field when there is one."""

    def __init__(self, reason: Reason, message: str, field: str | None = None) -> None:
        """Keep reason and field apart from the message so the driver can count by reason."""
        super().__init__(message)
        self.reason: Reason = reason
        self.field = field


class ConfigError(ValueError):
    """The device's ``connection`` table is not usable; the message names the device and field."""


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The device's ``connection`` table (sample.toml explains each key); transport keys are the driver's."""

    point: WastePoint
    broker: str = ""
    topic: str = ""
    scanner_id: str = ""  # what the scan point calls itself in ``scanner``; empty means the device id
    unit: str | None = None  # the care unit of a ward scan point, used when a scan names no department
    max_payload: Annotated[int, msgspec.Meta(ge=256, le=1024 * 1024)] = DEFAULT_MAX_PAYLOAD
    qos: Literal[0, 1, 2] = 1
    silence_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    reconnect_max_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0


def load_settings(spec: DeviceSpec) -> Settings:
    """Validate the device's ``connection`` table; raise :class:`ConfigError` naming the field."""
    try:
        settings = msgspec.convert(spec.connection, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"device {spec.id}: connection: {exc}") from exc
    if settings.scanner_id and not settings.scanner_id.strip():
        raise ConfigError(f"device {spec.id}: connection: field scanner_id is blank")
    return settings


class _Scan(msgspec.Struct):
    # Everything optional at decode time, so a missing field gets our own message naming it.
    scanner: str | None = None
    point: str | None = None
    bag: str | None = None
    category: str | None = None
    weight_g: float | None = None
    weight_kg: float | None = None
    handler: str | None = None
    department: str | None = None
    manifest: str | None = None
    time: int | str | None = None


_decoder: Final = msgspec.json.Decoder(_Scan)


def parse(payload: bytes, spec: DeviceSpec, settings: Settings, received: int) -> WasteEvent:
    """Decode and validate one scan of the device, stamped with the gateway's ``received`` time.

    Raises :class:`ScanError` and nothing else, whatever the bytes.
    """
    device = spec.id
    if len(payload) > settings.max_payload:
        raise ScanError("oversize", f"device {device}: payload of {len(payload)} bytes exceeds max_payload "
                                    f"{settings.max_payload}")
    try:
        scan = _decoder.decode(payload)
    # ValidationError is a DecodeError; msgspec raises RecursionError for nesting past the interpreter's limit.
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ScanError("malformed", f"device {device}: malformed scan: {exc}") from exc
    scanner = _text(device, "scanner", scan.scanner)
    expected = settings.scanner_id or device
    if scanner.strip().casefold() != expected.strip().casefold():
        raise ScanError("foreign-scanner", f"device {device}: field scanner: scan from {_show(scanner)}, "
                                           f"expected {_show(expected)}", "scanner")
    if scan.point is not None and scan.point != settings.point:
        raise ScanError("foreign-scanner", f"device {device}: field point: scan says {_show(scan.point)}, this "
                                           f"scan point is {settings.point!r}", "point")
    bag = _text(device, "bag", scan.bag)
    category = _category(device, scan.category)
    weight_g = _weight(device, scan.weight_g, scan.weight_kg)
    handler = _text(device, "handler", scan.handler)
    unit = _text(device, "department", scan.department) if scan.department is not None else settings.unit
    manifest = _text(device, "manifest", scan.manifest) if scan.manifest is not None else None
    device_ms = _time_ms(device, scan.time)
    flags = FLAG_CLOCK_SKEW if device_ms is not None and abs(device_ms - received) > CLOCK_SKEW_MS else 0
    return WasteEvent(device=device, stream="waste", seq=0, ts=received, bag=bag, category=category,
                      weight_g=weight_g, point=settings.point, handler=handler, unit=unit, device_ts=device_ms,
                      flags=flags, manifest=manifest)


def _text(device: str, field: str, value: str | None) -> str:
    if value is None or not value.strip():
        raise ScanError("invalid", f"device {device}: field {field} is missing", field)
    value = value.strip()
    if not _TEXT.fullmatch(value):
        raise ScanError("invalid", f"device {device}: field {field}: {_show(value)} is not 1-64 printable "
                                   f"characters", field)
    return value


def _category(device: str, value: str | None) -> WasteCategory:
    if value is None or not value.strip():
        raise ScanError("invalid", f"device {device}: field category is missing", "category")
    category = CATEGORIES.get(value.strip().casefold())
    if category is None:
        raise ScanError("invalid", f"device {device}: field category: unknown waste category {_show(value)}",
                        "category")
    return category


def _weight(device: str, grams: float | None, kilograms: float | None) -> float:
    if grams is not None and kilograms is None:
        field, value, weight = "weight_g", grams, grams
    elif kilograms is not None and grams is None:
        field, value, weight = "weight_kg", kilograms, kilograms * 1000.0
    else:
        raise ScanError("invalid", f"device {device}: field weight_g/weight_kg: exactly one must be given", "weight_g")
    if not math.isfinite(weight):
        raise ScanError("invalid", f"device {device}: field {field}: {value!r} is not a finite number", field)
    if weight < 0:
        raise ScanError("invalid", f"device {device}: field {field}: {value!r} is negative", field)
    if weight > MAX_WEIGHT_G:
        raise ScanError("invalid", f"device {device}: field {field}: {value!r} is above {MAX_WEIGHT_G / 1000:g} kg",
                        field)
    return round(weight, 1)  # scales resolve grams at best; this keeps kg-to-g float noise out of the record


def _time_ms(device: str, value: int | str | None) -> int | None:
    """Device time in ms: ISO 8601 (no zone means UTC) or integer ms since the epoch; None when absent."""
    if value is None:
        return None
    if isinstance(value, int):
        if not 0 <= value < _MAX_TIME_MS:
            raise ScanError("invalid", f"device {device}: field time: {value} is not a time in ms", "time")
        return value
    if len(value) > _MAX_TIME_TEXT:
        raise ScanError("invalid", f"device {device}: field time: time text too long", "time")
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return (moment - _EPOCH) // timedelta(milliseconds=1)
    except (ValueError, OverflowError) as exc:
        raise ScanError("invalid", f"device {device}: field time: not an ISO 8601 time ({_show(value)})",
                        "time") from exc


def _show(text: str) -> str:
    """A device-supplied string, shortened and quoted, safe to put in a log line."""
    return repr(text[:40] + ("..." if len(text) > 40 else ""))
