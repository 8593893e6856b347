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
from gateway.drivers.hl7_pcd.rows import _READINGS, NUMBER, Equipment, equipment, reading

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
    """PCD-01: every OBR group's NM rows, each routed to its device (as :func:`_observations_slow` maps them)."""
    result = ctx.result
    items, containments, warnings = result.items, result.containment, result.warnings
    seps = ctx.message.seps
    component, repetition, subcomponent, escape = seps.component, seps.repetition, seps.subcomponent, seps.escape
    route, skew, received, message_time = ctx.route, ctx.skew, ctx.received, ctx.message_time
    number_match = NUMBER.fullmatch
    readings, seps_key, by_refid = _READINGS, seps.key, mdc.BY_REFID.get
    obr_time: int | None = None
    current: Equipment | None = None
    number = 0
    # The rows of a message mostly repeat one OBX-18 and one OBX-14 text: the last one's result is kept, so
    # a row like the one before needs a string comparison instead of a cache look-up (all per message).
    last_equipment_text: str | None = None
    last_own: Equipment | None = None
    last_target: Equipment | None = None
    last_route: tuple[str, str | None] = ("", None)
    last_stamp = ""
    last_stamp_ts: int | None = None
    for segment in ctx.message.segments:
        seg_id = segment.id
        if seg_id == "OBR":
            obr_time = parse_ts(segment.get(7))
            current = None
            continue
        if seg_id != "OBX":
            continue
        number += 1
        fields = segment.fields
        if len(fields) < 15:
            current = _row(ctx, segment, number, obr_time, current)
            continue
        # OBX-2, -4, -5 and -14 as segment.get() reads them: with no delimiter or escape in them (as PCD
        # senders write them), a field's raw text is its value, and the row needs no Segment.get() call.
        probe = fields[2] + fields[4] + fields[5] + fields[14]
        if component in probe or repetition in probe or subcomponent in probe or escape in probe:
            current = _row(ctx, segment, number, obr_time, current)
            continue
        equipment_text = fields[18] if len(fields) > 18 else ""
        if equipment_text != last_equipment_text:
            last_own = equipment(segment, 18)
            last_equipment_text = equipment_text
        own = last_own
        value_type = fields[2].strip().upper()
        if not value_type:
            current = own or current
            continue
        text = fields[5].strip()
        if value_type != "NM" or not text:
            result.skipped += 1
            continue
        target = own or current
        if target is not last_target or last_target is None:
            last_route = route(target)
            last_target = target
        device, bed = last_route
        containment = fields[4]
        value = float(text) if number_match(text) else math.nan
        if not math.isfinite(value):
            warnings.append(Hl7Error(DATA_TYPE_ERROR, f"OBX-5 {text[:30]!r} is not a number", "OBX", number, 5))
            continue
        # rows.reading(segment), with its cache consulted here first (one call fewer per row).
        row = readings.get((fields[3], fields[6], fields[8], fields[11], seps_key)) if len(fields) > 11 else None
        if row is None:
            row = reading(segment)
        ident = row.ident
        metric = ident.metric
        if not metric:
            warnings.append(Hl7Error(REQUIRED_FIELD_MISSING, "OBX-3 names no observation", "OBX", number, 3))
            continue
        flags = skew | row.flags
        # mdc.is_plausible, inline: look up the metric's bounds and compare.
        known = by_refid(metric)
        if known is not None and not known.plausible[0] <= value <= known.plausible[1]:
            flags |= FLAG_IMPLAUSIBLE
        # ctx.time_of, inline.
        stamp = fields[14].strip()
        if stamp != last_stamp or not stamp:
            last_stamp_ts = parse_ts(stamp) if stamp else None
            last_stamp = stamp
        device_ts = last_stamp_ts
        if device_ts is None:
            if stamp:
                warnings.append(Hl7Error(DATA_TYPE_ERROR, f"OBX-14 {stamp[:30]!r} is not a valid time",
                                         "OBX", number, 14))
            device_ts = obr_time if obr_time is not None else message_time
        items.append(Observation(
            device=device, stream="numerics", seq=0, ts=received, metric=metric, value=value, unit=row.unit,
            code=ident.code, bed=bed, device_ts=device_ts, flags=flags, containment=containment.strip() or None,
        ))
        containments.append(containment)


def _row(ctx: MessageContext, segment: Segment, number: int, obr_time: int | None,
         current: Equipment | None) -> Equipment | None:
    """One OBX row the general way (as :func:`_observations_slow` reads it); returns the new current equipment."""
    result = ctx.result
    own = equipment(segment, 18)
    value_type = segment.get(2).strip().upper()
    if not value_type:
        return own or current
    text = segment.get(5).strip()
    if value_type != "NM" or not text:
        result.skipped += 1
        return current
    device, bed = ctx.route(own or current)
    containment = segment.get(4)
    try:
        observation = _observation(ctx, segment, number, device, bed, obr_time, text, containment)
    except Hl7Error as exc:
        result.warnings.append(exc)
        return current
    result.items.append(observation)
    result.containment.append(containment)
    return current


def _observations_slow(ctx: MessageContext) -> None:
    """The reference mapping of PCD-01 rows, kept for the equivalence tests of :func:`_observations`."""
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
