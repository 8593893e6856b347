"""Typed Modbus errors: what went wrong on the wire or in a map, never a value in disguise.

Exceptions::

    Exception
    └── ModbusError            a request gave no usable reply (the poll fails, the driver counts it)
        ├── ModbusTimeout          no reply within the timeout (dead unit, wrong unit id, cable)
        ├── ModbusExceptionCode    the unit answered with a Modbus exception code
        ├── ModbusBadResponse      a reply that does not fit the request (function, size)
        └── CommLost               the line itself failed: port cannot open, TCP refused or dropped
    ValueError
    ├── RegisterError          register words that cannot be decoded (outside 0..65535, wrong count)
    └── ModbusConfigError      a register map or connection table that cannot work; names the field
"""

from __future__ import annotations

from typing import Final

EXCEPTION_NAMES: Final[dict[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}

# Codes that say "try again later" rather than "this request can never work".
RETRYABLE_CODES: Final = frozenset({5, 6, 10, 11})


class ModbusError(Exception):
    """A Modbus request gave no usable reply."""


class ModbusTimeout(ModbusError):
    """No reply from the unit within the timeout."""


class ModbusExceptionCode(ModbusError):
    """The unit replied with a Modbus exception code (``code``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message}: exception code {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")
        self.code = code

    @property
    def retryable(self) -> bool:
        """True for busy/acknowledge/gateway codes, which may succeed on a later attempt."""
        return self.code in RETRYABLE_CODES


class ModbusBadResponse(ModbusError):
    """A reply that does not answer the request that was sent (function code, register count)."""


class CommLost(ModbusError):
    """The line failed: the serial port cannot be opened, or the TCP connection was refused or dropped."""


class RegisterError(ValueError):
    """Register words that cannot be decoded: a word outside 0..65535 or the wrong number of words."""


class ModbusConfigError(ValueError):
    """A register map or connection table that cannot work; the message names the map or device and field."""
