"""WLB/1 vendor numbers to the contract: parameter ids to MDC metrics, status bits to flags, alarm enums."""

from __future__ import annotations

from typing import Final

from devices.contract import FLAG_DEMO, FLAG_INVALID, AlarmKind, Phase, Priority
from devices.mdc import BY_REFID

# Vendor parameter id -> MDC reference id (docs/serial-protocol.md, section 4). Ids missing here are
# passed through under their number, never dropped.
PARAM_REFIDS: Final[dict[int, str]] = {
    0x0001: "MDC_ECG_HEART_RATE",
    0x0002: "MDC_PULS_OXIM_SAT_O2",
    0x0003: "MDC_PULS_OXIM_PULS_RATE",
    0x0004: "MDC_BLD_PERF_INDEX",
    0x0010: "MDC_PRESS_BLD_NONINV_SYS",
    0x0011: "MDC_PRESS_BLD_NONINV_DIA",
    0x0012: "MDC_PRESS_BLD_NONINV_MEAN",
    0x0020: "MDC_RESP_RATE",
    0x0030: "MDC_TEMP",
    0x0040: "MDC_AWAY_CO2_ET",
}

STATUS_INVALID: Final = 0x01
STATUS_ARTEFACT: Final = 0x02
STATUS_SENSOR_OFF: Final = 0x04
STATUS_DEMO: Final = 0x08

_PRIORITIES: Final[tuple[Priority, ...]] = ("info", "low", "medium", "high")
_KINDS: Final[tuple[AlarmKind, ...]] = ("physiological", "technical")
_PHASES: Final[tuple[Phase, ...]] = ("start", "continue", "end")

# Vendor alarm code -> event name; the alarm's PARAM says which metric it is about.
ALARM_EVENTS: Final[dict[int, str]] = {
    0x0001: "MDC_EVT_HI",
    0x0002: "MDC_EVT_LO",
    0x0201: "MDC_EVT_LEAD_OFF",
    0x0202: "MDC_EVT_SENSOR_DISCONN",
}


def to_mdc(param_id: int) -> tuple[str, int, str]:
    """(MDC reference id, context-free code, UCUM unit) for a vendor parameter; unknown ids pass through."""
    refid = PARAM_REFIDS.get(param_id)
    metric = BY_REFID.get(refid) if refid is not None else None
    if metric is None:
        return f"WLB_PARAM_{param_id}", 0, ""
    return metric.refid, metric.code, metric.unit


def status_flags(status: int) -> int:
    """Contract flags for a NUMERICS status byte; reserved bits are ignored as the spec says."""
    flags = 0
    if status & (STATUS_INVALID | STATUS_ARTEFACT | STATUS_SENSOR_OFF):
        flags |= FLAG_INVALID
    if status & STATUS_DEMO:
        flags |= FLAG_DEMO
    return flags


def alarm_priority(priority: int) -> Priority:
    """Contract priority for a WLB/1 priority 0..3 (none, low, medium, high); ValueError otherwise."""
    if not 0 <= priority < len(_PRIORITIES):
        raise ValueError(f"alarm priority {priority} is not 0..3")
    return _PRIORITIES[priority]


def alarm_kind(kind: int) -> AlarmKind:
    """Contract alarm kind for a WLB/1 kind 0 (physiological) or 1 (technical); ValueError otherwise."""
    if not 0 <= kind < len(_KINDS):
        raise ValueError(f"alarm kind {kind} is not 0 or 1")
    return _KINDS[kind]


def alarm_phase(phase: int) -> Phase:
    """Contract phase for a WLB/1 phase 0..2 (start, continue, end); ValueError otherwise."""
    if not 0 <= phase < len(_PHASES):
        raise ValueError(f"alarm phase {phase} is not 0..2")
    return _PHASES[phase]


def alarm_event(code: int) -> str:
    """Event name for a WLB/1 alarm code; unknown codes pass through as WLB_ALARM_<code>."""
    return ALARM_EVENTS.get(code, f"WLB_ALARM_{code}")
