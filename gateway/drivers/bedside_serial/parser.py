"""I/O-free parser for the WLB/1 bedside monitor protocol (spec: docs/serial-protocol.md).

Exceptions::

    ValueError
    └── FrameError   one frame cannot be accepted; ``reason`` says why

``FrameParser.feed`` never raises: it counts rejected frames and keeps going. Only
:func:`decode_frame`, which insists on exactly one frame, raises :class:`FrameError`.
"""

from __future__ import annotations

import binascii
import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

logger = logging.getLogger(__name__)

SOF: Final = 0xC0
EOF: Final = 0xC1
ESC: Final = 0xDB
HEADER_LEN: Final = 5  # LEN u16, TYPE u8, COUNTER u16
CRC_LEN: Final = 2
MAX_FRAME: Final = 512  # unstuffed header + payload + CRC
MAX_PAYLOAD: Final = MAX_FRAME - HEADER_LEN - CRC_LEN
MAX_WIRE: Final = 1 + 2 * MAX_FRAME + 1  # every body byte stuffed, plus SOF and EOF
MAX_TEXT: Final = 64

TYPE_IDENT: Final = 0x49
TYPE_NUMERICS: Final = 0x4E
TYPE_ALARM: Final = 0x41
TYPE_HEARTBEAT: Final = 0x48

Reason = Literal["crc", "malformed", "oversize", "unknown-type"]

_SPECIAL: Final = re.compile(b"[\xc0\xc1\xdb]")
_UNESCAPE: Final = {0xE0: SOF, 0xE1: EOF, 0xFB: ESC}
_PRINTABLE: Final = re.compile(b"[\x20-\x7e]*")
_HEADER: Final = struct.Struct(">HBH")
_U8: Final = struct.Struct(">B")
_U64: Final = struct.Struct(">Q")
_NUMERICS_HEAD: Final = struct.Struct(">QB")
_ENTRY: Final = struct.Struct(">HibB")  # param, mantissa, exponent, status
_ALARM: Final = struct.Struct(">QHBBBH")


class FrameError(ValueError):
    """A frame that cannot be accepted; ``reason`` is crc, malformed, oversize or unknown-type."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class IdentFrame:
    """Who the monitor is: sent on start and periodically."""

    counter: int
    protocol: int
    model: str
    serial_number: str
    firmware: str


@dataclass(frozen=True, slots=True)
class NumericValue:
    """One parameter value with the monitor's status bits (see the spec for their meaning)."""

    param: int
    value: float
    status: int


@dataclass(frozen=True, slots=True)
class NumericsFrame:
    """One measurement cycle: device time and a value per parameter."""

    device_time_ms: int
    counter: int
    values: tuple[NumericValue, ...]


@dataclass(frozen=True, slots=True)
class AlarmFrame:
    """One transition of an alarm condition, with the monitor's raw priority, kind and phase numbers."""

    device_time_ms: int
    counter: int
    code: int
    priority: int
    kind: int
    phase: int
    param: int
    text: str


@dataclass(frozen=True, slots=True)
class HeartbeatFrame:
    """Link keep-alive carrying the monitor's clock."""

    device_time_ms: int
    counter: int


Frame = IdentFrame | NumericsFrame | AlarmFrame | HeartbeatFrame


class _Reader:
    """Reads a payload front to back; any shortfall or leftover is a malformed frame."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, shape: struct.Struct) -> tuple[int, ...]:
        end = self.pos + shape.size
        if end > len(self.data):
            raise FrameError("malformed", f"payload ends {end - len(self.data)} bytes early")
        values: tuple[int, ...] = shape.unpack_from(self.data, self.pos)
        self.pos = end
        return values

    def text(self, field: str) -> str:
        (size,) = self.take(_U8)
        raw = self.data[self.pos : self.pos + size]
        if len(raw) < size:
            raise FrameError("malformed", f"{field}: text ends {size - len(raw)} bytes early")
        if size > MAX_TEXT or not _PRINTABLE.fullmatch(raw):
            raise FrameError("malformed", f"{field}: not printable ASCII of at most {MAX_TEXT} characters")
        self.pos += size
        return raw.decode("ascii")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise FrameError("malformed", f"{len(self.data) - self.pos} bytes after the payload")


def _scaled(mantissa: int, exponent: int) -> float:
    # Integer arithmetic, then one correctly rounded division: 366e-1 becomes exactly the float 36.6,
    # where float(366) * 10**-1 would give 36.6000000000000014.
    scale: int = 10 ** abs(exponent)
    return float(mantissa * scale) if exponent >= 0 else mantissa / scale


def _ident(counter: int, reader: _Reader) -> IdentFrame:
    (protocol,) = reader.take(_U8)
    model, serial, firmware = reader.text("model"), reader.text("serial"), reader.text("firmware")
    return IdentFrame(counter, protocol, model, serial, firmware)


def _numerics(counter: int, reader: _Reader) -> NumericsFrame:
    device_time, count = reader.take(_NUMERICS_HEAD)
    entries = []
    for _ in range(count):
        param, mantissa, exponent, status = reader.take(_ENTRY)
        entries.append(NumericValue(param, _scaled(mantissa, exponent), status))
    return NumericsFrame(device_time, counter, tuple(entries))


def _alarm(counter: int, reader: _Reader) -> AlarmFrame:
    device_time, code, priority, kind, phase, param = reader.take(_ALARM)
    if priority > 3 or kind > 1 or phase > 2:
        raise FrameError("malformed", f"alarm priority/kind/phase {priority}/{kind}/{phase} out of range")
    return AlarmFrame(device_time, counter, code, priority, kind, phase, param, reader.text("text"))


def _heartbeat(counter: int, reader: _Reader) -> HeartbeatFrame:
    (device_time,) = reader.take(_U64)
    return HeartbeatFrame(device_time, counter)


_DECODERS: Final[dict[int, Callable[[int, _Reader], Frame]]] = {
    TYPE_IDENT: _ident,
    TYPE_NUMERICS: _numerics,
    TYPE_ALARM: _alarm,
    TYPE_HEARTBEAT: _heartbeat,
}


def _decode_body(body: bytes) -> Frame:
    """Check and decode one unstuffed body (header, payload, CRC); raise FrameError if it is not valid."""
    if len(body) > MAX_FRAME:
        raise FrameError("oversize", f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    if len(body) < HEADER_LEN + CRC_LEN:
        raise FrameError("malformed", f"frame of {len(body)} bytes is shorter than a header and CRC")
    expected = binascii.crc_hqx(body[:-CRC_LEN], 0xFFFF)  # crc_hqx with init 0xFFFF is CCITT-FALSE
    received = int.from_bytes(body[-CRC_LEN:], "big")
    if expected != received:
        raise FrameError("crc", f"CRC 0x{received:04x} received, 0x{expected:04x} computed")
    length, frame_type, counter = _HEADER.unpack_from(body)
    if length != len(body) - HEADER_LEN - CRC_LEN:
        raise FrameError("malformed", f"length field {length} but {len(body) - 7} payload bytes")
    decoder = _DECODERS.get(frame_type)
    if decoder is None:
        raise FrameError("unknown-type", f"unknown frame type 0x{frame_type:02x}")
    reader = _Reader(body[HEADER_LEN:-CRC_LEN])
    frame = decoder(counter, reader)
    reader.done()
    return frame


class FrameParser:
    """Turns a serial byte stream into frames; buffers partial frames, resynchronises and counts rejects."""

    def __init__(self) -> None:
        self.frames_ok = 0
        self.frames_bad_crc = 0
        self.frames_malformed = 0
        self.frames_oversize = 0
        self.frames_unknown = 0  # good CRC, type this parser does not know: skipped, not an error
        self.bytes_discarded = 0  # every byte that was not part of an accepted frame
        self.counter_gaps = 0  # times the frame counter did not advance by one
        self.last_error: str | None = None
        self.last_reason: Reason | None = None
        self._body = bytearray()
        self._in_frame = False
        self._escaped = False
        self._wire = 0  # wire bytes (SOF included) of the frame being collected
        self._last_counter: int | None = None

    @property
    def frames_bad(self) -> int:
        """Frames rejected as damaged (bad CRC, malformed or oversize)."""
        return self.frames_bad_crc + self.frames_malformed + self.frames_oversize

    def pending(self) -> int:
        """Wire bytes of the incomplete frame held right now (0 between frames), at most MAX_WIRE."""
        return self._wire

    def reset(self) -> None:
        """Drop any partial frame and forget the counter (unplug, replug, partial-frame timeout)."""
        self.bytes_discarded += self._wire
        self._clear()
        self._last_counter = None

    def feed(self, data: bytes) -> list[Frame]:
        """Consume bytes from the line and return the frames they complete; never raises."""
        data = bytes(data)
        frames: list[Frame] = []
        pos, end = 0, len(data)
        while pos < end:
            if not self._in_frame:
                start = data.find(SOF, pos)
                skip_to = end if start < 0 else start
                self.bytes_discarded += skip_to - pos
                pos = skip_to
                if start >= 0:
                    self._begin()
                    pos += 1
            elif self._escaped:
                pos = self._unescape(data[pos], pos)
            else:
                match = _SPECIAL.search(data, pos)
                stop = end if match is None else match.start()
                if stop > pos:
                    pos += self._append(data[pos:stop])
                    continue
                pos = self._special(data[pos], pos, frames)
        return frames

    def _clear(self) -> None:
        self._body.clear()
        self._in_frame = False
        self._escaped = False
        self._wire = 0

    def _begin(self) -> None:
        self._clear()
        self._in_frame = True
        self._wire = 1

    def _reject(self, reason: Reason, message: str) -> None:
        if reason == "crc":
            self.frames_bad_crc += 1
        elif reason == "oversize":
            self.frames_oversize += 1
        elif reason == "unknown-type":
            self.frames_unknown += 1
        else:
            self.frames_malformed += 1
        self.bytes_discarded += self._wire
        self.last_error = message
        self.last_reason = reason
        logger.debug("frame rejected (%s): %s", reason, message)
        self._clear()

    def _special(self, byte: int, pos: int, frames: list[Frame]) -> int:
        """Handle SOF, EOF or ESC inside a frame; return the next position to read."""
        if byte == SOF:
            # The frame so far was cut short (bytes lost, cable replugged); this SOF starts a new one.
            self._reject("malformed", "frame cut short by a new start byte")
            self._begin()
            return pos + 1
        self._wire += 1
        if byte == ESC:
            self._escaped = True
            return pos + 1
        body = bytes(self._body)
        try:
            frame = _decode_body(body)
        except FrameError as exc:
            self._reject(exc.reason, str(exc))
            return pos + 1
        self.frames_ok += 1
        if self._last_counter is not None and frame.counter != (self._last_counter + 1) & 0xFFFF:
            self.counter_gaps += 1
        self._last_counter = frame.counter
        frames.append(frame)
        self._clear()
        return pos + 1

    def _unescape(self, byte: int, pos: int) -> int:
        """Handle the byte after ESC; return the next position to read."""
        original = _UNESCAPE.get(byte)
        if original is None:
            # Leave the byte unread: if it is SOF, the hunt for the next frame starts right there.
            self._reject("malformed", f"invalid escape sequence 0x{ESC:02x} 0x{byte:02x}")
            return pos
        self._escaped = False
        self._append(bytes((original,)))  # counts the escaped byte; ESC itself was counted in _special
        return pos + 1

    def _append(self, chunk: bytes) -> int:
        """Add body bytes up to what the length field allows; return how many of them were taken."""
        taken = min(len(chunk), max(0, 2 - len(self._body)))  # the length field first: it bounds the rest
        self._body += chunk[:taken]
        self._wire += taken
        if len(self._body) < 2:
            return taken
        length = int.from_bytes(self._body[:2], "big")
        if length > MAX_PAYLOAD:
            self._reject("oversize", f"length field {length} exceeds {MAX_PAYLOAD}")
            return taken
        room = HEADER_LEN + length + CRC_LEN - len(self._body)
        rest = min(len(chunk) - taken, room)
        self._body += chunk[taken : taken + rest]
        self._wire += rest
        if len(chunk) - taken > room:
            self._reject("malformed", f"no end byte after the {length} payload bytes announced")
        return taken + rest


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one complete wire frame (SOF to EOF); raise FrameError for anything else."""
    parser = FrameParser()
    frames = parser.feed(data)
    if len(frames) == 1 and parser.bytes_discarded == 0 and parser.pending() == 0:
        return frames[0]
    message = parser.last_error or f"expected one frame, found {len(frames)} and {parser.bytes_discarded} bytes"
    raise FrameError(parser.last_reason or "malformed", message)
