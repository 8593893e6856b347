"""PCD-04 Report Alert (ORU^R40) to one ``DeviceEvent`` on the ``alarms`` stream.

One alert per message. OBR-3 is ``<update counter>^<alert uuid>^<reporter>``. The alert's facets are
OBX rows told apart by the reference id TEXT of OBX-3, because vendors disagree on the numbers
(68480-68485 from one, 68164-68168 from another, mixed in the wild); the numbers are only used
when a row has no reference id at all:

- identification: ``196616^MDC_EVT_ALARM^MDC`` with the event in OBX-5 (``<code>^<refid>^MDC`` and
  the text in component 9), or the event code itself in OBX-3 with the text in OBX-5; its OBX-8
  holds ``<abnormality>~<priority>~<kind>`` (``A~PM~SP``) as IHE places them;
- ``MDC_ATTR_ALERT_SOURCE`` (or a facet-2 row naming the metric itself), ``MDC_ATTR_EVENT_PHASE``,
  ``MDC_ATTR_ALARM_STATE``, ``MDC_ATTR_ALARM_INACTIVATION_STATE``, ``MDC_ATTR_ALARM_PRIORITY``,
  ``MDC_ATTR_ALERT_TYPE``, ``MDC_ATTR_ALERT_TEXT`` (``ALERT``/``ALARM`` spellings both accepted);
  a facet row overrides OBX-8.

Mapping decisions: an ``inactive`` alarm state ends the alert whatever phase is sent (the alert engine
closes alerts only on ``end``); state and inactivation state (``latched``, ``audio-paused`` ...) go
into the text in brackets; an unknown priority becomes ``medium`` and says so in the text; a missing
kind is physiological when the alert names a source metric, else technical.
"""

from __future__ import annotations

import logging
from typing import Final

from devices import mdc
from devices.contract import FLAG_DEMO, AlarmKind, DeviceEvent, Phase, Priority
from gateway.drivers.hl7_pcd.context import MessageContext
from gateway.drivers.hl7_pcd.parser import REQUIRED_FIELD_MISSING, SEGMENT_SEQUENCE_ERROR, Hl7Error, Segment, parse_ts
from gateway.drivers.hl7_pcd.rows import abnormal_flags, equipment, identity, status_flags

log = logging.getLogger(__name__)

_FACET_BY_REFID: Final = {
    "MDC_ATTR_ALERT_SOURCE": "source", "MDC_ATTR_ALARM_SOURCE": "source",
    "MDC_ATTR_EVENT_PHASE": "phase", "MDC_ATTR_ALERT_PHASE": "phase", "MDC_ATTR_ALARM_PHASE": "phase",
    "MDC_ATTR_ALARM_STATE": "state", "MDC_ATTR_ALERT_STATE": "state",
    "MDC_ATTR_ALARM_INACTIVATION_STATE": "inactivation", "MDC_ATTR_ALERT_INACTIVATION_STATE": "inactivation",
    "MDC_ATTR_ALARM_PRIORITY": "priority", "MDC_ATTR_ALERT_PRIORITY": "priority",
    "MDC_ATTR_ALERT_TYPE": "kind", "MDC_ATTR_ALARM_TYPE": "kind", "MDC_ATTR_ALERT_KIND": "kind",
    "MDC_ATTR_ALERT_TEXT": "text", "MDC_ATTR_ALARM_TEXT": "text", "MDC_ATTR_EVENT_TEXT": "text",
}
_FACET_BY_CODE: Final = {
    68480: "source", 68481: "phase", 68482: "state", 68483: "inactivation", 68484: "priority", 68485: "kind",
    68164: "source", 68165: "phase", 68166: "state", 68167: "inactivation", 68168: "priority",
}
_EVENT_ALARM: Final = "MDC_EVT_ALARM"
_PRIORITY: Final[dict[str, Priority]] = {"PH": "high", "PM": "medium", "PL": "low", "PN": "info"}
_KIND: Final[dict[str, AlarmKind]] = {"SP": "physiological", "ST": "technical", "SA": "advisory"}
_PHASE: Final[dict[str, Phase]] = {
    "start": "start", "start-only": "start", "tpoint": "start",
    "continue": "continue", "present": "continue",
    "update": "update", "inactivate": "update",
    "escalate": "escalate", "de-escalate": "de-escalate",
    "end": "end", "reset": "end",
}


def alert(ctx: MessageContext) -> None:
    """Map the message's single alert into ``ctx.result`` (raise :class:`Hl7Error` when it has none)."""
    message = ctx.message
    obr = message.first("OBR")
    if obr is None:
        raise Hl7Error(SEGMENT_SEQUENCE_ERROR, "ORU^R40 without an OBR segment", "OBR", 1, 0)
    facets: dict[str, str] = {}
    event_row: Segment | None = None
    event_number = 0
    fallback: tuple[Segment, int] | None = None
    source: str | None = None
    found = None
    number = 0
    for segment in message.segments:
        if segment.id != "OBX":
            continue
        number += 1
        found = found or equipment(segment, 18)
        refid = segment.get(3, 2).strip().upper()
        code = segment.get(3, 1).strip()
        facet = _FACET_BY_REFID.get(refid)
        if facet is None and not refid and code.isascii() and code.isdigit() and len(code) <= 9:
            facet = _FACET_BY_CODE.get(int(code))
        level = segment.get(4).strip().rsplit(".", 1)[-1]
        if facet == "source":
            source = _coded_name(segment) or source
        elif facet is not None:
            facets.setdefault(facet, segment.get(5).strip())
        elif refid.startswith("MDC_EVT_"):
            if event_row is None:
                event_row, event_number = segment, number
        elif not refid and level == "1" and segment.get(4).count(".") == 4:
            # Some senders put the bare event code in OBX-3 (``196650``): facet 1 of a 5-level OBX-4.
            if fallback is None:
                fallback = (segment, number)
        elif level == "2" and segment.get(2).strip():
            # IHE's physiological alert: facet 2 is the metric itself, with its value and limits.
            source = identity(segment).metric or source
    if event_row is None and fallback is not None:
        event_row, event_number = fallback
    if event_row is None:
        raise Hl7Error(REQUIRED_FIELD_MISSING, "no alert identification row (OBX-3 MDC_EVT_ALARM, facet 1)",
                       "OBX", 1, 3)
    device, bed = ctx.route(equipment(event_row, 18) or found)
    event, label = _event(event_row)
    marks = abnormal_flags(event_row)
    priority_raw = facets.get("priority", "").upper() or next((m for m in marks if m in _PRIORITY), "")
    kind_raw = facets.get("kind", "").upper() or next((m for m in marks if m in _KIND), "")
    phase_raw = facets.get("phase", "").lower()
    state = facets.get("state", "").lower()
    inactivation = facets.get("inactivation", "").lower()
    notes = [note for note in (state, inactivation) if note]
    priority = _PRIORITY.get(priority_raw)
    if priority is None:
        notes.append(f"priority {priority_raw!r} not understood" if priority_raw else "no priority sent")
        priority = "medium"
    phase = _PHASE.get(phase_raw, "update" if phase_raw else "start")
    if phase_raw and phase_raw not in _PHASE:
        notes.append(f"phase {phase_raw!r}")
    if state == "inactive":
        phase = "end"
    kind = _KIND.get(kind_raw) or ("physiological" if source else "technical")
    text = facets.get("text") or label or event
    flags = ctx.skew | status_flags(event_row.get(11)) | (FLAG_DEMO if "DEMO" in marks else 0)
    obr_time = parse_ts(obr.get(7))
    uuid = obr.get(3, 2).strip()
    ctx.result.items.append(DeviceEvent(
        device=device, stream="alarms", seq=0, ts=ctx.received, event=event, alarm_kind=kind, priority=priority,
        phase=phase, source=source, text=f"{text} [{', '.join(notes)}]" if notes else text,
        alert_uuid=_normal_uuid(uuid) or None, bed=bed, device_ts=ctx.time_of(event_row, event_number, obr_time),
        flags=flags, containment=event_row.get(4).strip() or None,
    ))
    ctx.result.containment.append(event_row.get(4))
    log.debug("alert %s update %s from %s: %s %s", uuid, obr.get(3, 1), device, event, phase)


def _event(row: Segment) -> tuple[str, str]:
    """Event name and its text: from OBX-5 when OBX-3 is the generic MDC_EVT_ALARM, else from OBX-3."""
    if row.get(3, 2).strip().upper() == _EVENT_ALARM and row.get(5).strip():
        parts = row.components(5)
        ident, name = [*parts, "", ""][:2]
        event = name.strip() or (f"MDC_{ident.strip()}" if ident.strip() else _EVENT_ALARM)
        label = parts[8].strip() if len(parts) > 8 else ""
        return event[:128], label or (name.strip() if not name.strip().startswith("MDC_") else "")
    named = identity(row)
    return named.metric or _EVENT_ALARM, row.get(5).strip() if row.get(2).strip().upper() in ("ST", "TX", "") else ""


def _coded_name(row: Segment) -> str | None:
    """The metric an ALERT_SOURCE row names in OBX-5 (``<code>^<refid>^MDC``, or plain text)."""
    parts = [p.strip() for p in row.components(5)]
    if not parts or not any(parts):
        return None
    code, name = [*parts, "", ""][:2]
    if name:
        return name[:128]
    if code.isascii() and code.isdigit() and len(code) <= 9:
        known = mdc.BY_CODE.get(int(code))
        return known.refid if known else f"MDC_{code}"
    return code[:128]


def _normal_uuid(text: str) -> str:
    """An alert uuid as correlatable text: ``urn:uuid:`` dropped, lower case."""
    if text.lower().startswith("urn:uuid:"):
        text = text[len("urn:uuid:"):]
    return text.lower()[:128]
