"""One MLLP payload to contract items: PCD-01 (ORU^R01) observations and PCD-04 (ORU^R40) alerts; I/O-free.

PCD-01 rows: ``NM`` rows become ``Observation``s on the ``numerics`` stream, keyed by MDC reference id
(unknown codes pass through with their code and unit). Rows with a blank OBX-2 describe the
MDS/VMD/channel tree and are not readings, but their OBX-18 names the equipment of the rows under
them. ``ST``/``CWE``/``NA`` rows (enumerations, waveforms) and empty values are counted as skipped:
the contract has no item for them, and turning them into events would crowd the alarm lane. A row
that cannot be read is left out and named in the ACK (ERR severity W); the rest of the message is kept.

Times: ``device_ts`` is OBX-14, else OBR-7, else MSH-7 (a time without zone is UTC); ``ts`` is the
gateway's receive time.

Containment (OBX-4, ``<MDS>.<VMD>.<CHAN>.<METRIC>[.<FACET>]``) is numbered per message and not stable
across messages, so it is not made part of the metric name (that would split series and defeat alert
rules). It travels in the items' ``containment`` field and is also returned beside them (``Decoded.containment``).
"""

from __future__ import annotations

import logging
import math

from devices import mdc
from devices.contract import FLAG_IMPLAUSIBLE, Observation
from gateway.drivers.hl7_pcd import alarms
from gateway.drivers.hl7_pcd.ack import build_ack, read_header, salvage_header
from gateway.drivers.hl7_pcd.context import Decoded, MessageContext, Routing
from gateway.drivers.hl7_pcd.parser import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    Hl7Error,
    Segment,
    parse,
    parse_ts,
)
from gateway.drivers.hl7_pcd.rows import NUMBER, Equipment, equipment, reading

log = logging.getLogger(__name__)

__all__ = ["Decoded", "Routing", "answer", "decode"]


def decode(payload: bytes, routing: Routing, received: int, *, oversize: bool = False) -> Decoded:
    """Map one message; a message that cannot be used comes back with ``error`` set (never raises)."""
    if oversize:
        return Decoded(salvage_header(payload), error=Hl7Error(
            APPLICATION_INTERNAL_ERROR, f"message longer than the {len(payload)} bytes accepted", "MSH", 1, 0))
    try:
        message = parse(payload)
    except Hl7Error as exc:
        return Decoded(salvage_header(payload), error=exc)
    header = read_header(message)
    ctx = MessageContext(message, header, routing, received)
    try:
        if not header.control_id.strip():
            raise Hl7Error(REQUIRED_FIELD_MISSING, "MSH-10 message control id is empty", "MSH", 1, 10)
        if header.message_code != "ORU":
            raise Hl7Error(UNSUPPORTED_MESSAGE_TYPE, f"message type {header.message_code!r} is not ORU "
                           "(PCD-01 ORU^R01 or PCD-04 ORU^R40)", "MSH", 1, 9)
        if header.trigger == "R01":
            _observations(ctx)
        elif header.trigger == "R40":
            alarms.alert(ctx)
        else:
            raise Hl7Error(UNSUPPORTED_EVENT_CODE, f"trigger event {header.trigger!r} is not R01 or R40",
                           "MSH", 1, 9)
    except Hl7Error as exc:
        return Decoded(header, error=exc)
    return ctx.result


def _observations(ctx: MessageContext) -> None:
    """PCD-01: every OBR group's NM rows, each routed to its equipment's device."""
    result = ctx.result
    obr_time: int | None = None
    current: Equipment | None = None
    number = 0
    for segment in ctx.message.segments:
        if segment.id == "OBR":
            obr_time = parse_ts(segment.get(7))
            current = None
            continue
        if segment.id != "OBX":
            continue
        number += 1
        own = equipment(segment, 18)
        value_type = segment.get(2).strip().upper()
        if not value_type:
            current = own or current
            continue
        text = segment.get(5).strip()
        if value_type != "NM" or not text:
            result.skipped += 1
            continue
        device, bed = ctx.route(own or current)
        containment = segment.get(4)
        try:
            observation = _observation(ctx, segment, number, device, bed, obr_time, text, containment)
        except Hl7Error as exc:
            result.warnings.append(exc)
            continue
        result.items.append(observation)
        result.containment.append(containment)


def _observation(ctx: MessageContext, segment: Segment, number: int, device: str, bed: str | None,
                 obr_time: int | None, text: str, containment: str) -> Observation:
    """One NM row; ``text`` is its OBX-5 (stripped) and ``containment`` its OBX-4, already read by the caller."""
    value = float(text) if NUMBER.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise Hl7Error(DATA_TYPE_ERROR, f"OBX-5 {text[:30]!r} is not a number", "OBX", number, 5)
    row = reading(segment)
    ident = row.ident
    if not ident.metric:
        raise Hl7Error(REQUIRED_FIELD_MISSING, "OBX-3 names no observation", "OBX", number, 3)
    flags = ctx.skew | row.flags
    if not mdc.is_plausible(ident.metric, value):
        flags |= FLAG_IMPLAUSIBLE
    return Observation(
        device=device, stream="numerics", seq=0, ts=ctx.received, metric=ident.metric, value=value,
        unit=row.unit, code=ident.code, bed=bed,
        device_ts=ctx.time_of(segment, number, obr_time), flags=flags, containment=containment.strip() or None,
    )


def answer(decoded: Decoded, control_id: str, now: int, store_error: str | None = None) -> bytes:
    """The ACK for a decoded message: reject when unusable, error (retry) when storing failed, else accept."""
    if decoded.error is not None:
        return build_ack(decoded.header, "R", control_id, now, errors=[decoded.error])
    if store_error is not None:
        problem = Hl7Error(APPLICATION_INTERNAL_ERROR, f"not stored, send again: {store_error}"[:200])
        return build_ack(decoded.header, "E", control_id, now, errors=[problem])
    return build_ack(decoded.header, "A", control_id, now, warnings=decoded.warnings)
