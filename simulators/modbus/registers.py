"""How the simulated devices lay values into 16-bit registers; written apart from the gateway's decoder on purpose."""

from __future__ import annotations

import struct
from typing import Literal

Order = Literal["big", "little"]

# table -> address -> word (coils and discrete inputs: 0 or 1), as a device holds it right now.
Image = dict[str, dict[int, int]]


def _split(packed: bytes, order: Order) -> list[int]:
    high, low = struct.unpack(">HH", packed)
    return [high, low] if order == "big" else [low, high]


def int16(value: int) -> list[int]:
    """A signed 16-bit value, two's complement (values outside the range saturate, as device firmware does)."""
    return [max(-32768, min(32767, value)) & 0xFFFF]


def uint16(value: int) -> list[int]:
    """An unsigned 16-bit value (saturating)."""
    return [max(0, min(0xFFFF, value))]


def int32(value: int, order: Order) -> list[int]:
    """A signed 32-bit value in two registers."""
    return _split(struct.pack(">i", max(-(2**31), min(2**31 - 1, value))), order)


def uint32(value: int, order: Order) -> list[int]:
    """An unsigned 32-bit value in two registers."""
    return _split(struct.pack(">I", max(0, min(2**32 - 1, value))), order)


def float32(value: float, order: Order) -> list[int]:
    """An IEEE-754 single in two registers."""
    return _split(struct.pack(">f", value), order)


def text(value: str, registers: int) -> list[int]:
    """ASCII, two characters per register, high byte first, NUL padded to ``registers``."""
    raw = value.encode("ascii")[: 2 * registers].ljust(2 * registers, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def put(table: dict[int, int], address: int, words: list[int]) -> None:
    """Write ``words`` into ``table`` from ``address`` upwards."""
    for offset, word in enumerate(words):
        table[address + offset] = word
