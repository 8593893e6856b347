"""I/O-free register codec: 16-bit words to int16/uint16/int32/uint32/float32/bool and back, either word order.

Modbus sends each 16-bit register high byte first; a 32-bit value spans two registers and devices disagree
on which comes first. ``big`` puts the high word in the lower address (ABCD), ``little`` the low word (CDAB).
Decoding checks every word, so whatever a device or a register dump holds, the only error is
:class:`RegisterError`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Final, Literal

from gateway.drivers.modbus_common.errors import RegisterError

ValueType = Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
WordOrder = Literal["big", "little"]

VALUE_TYPES: Final[tuple[ValueType, ...]] = ("int16", "uint16", "int32", "uint32", "float32", "bool")
WORDS: Final[dict[ValueType, int]] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "bool": 1}
_STRUCTS: Final[dict[ValueType, struct.Struct]] = {
    "int16": struct.Struct(">h"),
    "uint16": struct.Struct(">H"),
    "int32": struct.Struct(">i"),
    "uint32": struct.Struct(">I"),
    "float32": struct.Struct(">f"),
}


def check_words(words: Sequence[int], expected: int | None = None) -> None:
    """Raise RegisterError unless every word is an int in 0..65535 (and there are ``expected`` of them)."""
    if expected is not None and len(words) != expected:
        raise RegisterError(f"{len(words)} register words where {expected} are needed")
    for word in words:
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise RegisterError(f"register word {word!r} is not an integer in 0..65535")


def decode_value(words: Sequence[int], value_type: ValueType, word_order: WordOrder = "big") -> int | float:
    """Decode one value from its registers (a bool point is one word, 0 or not 0); RegisterError if impossible."""
    check_words(words, WORDS[value_type])
    if value_type == "bool":
        return int(words[0] != 0)
    ordered = words if word_order == "big" else list(reversed(words))
    raw = b"".join(word.to_bytes(2, "big") for word in ordered)
    value: int | float = _STRUCTS[value_type].unpack(raw)[0]
    return value


def encode_value(value: float, value_type: ValueType, word_order: WordOrder = "big") -> list[int]:
    """Registers holding ``value`` as the device would send it; RegisterError if it does not fit the type."""
    if value_type == "bool":
        return [1 if value else 0]
    if value_type != "float32" and not (isinstance(value, int) or float(value).is_integer()):
        raise RegisterError(f"{value!r} is not an integer for {value_type}")
    try:
        raw = _STRUCTS[value_type].pack(value if value_type == "float32" else int(value))
    except (struct.error, OverflowError) as exc:
        raise RegisterError(f"{value!r} does not fit {value_type}: {exc}") from exc
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words if word_order == "big" else list(reversed(words))


def shortest_float32(value: float) -> float:
    """The shortest decimal that is the same float32, so a device's 20.3 reads 20.3, not 20.299999237."""
    if not math.isfinite(value):
        return value
    packed = _STRUCTS["float32"].pack(value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if _STRUCTS["float32"].pack(candidate) == packed:
            return candidate
    return value


def decode_text(words: Sequence[int]) -> str:
    """ASCII text packed two characters per register, high byte first; padding (NUL, space) stripped.

    Bytes that are not printable ASCII become ``?``: identity texts go into logs and the contract.
    """
    check_words(words)
    raw = b"".join(word.to_bytes(2, "big") for word in words)
    text = "".join(chr(b) if 0x20 <= b <= 0x7E else ("\0" if b == 0 else "?") for b in raw)
    return text.split("\0", 1)[0].strip()
