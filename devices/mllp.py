"""MLLP framing (``0x0B message 0x1C 0x0D``): an incremental, bounded de-framer shared by the HL7 driver (TCP and
serial) and the PCD-04 out channel.

The framer never raises and never holds more than ``max_size`` bytes of one message. Bytes outside a
frame are discarded and counted (line noise, a sender's stray newlines); a start byte inside a frame
restarts it (the earlier, unterminated frame is counted as bad). An oversized message is not
buffered whole: its first ``max_size`` bytes are kept so the receiver can still read MSH-10 and reject
it by its control id, the rest is skipped until the end byte.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

START: Final = 0x0B
END: Final = 0x1C
CR: Final = 0x0D
DEFAULT_MAX_SIZE: Final = 1 << 20  # 1 MiB: a PCD-01 message of a whole monitor is a few KiB


@dataclass(frozen=True, slots=True)
class Frame:
    """One MLLP block's payload; ``oversize`` when it was longer than the limit (payload then truncated)."""

    payload: bytes
    oversize: bool = False


def wrap(payload: bytes) -> bytes:
    """Frame one message for the wire."""
    return bytes((START,)) + payload + bytes((END, CR))


class MllpFramer:
    """Turns a byte stream into MLLP frames; keeps counters of what it had to throw away."""

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        """Start outside a frame."""
        if max_size < 16:
            raise ValueError("max_size must allow at least an MSH segment")
        self.max_size = max_size
        self._buf = bytearray()
        self._in_frame = False
        self._oversize = False
        self.frames_ok = 0
        self.frames_bad = 0  # unterminated frames that were restarted or reset
        self.bytes_discarded = 0  # non-whitespace bytes outside any frame

    def pending(self) -> int:
        """Bytes of a frame that has started but not ended, start byte included (0 between frames)."""
        return len(self._buf) + 1 if self._in_frame else 0

    def reset(self) -> None:
        """Drop a partial frame (it stopped arriving); counted as a bad frame."""
        if self._in_frame:
            self.frames_bad += 1
        self._buf.clear()
        self._in_frame = False
        self._oversize = False

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data``; return the frames it completed, in order."""
        frames: list[Frame] = []
        pos = 0
        size = len(data)
        while pos < size:
            if not self._in_frame:
                start = data.find(START, pos)
                junk = data[pos:] if start < 0 else data[pos:start]
                # CR/LF between frames is what many senders add after the trailer: not worth counting.
                self.bytes_discarded += len(junk.translate(None, b"\r\n"))
                if start < 0:
                    break
                self._in_frame = True
                pos = start + 1
                continue
            end = data.find(END, pos)
            restart = data.find(START, pos, end if end >= 0 else size)
            if restart >= 0:
                # A new start byte before the end: the sender gave up on the earlier message.
                self.frames_bad += 1
                self._buf.clear()
                self._oversize = False
                pos = restart + 1
                continue
            chunk_end = end if end >= 0 else size
            self._append(data[pos:chunk_end])
            if end < 0:
                break
            frames.append(Frame(bytes(self._buf), self._oversize))
            self.frames_ok += 1
            self._buf.clear()
            self._in_frame = False
            self._oversize = False
            pos = end + 1
            if pos < size and data[pos] == CR:
                pos += 1
        return frames

    def _append(self, chunk: bytes) -> None:
        room = self.max_size - len(self._buf)
        if len(chunk) > room:
            self._oversize = True
            chunk = chunk[:max(room, 0)]
        self._buf += chunk
