"""One MLLP payload to contract items: PCD-01 (ORU^R01) observations and PCD-04 (ORU^R40) alerts; I/O-free.

PCD-01 rows: ``NM`` rows become ``Observation``s on the ``numerics`` stream, keyed by MDC reference id
(unknown codes pass through with their code and unit). Rows with a blank OBX-2 describe the
MDS/VMD/channel tree and are not readings, but their OBX-18 names the equipment of the rows under
them. ``ST``/``CWE``/``NA`` rows (enumerations, waveforms) and empty values are counted as skipped:
the contract has no item for them, and turning them into events would crowd the alarm lane. An MDS's
firmware revision row is skipped too, and announced with its device's identity (:mod:`.revision`). A row
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

import msgspec

from devices.contract import FLAG_IMPLAUSIBLE, Observation
from gateway.drivers.hl7_pcd import alarms, revision
from gateway.drivers.hl7_pcd.ack import build_ack, salvage_header
from gateway.drivers.hl7_pcd.context import Decoded, MessageContext, Routing, sender_of
from gateway.drivers.hl7_pcd.parser import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    Hl7Error,
    decode_text,
    first_leaf,
    parse_ts,
    split_message,
)
from gateway.drivers.hl7_pcd.rows import (
    _ROWS,
    DEVICE_ROW,
    NUMBER,
    NUMERIC_ROW,
    ROW_KEY,
    ROW_WIDTH,
    SHORT_ROW_KEY,
    STAMP_WIDTH,
    Equipment,
    row_of,
)

log = logging.getLogger(__name__)

__all__ = ["Decoded", "Routing", "answer", "decode"]

_PADDING = [""] * STAMP_WIDTH


def decode(payload: bytes, routing: Routing, received: int, *, oversize: bool = False) -> Decoded:
    """Map one message; a message that cannot be used comes back with ``error`` set (never raises)."""
    if oversize:
        return Decoded(salvage_header(payload), error=Hl7Error(
            APPLICATION_INTERNAL_ERROR, f"message longer than the {len(payload)} bytes accepted", "MSH", 1, 0))
    try:
        seps, segments = split_message(decode_text(payload))
    except Hl7Error as exc:
        return Decoded(salvage_header(payload), error=exc)
    sender = sender_of(seps, segments)
    msh = segments[0]
    header = msgspec.structs.replace(sender.header, control_id=msh[10] if len(msh) > 10 else "")
    ctx = MessageContext(seps, segments, sender, header, routing, received)
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
    """PCD-01: every OBR group's NM rows, each routed to its device.

    A row's meaning apart from its value and time comes from :func:`rows.row_of` (read once per row text);
    what is left per row is its value, its time and the routing of its equipment, each compared with the
    row before first, as the rows of a message mostly share one OBX-14 and one device.
    """
    result = ctx.result
    items, containments, warnings = result.items, result.containment, result.warnings
    seps = ctx.seps
    plain_numbers = seps.plain_numbers
    route, skew, received, message_time = ctx.route, ctx.skew, ctx.received, ctx.message_time
    number_match, isfinite, rows, row_key, short_key = NUMBER.fullmatch, math.isfinite, _ROWS, ROW_KEY, SHORT_ROW_KEY
    obr_time: int | None = None
    current: Equipment | None = None  # the equipment of the last device row of this OBR group
    number = 0
    last_target: Equipment | None = None
    device, bed = "", None
    last_stamp: str | None = None
    stamp_ts: int | None = None
    bad_stamp = ""
    for fields in ctx.segments:
        seg_id = fields[0]
        if seg_id != "OBX":
            if seg_id == "OBR":
                obr_time = parse_ts(first_leaf(fields[7], seps) if len(fields) > 7 else "")
                current = None
            continue
        number += 1
        width = len(fields)
        if width < STAMP_WIDTH:  # read as if padded to OBX-14 (rows.row_of keys it as it does here)
            fields = fields + _PADDING[width:]
            width = STAMP_WIDTH
        # rows.row_of(fields, seps), its cache consulted here first
        row = rows.get(row_key(fields) if width >= ROW_WIDTH else short_key(fields))
        if row is None or row.seps is not seps:
            row = row_of(fields, seps)
        if row.kind != NUMERIC_ROW:
            if row.kind == DEVICE_ROW:
                current = row.own or current
            else:
                result.skipped += 1
                revision.note(ctx, fields, row.containment, row.own or current)  # an MDS's firmware row
            continue
        # OBX-5 as Segment.get reads it: a number's text is its value when no delimiter can be in a number.
        # Digits with at most one dot are what NUMBER matches most often; the test is cheaper than the regex.
        text = fields[5].strip()
        numeric = plain_numbers and (text.replace(".", "", 1).isdecimal() or number_match(text) is not None)
        if not numeric:
            text = first_leaf(fields[5], seps).strip()
            if not text:
                result.skipped += 1
                continue
        target = row.own or current
        if target is not last_target or target is None:
            device, bed = route(target)
            last_target = target
        value = float(text) if numeric or number_match(text) else math.nan
        if not isfinite(value):
            warnings.append(Hl7Error(DATA_TYPE_ERROR, f"OBX-5 {text[:30]!r} is not a number", "OBX", number, 5))
            continue
        metric = row.metric
        if not metric:
            warnings.append(Hl7Error(REQUIRED_FIELD_MISSING, "OBX-3 names no observation", "OBX", number, 3))
            continue
        flags = skew | row.flags
        if not row.low <= value <= row.high:
            flags |= FLAG_IMPLAUSIBLE
        # Device time: OBX-14, else OBR-7, else MSH-7; a bad OBX-14 is warned about.
        stamp = fields[14]
        if stamp != last_stamp:
            last_stamp = stamp
            bad_stamp = first_leaf(stamp, seps).strip()
            stamp_ts = parse_ts(bad_stamp) if bad_stamp else None
            if stamp_ts is not None:
                bad_stamp = ""
        device_ts = stamp_ts
        if device_ts is None:
            if bad_stamp:
                warnings.append(Hl7Error(DATA_TYPE_ERROR, f"OBX-14 {bad_stamp[:30]!r} is not a valid time",
                                         "OBX", number, 14))
            device_ts = obr_time if obr_time is not None else message_time
        items.append(Observation(
            device=device, stream="numerics", seq=0, ts=received, metric=metric, value=value, unit=row.unit,
            code=row.code, bed=bed, device_ts=device_ts, flags=flags, containment=row.contained,
        ))
        containments.append(row.containment)


def answer(decoded: Decoded, control_id: str, now: int, store_error: str | None = None) -> bytes:
    """The ACK for a decoded message: reject when unusable, error (retry) when storing failed, else accept."""
    if decoded.error is not None:
        return build_ack(decoded.header, "R", control_id, now, errors=[decoded.error])
    if store_error is not None:
        problem = Hl7Error(APPLICATION_INTERNAL_ERROR, f"not stored, send again: {store_error}"[:200])
        return build_ack(decoded.header, "E", control_id, now, errors=[problem])
    return build_ack(decoded.header, "A", control_id, now, warnings=decoded.warnings)
