"""WLB/1 encoder for the simulated bedside monitor (spec: docs/serial-protocol.md).

Written apart from the gateway's parser on purpose: it shares no code or constants with it, so that
a misreading of the specification on either side makes the round-trip tests fail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Final

START: Final = 0xC0
END: Final = 0xC1
ESCAPE: Final = 0xDB
ESCAPE_FLIP: Final = 0x20
MAX_BODY: Final = 512  # unstuffed LEN + TYPE + COUNTER + PAYLOAD + CRC
MAX_TEXT: Final = 64

TYPE_IDENT: Final = ord("I")
TYPE_NUMERICS: Final = ord("N")
TYPE_ALARM: Final = ord("A")
TYPE_HEARTBEAT: Final = ord("H")
PROTOCOL_VERSION: Final = 1

PARAM_HR: Final = 0x0001
PARAM_SPO2: Final = 0x0002
PARAM_PULSE: Final = 0x0003
PARAM_PERF_INDEX: Final = 0x0004
PARAM_NIBP_SYS: Final = 0x0010
PARAM_NIBP_DIA: Final = 0x0011
PARAM_NIBP_MEAN: Final = 0x0012
PARAM_RESP: Final = 0x0020
PARAM_TEMP: Final = 0x0030
PARAM_ETCO2: Final = 0x0040
PARAM_ST_II: Final = 0x0100  # vendor extension the gateway does not know

# Decimal places each parameter is sent with: the monitor's display resolution.
RESOLUTION: Final[dict[int, int]] = {
    PARAM_HR: 0,
    PARAM_SPO2: 0,
    PARAM_PULSE: 0,
    PARAM_PERF_INDEX: 2,
    PARAM_NIBP_SYS: 0,
    PARAM_NIBP_DIA: 0,
    PARAM_NIBP_MEAN: 0,
    PARAM_RESP: 0,
    PARAM_TEMP: 1,
    PARAM_ETCO2: 0,
    PARAM_ST_II: 2,
}

STATUS_INVALID: Final = 0x01
STATUS_ARTEFACT: Final = 0x02
STATUS_SENSOR_OFF: Final = 0x04
STATUS_DEMO: Final = 0x08

PRIORITY_NONE: Final = 0
PRIORITY_LOW: Final = 1
PRIORITY_MEDIUM: Final = 2
PRIORITY_HIGH: Final = 3
KIND_PHYSIOLOGICAL: Final = 0
KIND_TECHNICAL: Final = 1
PHASE_START: Final = 0
PHASE_CONTINUE: Final = 1
PHASE_END: Final = 2

ALARM_HIGH_LIMIT: Final = 0x0001
ALARM_LOW_LIMIT: Final = 0x0002
ALARM_LEADS_OFF: Final = 0x0201
ALARM_SENSOR_OFF: Final = 0x0202

_AUTO_DECIMALS: Final = 6  # most decimals tried for a parameter without a fixed resolution
_INT32_MAX: Final = 2**31 - 1
_RESERVED: Final = frozenset({START, END, ESCAPE})


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR), bit by bit."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """Escape the reserved bytes of a frame body so SOF and EOF never occur inside it."""
    out = bytearray()
    for byte in body:
        if byte in _RESERVED:
            out.append(ESCAPE)
            out.append(byte ^ ESCAPE_FLIP)
        else:
            out.append(byte)
    return bytes(out)


def _uint(value: int, size: int, field: str) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise ValueError(f"{field}={value} does not fit in {8 * size} unsigned bits")
    return value.to_bytes(size, "big")


def _text(value: str, field: str) -> bytes:
    if len(value) > MAX_TEXT or not all(" " <= ch <= "~" for ch in value):
        raise ValueError(f"{field} must be at most {MAX_TEXT} printable ASCII characters: {value!r}")
    return bytes([len(value)]) + value.encode("ascii")


def _frame(frame_type: int, counter: int, payload: bytes) -> bytes:
    body = _uint(len(payload), 2, "length") + bytes([frame_type]) + _uint(counter, 2, "counter") + payload
    body += crc16_ccitt_false(body).to_bytes(2, "big")
    if len(body) > MAX_BODY:
        raise ValueError(f"frame body of {len(body)} bytes exceeds {MAX_BODY}")
    return bytes([START]) + stuff(body) + bytes([END])


def exponent_for(param: int, value: float) -> int:
    """The decimal exponent a value is sent with: the parameter's resolution, coarser if it must fit."""
    if not math.isfinite(value):
        raise ValueError(f"param {param}: value {value!r} is not finite")
    exact = Fraction(value)
    decimals = RESOLUTION.get(param)
    if decimals is None:
        # Unknown resolution: the fewest decimals that carry the value unchanged.
        decimals = next((d for d in range(_AUTO_DECIMALS) if round(value, d) == value), _AUTO_DECIMALS)
    while abs(exact * Fraction(10) ** decimals) > _INT32_MAX:
        decimals -= 1
    if decimals < -127:
        raise ValueError(f"param {param}: value {value!r} is too large for WLB/1")
    return -decimals


def _scaled(param: int, value: float) -> bytes:
    exponent = exponent_for(param, value)
    mantissa = round(Fraction(value) * Fraction(10) ** -exponent)  # exact arithmetic, ties to even
    return mantissa.to_bytes(4, "big", signed=True) + exponent.to_bytes(1, "big", signed=True)


def encode_ident(counter: int, model: str, serial_number: str, firmware: str) -> bytes:
    """An IDENT frame: protocol version, model, serial number and firmware version."""
    payload = bytes([PROTOCOL_VERSION])
    payload += _text(model, "model") + _text(serial_number, "serial_number") + _text(firmware, "firmware")
    return _frame(TYPE_IDENT, counter, payload)


def encode_numerics(device_time_ms: int, counter: int, values: Sequence[tuple[int, float, int]]) -> bytes:
    """A NUMERICS frame from (param id, value, status bits) triples, each at its parameter's resolution."""
    if len(values) > 255:
        raise ValueError(f"{len(values)} values do not fit in one frame")
    payload = _uint(device_time_ms, 8, "device_time_ms") + bytes([len(values)])
    for param, value, status in values:
        payload += _uint(param, 2, "param") + _scaled(param, value) + _uint(status, 1, "status")
    return _frame(TYPE_NUMERICS, counter, payload)


def encode_alarm(
    device_time_ms: int,
    counter: int,
    *,
    code: int,
    priority: int,
    kind: int,
    phase: int,
    param: int = 0,
    text: str = "",
) -> bytes:
    """An ALARM frame: one transition (start, continue, end) of one alarm condition."""
    if priority not in (PRIORITY_NONE, PRIORITY_LOW, PRIORITY_MEDIUM, PRIORITY_HIGH):
        raise ValueError(f"priority={priority} is not 0..3")
    if kind not in (KIND_PHYSIOLOGICAL, KIND_TECHNICAL):
        raise ValueError(f"kind={kind} is not 0 or 1")
    if phase not in (PHASE_START, PHASE_CONTINUE, PHASE_END):
        raise ValueError(f"phase={phase} is not 0..2")
    payload = _uint(device_time_ms, 8, "device_time_ms") + _uint(code, 2, "code")
    payload += bytes([priority, kind, phase]) + _uint(param, 2, "param") + _text(text, "text")
    return _frame(TYPE_ALARM, counter, payload)


def encode_heartbeat(device_time_ms: int, counter: int) -> bytes:
    """A HEARTBEAT frame carrying only the monitor's clock."""
    return _frame(TYPE_HEARTBEAT, counter, _uint(device_time_ms, 8, "device_time_ms"))
