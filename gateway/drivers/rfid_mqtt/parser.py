"""I/O-free decoding of location-reader MQTT payloads into ``TagRead`` items.

Two payload styles, chosen per device by ``connection.format``.

``rfid_reader``: one JSON object per report, as fixed UHF readers publish through their MQTT
connector (modelled on Impinj Speedway Connect; Zebra's IoT Connector carries the same facts). The
reader names itself; every entry of ``tag_reads`` is one tag, or a heartbeat::

    {"reader_name": "rdr-3w-01", "mac_address": "00:16:25:12:34:56",
     "tag_reads": [{"epc": "E28011606000020A1B2C3D4E", "antennaPort": 1, "peakRssi": -58,
                    "firstSeenTimestamp": 1767225599500000, "lastSeenTimestamp": "2026-01-01T00:00:00.120Z"},
                   {"isHeartBeat": true}]}

``ble_gateway``: a JSON array of advertisements, as Minew-style BLE gateways publish. The entry of
type ``Gateway`` names the gateway itself and is required (a reader speaks only for itself)::

    [{"timestamp": "2026-01-01T00:00:00.100Z", "type": "Gateway", "mac": "AC233FC07DA5"},
     {"timestamp": "2026-01-01T00:00:00.095Z", "type": "iBeacon", "mac": "AC:23:3F:2A:0B:1C", "rssi": -63}]

A BLE advert's ``battery`` (percent, 0-100) becomes the read's ``battery``; a value outside that range
(some beacons report millivolts) is left out rather than guessed.

Times are ISO 8601 strings (without a zone they are taken as UTC) or integers of microseconds since
the Unix epoch. The device time of an RFID read is its last-seen time, else its first-seen time. Tags
come out as upper-case hex: the EPC, or the 12 digits of a BLE MAC. RSSI is in dBm. Unknown fields
are ignored, so vendor extras pass.

The payload is the unit: one malformed entry rejects the whole payload, so a read is never half
trusted. Exceptions::

    ValueError
    └── PayloadError   ``reason`` is oversize, malformed or foreign-reader; the message names the device
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

import msgspec

from devices.contract import FLAG_CLOCK_SKEW, TagRead
from devices.site import DeviceSpec

CLOCK_SKEW_MS: Final = 5_000
DEFAULT_MAX_PAYLOAD: Final = 64 * 1024
RSSI_MIN_DBM: Final = -150.0
RSSI_MAX_DBM: Final = 30.0
_MAX_TIME_US: Final = 253_402_300_800 * 1_000_000  # year 10000: beyond that an integer is not a time
_MAX_TIME_TEXT: Final = 40
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPC: Final = re.compile(r"[0-9A-Fa-f]{4,124}")  # up to the 496 bits an EPC bank can hold
_MAC: Final = re.compile(r"[0-9A-Fa-f]{12}")
_MAC_SEPARATORS: Final = str.maketrans("", "", ":-")

Format = Literal["rfid_reader", "ble_gateway"]
Reason = Literal["oversize", "malformed", "foreign-reader"]


class PayloadError(ValueError):
    """A payload the driver refuses; ``reason`` is oversize, malformed or foreign-reader."""

    def __init__(self, reason: Reason, message: str) -> None:
        """Keep the reason apart from the message so the driver can count by reason."""
        super().__init__(message)
        self.reason: Reason = reason


class ConfigError(ValueError):
    """The device's ``connection`` table is not usable; the message names the device and field."""


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The device's ``connection`` table (sample.toml explains each key); transport keys are the driver's."""

    format: Format
    broker: str = ""
    topic: str = ""
    reader_id: str = ""  # what the reader calls itself (reader_name, MAC); empty means the device id
    antennas: tuple[int, ...] = ()  # RFID antenna ports to keep; empty keeps all
    max_payload: Annotated[int, msgspec.Meta(ge=256, le=16 * 1024 * 1024)] = DEFAULT_MAX_PAYLOAD
    qos: Literal[0, 1, 2] = 0
    batch_max: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    linger_s: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.25
    silence_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    reconnect_max_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0


def load_settings(spec: DeviceSpec) -> Settings:
    """Validate the device's ``connection`` table; raise :class:`ConfigError` naming the field."""
    try:
        settings = msgspec.convert(spec.connection, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"device {spec.id}: connection: {exc}") from exc
    if settings.reader_id and not _identity(settings.reader_id):
        raise ConfigError(f"device {spec.id}: connection: field reader_id is blank")
    return settings


@dataclass(frozen=True, slots=True)
class _Read:
    tag: str
    rssi: float
    device_ms: int | None
    battery: float | None = None


class _TagReport(msgspec.Struct, rename="camel"):
    epc: str = ""
    antenna_port: int | None = None
    peak_rssi: float | None = None
    first_seen_timestamp: int | str | None = None
    last_seen_timestamp: int | str | None = None
    is_heart_beat: bool = False


class _ReaderReport(msgspec.Struct):
    reader_name: str = ""
    mac_address: str = ""
    tag_reads: list[_TagReport] = []


class _Advert(msgspec.Struct):
    type: str = ""
    mac: str = ""
    rssi: float | None = None
    timestamp: int | str | None = None
    battery: float | None = None


_reader_decoder: Final = msgspec.json.Decoder(_ReaderReport)
_ble_decoder: Final = msgspec.json.Decoder(list[_Advert])


def parse(payload: bytes, spec: DeviceSpec, settings: Settings, received: int) -> list[TagRead]:
    """Decode one MQTT payload of the device into tag reads stamped with the gateway's ``received`` time.

    Raises :class:`PayloadError` and nothing else, whatever the bytes.
    """
    if len(payload) > settings.max_payload:
        raise PayloadError("oversize", f"device {spec.id}: payload of {len(payload)} bytes exceeds max_payload "
                                       f"{settings.max_payload}")
    reader_id = settings.reader_id or spec.id
    if settings.format == "rfid_reader":
        reads = _reader_reads(payload, spec.id, reader_id, frozenset(settings.antennas))
    else:
        reads = _ble_reads(payload, spec.id, reader_id)
    return [TagRead(device=spec.id, stream="tags", seq=0, ts=received, tag=read.tag, rssi=read.rssi,
                    device_ts=read.device_ms, flags=_skew(read.device_ms, received), battery=read.battery)
            for read in reads]


def _reader_reads(payload: bytes, device: str, reader_id: str, antennas: frozenset[int]) -> list[_Read]:
    try:
        report = _reader_decoder.decode(payload)
    # ValidationError is a DecodeError; msgspec raises RecursionError for nesting past the interpreter's limit.
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise PayloadError("malformed", f"device {device}: malformed payload: {exc}") from exc
    if not report.reader_name:
        raise PayloadError("malformed", f"device {device}: field reader_name is missing")
    names = {name for name in (_identity(report.reader_name), _identity(report.mac_address)) if name}
    if _identity(reader_id) not in names:
        raise PayloadError("foreign-reader", f"device {device}: field reader_name: report from reader "
                                             f"{_show(report.reader_name)}, expected {_show(reader_id)}")
    reads: list[_Read] = []
    for index, entry in enumerate(report.tag_reads):
        where = f"tag_reads[{index}]"
        if entry.is_heart_beat:
            continue  # proves the reader is alive; carries no tag
        if antennas and entry.antenna_port not in antennas:
            continue  # an antenna that looks into another room: not this device's reads
        if not _EPC.fullmatch(entry.epc):
            raise PayloadError("malformed", f"device {device}: field {where}.epc: not a hex EPC ({_show(entry.epc)})")
        rssi = _rssi(device, f"{where}.peakRssi", entry.peak_rssi)
        seen = entry.last_seen_timestamp if entry.last_seen_timestamp is not None else entry.first_seen_timestamp
        field = f"{where}.{'lastSeenTimestamp' if entry.last_seen_timestamp is not None else 'firstSeenTimestamp'}"
        reads.append(_Read(entry.epc.upper(), rssi, _time_ms(device, field, seen)))
    return reads


def _ble_reads(payload: bytes, device: str, reader_id: str) -> list[_Read]:
    try:
        adverts = _ble_decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise PayloadError("malformed", f"device {device}: malformed payload: {exc}") from exc
    gateways = [a for a in adverts if a.type.casefold() == "gateway"]
    if not gateways:
        raise PayloadError("malformed", f"device {device}: no entry of type Gateway names the gateway")
    for gateway in gateways:
        if _identity(gateway.mac) != _identity(reader_id):
            raise PayloadError("foreign-reader", f"device {device}: field mac of the Gateway entry: report from "
                                                 f"gateway {_show(gateway.mac)}, expected {_show(reader_id)}")
    reads: list[_Read] = []
    for index, advert in enumerate(adverts):
        if advert.type.casefold() == "gateway":
            continue
        mac = advert.mac.translate(_MAC_SEPARATORS)
        if not _MAC.fullmatch(mac):
            raise PayloadError("malformed", f"device {device}: field [{index}].mac: not a MAC ({_show(advert.mac)})")
        rssi = _rssi(device, f"[{index}].rssi", advert.rssi)
        battery = advert.battery if advert.battery is not None and 0 <= advert.battery <= 100 else None
        reads.append(_Read(mac.upper(), rssi, _time_ms(device, f"[{index}].timestamp", advert.timestamp), battery))
    return reads


def _rssi(device: str, field: str, value: float | None) -> float:
    if value is None:
        raise PayloadError("malformed", f"device {device}: field {field} is missing")
    if not (math.isfinite(value) and RSSI_MIN_DBM <= value <= RSSI_MAX_DBM):
        raise PayloadError("malformed", f"device {device}: field {field}: {value!r} dBm is not a plausible RSSI")
    return float(value)


def _time_ms(device: str, field: str, value: int | str | None) -> int | None:
    """Device time in ms: ISO 8601 (no zone means UTC) or integer µs since the epoch; None when absent."""
    if value is None:
        return None
    if isinstance(value, int):
        if not 0 <= value < _MAX_TIME_US:
            raise PayloadError("malformed", f"device {device}: field {field}: {value} is not a time in µs")
        return value // 1000
    if len(value) > _MAX_TIME_TEXT:
        raise PayloadError("malformed", f"device {device}: field {field}: time text too long")
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return (moment - _EPOCH) // timedelta(milliseconds=1)
    except (ValueError, OverflowError) as exc:
        raise PayloadError("malformed", f"device {device}: field {field}: not an ISO 8601 time "
                                        f"({_show(value)})") from exc


def _skew(device_ms: int | None, received: int) -> int:
    return FLAG_CLOCK_SKEW if device_ms is not None and abs(device_ms - received) > CLOCK_SKEW_MS else 0


def _identity(name: str) -> str:
    """Compare reader names and MACs without regard to case or separators (AC:23:3F... == ac233f...)."""
    return name.strip().casefold().translate(_MAC_SEPARATORS)


def _show(text: str) -> str:
    """A device-supplied string, shortened and quoted, safe to put in a log line."""
    return repr(text[:40] + ("..." if len(text) > 40 else ""))
