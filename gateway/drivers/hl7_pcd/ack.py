"""The MSH header a sender wrote, and the ACK Wardlink answers with (MSA and ERR segments).

Acknowledgement codes, in original mode (MSH-15 and MSH-16 empty) / enhanced mode (either set):

- ``AA``/``CA`` the message is stored durably (rows that could not be used are named in ERR with
  severity ``W``; the rest of the message is kept);
- ``AE``/``CE`` Wardlink could not store it right now (outbox failure): send it again;
- ``AR``/``CR`` the message itself is unusable (not HL7, unsupported type, required part missing,
  oversized): sending the same bytes again cannot succeed, so a sender should stop retrying.

The ACK reuses the sender's separators, so a sender with 2.7's five encoding characters reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Literal

import msgspec

from gateway.drivers.hl7_pcd.parser import (
    ERROR_TEXT,
    Hl7Error,
    Message,
    Segment,
    Separators,
    decode_text,
    escape,
    format_ts,
    parse,
)

log = logging.getLogger(__name__)

Outcome = Literal["A", "E", "R"]  # accept, error (retry), reject (do not retry)
APPLICATION: Final = "WARDLINK"


class Header(msgspec.Struct, frozen=True):
    """What the ACK needs from MSH; raw fields are kept escaped, exactly as the sender wrote them.

    A Struct rather than a dataclass: a sender's header is read once and copied with each message's
    MSH-10 (``msgspec.structs.replace``, in C).
    """

    seps: Separators
    sending_application: str  # MSH-3, raw
    sending_facility: str  # MSH-4, raw
    receiving_application: str  # MSH-5, raw
    receiving_facility: str  # MSH-6, raw
    message_code: str  # MSH-9.1, e.g. ORU
    trigger: str  # MSH-9.2, e.g. R01
    control_id: str  # MSH-10, raw
    processing_id: str  # MSH-11, raw
    version: str  # MSH-12, raw
    enhanced: bool  # MSH-15 or MSH-16 set: answer with commit codes (CA/CE/CR)


def read_header(message: Message) -> Header:
    """The header of a parsed message (whether MSH-9 names a supported message is checked by the caller)."""
    return header_of(message.header)


def header_of(msh: Segment) -> Header:
    """The header an MSH segment gives."""
    return Header(
        seps=msh.seps, sending_application=msh.raw(3), sending_facility=msh.raw(4),
        receiving_application=msh.raw(5), receiving_facility=msh.raw(6), message_code=msh.get(9, 1).strip(),
        trigger=msh.get(9, 2).strip(), control_id=msh.raw(10), processing_id=msh.raw(11), version=msh.raw(12),
        enhanced=bool(msh.raw(15).strip() or msh.raw(16).strip()),
    )


def salvage_header(payload: bytes) -> Header | None:
    """The header of a message that failed to parse as a whole, from its first line alone, if readable."""
    text = decode_text(payload[:4096]).lstrip(" \t\r\n\x00")
    first = text.replace("\r\n", "\r").replace("\n", "\r").split("\r", 1)[0]
    try:
        return read_header(parse(first))
    except Hl7Error:
        return None


def build_ack(header: Header | None, outcome: Outcome, control_id: str, now: int,
              errors: Sequence[Hl7Error] = (), warnings: Sequence[Hl7Error] = ()) -> bytes:
    """The ACK message (unframed): MSH, MSA with the sender's MSH-10, then one ERR per problem."""
    seps = header.seps if header else Separators()
    fs, cs = seps.field, seps.component
    trigger = header.trigger if header else ""
    message_type = cs.join(["ACK", escape(trigger, seps), "ACK"]) if trigger else "ACK"
    msh = fs.join([
        "MSH", seps.encoding,
        (header.receiving_application if header else "") or APPLICATION,
        header.receiving_facility if header else "",
        header.sending_application if header else "",
        header.sending_facility if header else "",
        format_ts(now), "", message_type, escape(control_id, seps),
        (header.processing_id if header else "") or "P",
        (header.version if header else "") or "2.6",
    ])
    code = ("C" if header and header.enhanced else "A") + outcome
    segments = [msh, fs.join(["MSA", code, header.control_id if header else ""])]
    segments += [_err(problem, "E", seps) for problem in errors]
    segments += [_err(problem, "W", seps) for problem in warnings]
    return ("\r".join(segments) + "\r").encode("utf-8")


def _err(problem: Hl7Error, severity: str, seps: Separators) -> str:
    cs = seps.component
    parts = [problem.segment, str(problem.sequence or ""), str(problem.field or "")] if problem.segment else []
    location = cs.join(escape(part, seps) for part in parts).rstrip(cs)
    condition = cs.join([str(problem.code), escape(ERROR_TEXT.get(problem.code, ""), seps), "HL70357"])
    # ERR-2 location, ERR-3 condition, ERR-4 severity, ERR-8 user message (the reason in words).
    return seps.field.join(["ERR", "", location, condition, severity, "", "", "", escape(problem.reason, seps)])


def ack_fields(ack: bytes) -> dict[str, object]:
    """MSA and ERR of an ACK as plain data (for golden files and logs): ``{"msa": [...], "err": [[...]]}``."""
    message = parse(ack)
    msa = message.first("MSA")
    errs = [s for s in message.segments if s.id == "ERR"]
    return {
        "msa": [msa.get(1), msa.get(2)] if msa else [],
        "err": [[e.raw(2), e.get(3, 1), e.get(4), e.get(8)] for e in errs],
    }
