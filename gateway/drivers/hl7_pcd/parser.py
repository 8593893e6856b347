"""I/O-free HL7 v2 parsing: separators, segments, escapes and timestamps, with one error type.

Why our own parser and not python-hl7 (PyPI ``hl7``): that library is untyped, last released in 2022,
splits segments on CR only (PCD senders in the wild use LF and CRLF), checks the header with
``assert`` and lets ``IndexError``/``AssertionError`` escape on garbage, and its MLLP reader relies on
private ``asyncio.StreamReader`` internals, has no partial-message timeout and does not serve a
serial line. What Wardlink needs of HL7 v2 is small (split, unescape, read a few fields), so this
module does exactly that, is fuzzed by the tests, and raises only :class:`Hl7Error`.

Tolerated drift: segment terminators CR, LF or CRLF (when a message uses CR, a lone LF is data),
encoding characters ``^~\\&`` or ``^~\\&#`` (2.7 truncation character), leading whitespace or NUL,
non-UTF-8 bytes (decoded as Latin-1, HL7's most common 8-bit character set, rather than failing).
Field numbering follows the standard: ``segment.raw(3)`` is OBX-3, and for MSH ``raw(1)`` is the
field separator and ``raw(2)`` the encoding characters.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

log = logging.getLogger(__name__)

# HL7 table 0357 (message error condition codes) used in ERR-3.
SEGMENT_SEQUENCE_ERROR: Final = 100
REQUIRED_FIELD_MISSING: Final = 101
DATA_TYPE_ERROR: Final = 102
UNSUPPORTED_MESSAGE_TYPE: Final = 200
UNSUPPORTED_EVENT_CODE: Final = 201
APPLICATION_INTERNAL_ERROR: Final = 207
ERROR_TEXT: Final[dict[int, str]] = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}

# Bounds of the caches of results keyed on field text (which comes from the network): entries, and
# the longest key cached, so a cache holds at most about CACHE_SIZE * MAX_CACHED_KEY characters.
CACHE_SIZE: Final = 4096
MAX_CACHED_KEY: Final = 256

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
# Ids PCD messages are made of, all matching _SEGMENT_ID: a set look-up instead of a regex per segment.
_COMMON_IDS: Final = frozenset({"MSH", "PID", "PD1", "PV1", "PV2", "ORC", "OBR", "OBX", "NTE", "TQ1", "PRT", "EVN"})
_BODY_IDS: Final = _COMMON_IDS - {"MSH"}  # what may follow the MSH: a second one is an error
_FIRST: Final = operator.itemgetter(0)
_DTM = re.compile(r"(\d+)(?:\.(\d{1,4}))?([+-]\d{4})?")


class Hl7Error(ValueError):
    """A message or field that is not valid HL7 v2; carries what an ERR segment needs."""

    def __init__(self, code: int, reason: str, segment: str = "", sequence: int = 0, field: int = 0) -> None:
        """``code`` from HL7 table 0357; location as segment id, its occurrence (1-based) and field number."""
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.segment = segment
        self.sequence = sequence
        self.field = field


@dataclass(frozen=True, slots=True)
class Separators:
    """The delimiters a message declares in MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None  # HL7 2.7's fifth encoding character, usually '#'
    # All of the above in one string, for keys of caches: a str hashes once and in C, where hashing the
    # dataclass runs Python code on every look-up.
    key: str = dataclasses.field(init=False, repr=False, compare=False)
    # True when no delimiter can occur in a number ('+', '-', '.' are allowed delimiters, digits are not): a
    # field whose stripped text is a number then holds no delimiter or escape, and its text is its value.
    plain_numbers: bool = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Compute ``key`` (repr of the tuple, so that no two different sets of delimiters share one)."""
        chars = (self.field, self.component, self.repetition, self.escape, self.subcomponent, self.truncation)
        object.__setattr__(self, "key", repr(chars))
        object.__setattr__(self, "plain_numbers", not any(c in "+-." for c in chars if c))

    @property
    def encoding(self) -> str:
        """MSH-2 as the message wrote it."""
        return self.component + self.repetition + self.escape + self.subcomponent + (self.truncation or "")


class Segment:
    """One segment: ``fields[n]`` is field n as raw (still escaped) text."""

    __slots__ = ("_split", "fields", "id", "seps")

    def __init__(self, fields: list[str], seps: Separators) -> None:
        """Wrap split fields; ``fields[0]`` is the segment id."""
        self.fields = fields
        self.id = fields[0]
        self.seps = seps
        # Field n split into repetitions of raw components, filled by the first read that has to split it:
        # a field read several times is split once (re-splitting was most of the decode time).
        self._split: dict[int, list[list[str]]] | None = None

    def raw(self, n: int) -> str:
        """Field ``n`` as sent (escaped, with its repetitions and components), or ``""``."""
        return self.fields[n] if 0 <= n < len(self.fields) else ""

    def repetitions(self, n: int) -> list[str]:
        """The raw repetitions of field ``n`` (MSH-1 and MSH-2 are never split)."""
        value = self.raw(n)
        if self.id == "MSH" and n <= 2:
            return [value]
        return value.split(self.seps.repetition)

    def _components(self, n: int) -> list[list[str]]:
        """Field ``n`` as repetitions of raw components, split once per segment."""
        if self._split is None:
            self._split = {}
        split = self._split.get(n)
        if split is None:
            component = self.seps.component
            split = self._split[n] = [rep.split(component) for rep in self.repetitions(n)]
        return split

    def get(self, n: int, component: int = 1, rep: int = 0, sub: int = 1) -> str:
        """One leaf of field ``n`` (1-based component and subcomponent, 0-based repetition), unescaped."""
        seps = self.seps
        if component == 1 and rep == 0 and sub == 1 and (n > 2 or self.id != "MSH"):
            fields = self.fields
            return first_leaf(fields[n] if 0 <= n < len(fields) else "", seps)
        reps = self._components(n)
        if rep >= len(reps):
            return ""
        comps = reps[rep]
        if not 1 <= component <= len(comps):
            return ""
        value = comps[component - 1]
        if sub != 1 or seps.subcomponent in value:
            subs = value.split(seps.subcomponent)
            if not 1 <= sub <= len(subs):
                return ""
            value = subs[sub - 1]
        return unescape(value, seps) if seps.escape in value else value

    def components(self, n: int, rep: int = 0) -> list[str]:
        """All components of one repetition of field ``n``, unescaped (first subcomponent of each)."""
        reps = self._components(n)
        if rep >= len(reps) or reps[rep] == [""]:  # [""] is what an empty repetition splits into
            return []
        return [unescape(c.split(self.seps.subcomponent)[0], self.seps) for c in reps[rep]]


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed message: its separators and segments in order (the first one is MSH)."""

    seps: Separators
    segments: list[Segment]

    @property
    def header(self) -> Segment:
        """The MSH segment."""
        return self.segments[0]

    def first(self, segment_id: str) -> Segment | None:
        """The first segment with this id, or None."""
        return next((s for s in self.segments if s.id == segment_id), None)


def first_leaf(value: str, seps: Separators) -> str:
    """The first subcomponent of the first component of the first repetition of a raw field, unescaped.

    What ``Segment.get(n)`` reads (except MSH-1/MSH-2), from the field's text alone, so a row split into
    field texts is read without a Segment. Most values (OBX-2, -5, -11, -14) hold no delimiter: then the
    value is the text.
    """
    if seps.component in value or seps.repetition in value or seps.subcomponent in value:
        value = value.split(seps.repetition, 1)[0].split(seps.component, 1)[0].split(seps.subcomponent, 1)[0]
    return unescape(value, seps) if seps.escape in value else value


def decode_text(data: bytes) -> str:
    """Bytes to text: UTF-8 when valid, otherwise Latin-1 (which never fails)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse(data: bytes | str) -> Message:
    """Parse one message; raise :class:`Hl7Error` naming the first thing that makes it unreadable."""
    seps, fields = split_message(decode_text(data) if isinstance(data, bytes) else data)
    return Message(seps, [Segment(f, seps) for f in fields])


def split_message(text: str) -> tuple[Separators, list[list[str]]]:
    """A message's separators and its segments split into raw fields (``fields[n]`` is field n, as in Segment).

    Raise :class:`Hl7Error` naming the first thing that makes it unreadable. :func:`parse` wraps the
    result in Segments; the PCD-01 mapping reads the field lists directly.
    """
    text = text.lstrip(" \t\r\n\x00").rstrip("\r\n\x00")
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7Error(SEGMENT_SEQUENCE_ERROR, "message does not begin with an MSH segment", "MSH", 1, 0)
    seps = _separators(text)
    lines = _split_segments(text)
    field = seps.field
    body = [line.split(field) for line in lines[1:]]
    # Every line after the MSH starts with a usual id (it is three characters, so the line has the field
    # separator right after it or ends there): all are valid segments and none needs another look.
    if _BODY_IDS.issuperset(map(_FIRST, body)) and _segment_start(lines[0], 1, seps):
        return seps, [_header_fields(lines[0], seps), *body]
    segments: list[list[str]] = []
    for number, line in enumerate(lines, start=1):
        if not line or line.isspace():  # what `not line.strip()` says, without copying the line
            continue
        _segment_start(line, number, seps)
        if not segments:
            segments.append(_header_fields(line, seps))
        elif line.startswith("MSH"):
            raise Hl7Error(SEGMENT_SEQUENCE_ERROR, f"line {number}: a second MSH (one message per MLLP block)",
                           "MSH", 2, 0)
        else:
            segments.append(line.split(field))
    return seps, segments


def _segment_start(line: str, number: int, seps: Separators) -> bool:
    """True when line ``number`` starts as a segment does (an id, then the field separator or its end); else raise."""
    seg_id = line[:3]
    if ((seg_id not in _COMMON_IDS and not _SEGMENT_ID.fullmatch(seg_id))
            or (len(line) > 3 and line[3] != seps.field)):
        raise Hl7Error(SEGMENT_SEQUENCE_ERROR, f"line {number} is not a segment ({line[:12]!r})")
    return True


def _header_fields(line: str, seps: Separators) -> list[str]:
    """The MSH line's fields: MSH-1 and MSH-2 are the separators themselves, never split."""
    header_end = 4 + len(seps.encoding)
    rest = line[header_end + 1:].split(seps.field) if len(line) > header_end else []
    return ["MSH", seps.field, seps.encoding, *rest]


def _separators(text: str) -> Separators:
    field = text[3]
    # MSH-2 is at most five characters, so what ends it (the field separator or the line's end) is within
    # the next six; when it is not, the six taken are already too many and _separators_of says so.
    head = text[4:10]
    end = len(head)
    for stop in (field, "\r", "\n"):
        at = head.find(stop, 0, end)
        if at >= 0:
            end = at
    return _separators_of(field, head[:end])


@functools.lru_cache(maxsize=64)
def _separators_of(field: str, encoding: str) -> Separators:
    """Validate and build the separators once per set of delimiters (with their ``key``), not once per message."""
    chars = field + encoding
    if (field.isalnum() or field.isspace() or not 4 <= len(encoding) <= 5 or len(set(chars)) != len(chars)
            or any(c.isalnum() or c.isspace() for c in chars)):
        raise Hl7Error(DATA_TYPE_ERROR, f"MSH-1/MSH-2 separators {chars!r} are not valid", "MSH", 1, 2)
    return Separators(field, encoding[0], encoding[1], encoding[2], encoding[3],
                      encoding[4] if len(encoding) == 5 else None)


def _split_segments(text: str) -> list[str]:
    if "\r" in text:
        if "\n" not in text:
            return text.split("\r")  # plain CR, the standard: no line can start with an LF to drop
        # CR (or CRLF) terminators: a lone LF is then part of a value, as some monitors put it in text.
        return [line[1:] if line.startswith("\n") else line for line in text.split("\r")]
    return text.split("\n")


def unescape(text: str, seps: Separators) -> str:
    r"""Resolve HL7 escapes (``\F\ \S\ \T\ \R\ \E\``, ``\P\``, ``\Xhh\``, ``\.br\``); unknown ones stay as sent."""
    esc = seps.escape
    if esc not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        j = text.find(esc, i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = text.find(esc, j + 1)
        if k < 0:
            out.append(text[j:])  # unterminated escape: keep it verbatim
            break
        replacement = _escape_value(text[j + 1:k], seps)
        out.append(text[j:k + 1] if replacement is None else replacement)
        i = k + 1
    return "".join(out)


def _escape_value(seq: str, seps: Separators) -> str | None:
    simple = {"F": seps.field, "S": seps.component, "T": seps.subcomponent, "R": seps.repetition,
              "E": seps.escape, "P": seps.truncation, "H": "", "N": "", ".br": "\n"}
    if seq in simple:
        return simple[seq]
    if len(seq) >= 3 and len(seq) % 2 == 1 and seq[0] == "X" and all(c in "0123456789abcdefABCDEF" for c in seq[1:]):
        return bytes.fromhex(seq[1:]).decode("latin-1")
    return None


def escape(text: str, seps: Separators) -> str:
    """Escape delimiters (and CR/LF, which would end the segment) so that :func:`unescape` gives ``text`` back."""
    # Most values (control ids, trigger codes) hold none of these: skip building the table for them.
    if not (seps.escape in text or seps.field in text or seps.component in text or seps.subcomponent in text
            or seps.repetition in text or "\r" in text or "\n" in text
            or (seps.truncation is not None and seps.truncation in text)):
        return text
    table = {seps.escape: "E", seps.field: "F", seps.component: "S", seps.subcomponent: "T", seps.repetition: "R",
             "\r": "X0D", "\n": "X0A"}
    if seps.truncation:
        table[seps.truncation] = "P"
    return "".join(f"{seps.escape}{table[c]}{seps.escape}" if c in table else c for c in text)


def parse_ts(text: str) -> int | None:
    """An HL7 DTM (``YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]``) as ms since the epoch; None if invalid.

    A time without zone offset is taken as UTC: the gateway cannot know the sender's zone, and a wrong
    guess then shows up as a clock-skew flag rather than as silently shifted data. Seventeen-digit
    forms with milliseconds but no dot (seen from monitors) are accepted.
    """
    # Every row of a message usually carries the same OBX-14, so results are cached; the key is network
    # text, so only short ones (a DTM is at most 28 characters) are, in a bounded cache.
    return _parse_ts_cached(text) if len(text) <= MAX_CACHED_KEY else _parse_ts(text)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _parse_ts_cached(text: str) -> int | None:
    """:func:`_parse_ts`, remembered."""
    return _parse_ts(text)


def _parse_ts(text: str) -> int | None:
    """:func:`parse_ts`, uncached."""
    match = _DTM.fullmatch(text.strip())
    if match is None:
        return None
    digits, fraction, offset = match.groups()
    if len(digits) > 14 and fraction is None and len(digits) <= 18:
        digits, fraction = digits[:14], digits[14:]
    if len(digits) not in (4, 6, 8, 10, 12, 14):
        return None
    parts = [int(digits[i:i + 2]) for i in range(4, len(digits), 2)]
    month, day, hour, minute, second = (parts + [1, 1, 0, 0, 0][len(parts):])[:5]
    zone = UTC
    if offset:
        sign = -1 if offset[0] == "-" else 1
        try:
            zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        except ValueError:
            return None
    try:
        moment = datetime(int(digits[:4]), month, day, hour, minute, second, tzinfo=zone)
    except ValueError:
        return None
    millis = int((fraction or "0").ljust(3, "0")[:3])
    return int(moment.timestamp()) * 1000 + millis


def format_ts(ms: int) -> str:
    """Milliseconds since the epoch as an HL7 DTM in UTC, e.g. ``20260101000000+0000``."""
    # Every ACK formats "now", and the text changes once a second: keep the last second's text (one entry).
    global _last_ts
    second = ms // 1000
    if _last_ts[0] == second:
        return _last_ts[1]
    text = _format_ts(ms)
    _last_ts = (second, text)
    return text


def _format_ts(ms: int) -> str:
    """:func:`format_ts`, unremembered (the text depends on the whole second only: fractions are dropped)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%d%H%M%S+0000")


_last_ts: tuple[int | None, str] = (None, "")
