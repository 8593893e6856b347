"""PCD-01 and PCD-04 messages as two vendors write them, and reading an ACK: the simulator's own HL7 code.

Written apart from the gateway's parser on purpose, so the driver is tested against an independent
reading of IHE PCD. Vendor ``A``: CR segment terminators, ``^~\\&``, enhanced acknowledgement (MSH-15
``AL``, MSH-16 ``NE``), PCD-04 facet codes 68480-68485. Vendor ``B``: LF terminators, ``^~\\&#``,
original acknowledgement mode, facet codes 68164-68168.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from simulators.bedside.patient import PatientModel

logger = logging.getLogger(__name__)

# short name, MDC code, reference id, unit code, unit reference id, containment VMD.CHAN
VITALS: Final = (
    ("hr", 147842, "MDC_ECG_HEART_RATE", 264864, "MDC_DIM_BEAT_PER_MIN", "1.1"),
    ("spo2", 150456, "MDC_PULS_OXIM_SAT_O2", 262688, "MDC_DIM_PERCENT", "2.1"),
    ("pr", 149530, "MDC_PULS_OXIM_PULS_RATE", 264864, "MDC_DIM_BEAT_PER_MIN", "2.1"),
    ("pi", 150488, "MDC_BLD_PERF_INDEX", 262688, "MDC_DIM_PERCENT", "2.1"),
    ("nibp_sys", 150021, "MDC_PRESS_BLD_NONINV_SYS", 266016, "MDC_DIM_MMHG", "3.1"),
    ("nibp_dia", 150022, "MDC_PRESS_BLD_NONINV_DIA", 266016, "MDC_DIM_MMHG", "3.1"),
    ("nibp_mean", 150023, "MDC_PRESS_BLD_NONINV_MEAN", 266016, "MDC_DIM_MMHG", "3.1"),
    ("rr", 151562, "MDC_RESP_RATE", 264928, "MDC_DIM_RESP_PER_MIN", "4.1"),
    ("temp", 150344, "MDC_TEMP", 268192, "MDC_DIM_DEGC", "5.1"),
    ("etco2", 151728, "MDC_AWAY_CO2_ET", 266016, "MDC_DIM_MMHG", "6.1"),
)
UNKNOWN_PARAM: Final = (131841, "MDC_ECG_AMPL_ST_I", "0.08", "266418^MDC_DIM_MILLI_VOLT^MDC", "1.1")


@dataclass(frozen=True, slots=True)
class Style:
    """How one vendor writes its messages."""

    name: str
    encoding: str
    terminator: str
    enhanced: bool
    facets: tuple[int, int, int, int, int, int]  # source, phase, state, inactivation, priority, kind


STYLES: Final = {
    "A": Style("A", "^~\\&", "\r", True, (68480, 68481, 68482, 68483, 68484, 68485)),
    "B": Style("B", "^~\\&#", "\n", False, (68164, 68165, 68166, 68167, 68168, 68485)),
}


@dataclass(frozen=True, slots=True)
class Monitor:
    """One monitor at one bed: where it is (PV1-3), its EUI-64 (OBX-18), its patient and its firmware revision."""

    bed: str
    eui64: str
    patient: PatientModel
    unit: str = "ICU"
    room: str = ""
    firmware: str = ""  # sent as the MDS's MDC_ID_PROD_SPEC_FW row when set


@dataclass(frozen=True, slots=True)
class Alarm:
    """One PCD-04 alert update."""

    event_code: int
    event: str
    text: str
    source_code: int = 0
    source: str = ""
    priority: str = "PM"  # PH PM PL PN
    kind: str = "SP"  # SP ST SA
    phase: str = "start"
    state: str = "active"
    inactivation: str = "enabled"
    alert_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    counter: int = 0


def escape(text: str, encoding: str) -> str:
    """Escape delimiters in a text value (HL7 v2 section 2.7)."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace(encoding[0], "\\S\\")
    out = out.replace(encoding[1], "\\R\\").replace(encoding[3], "\\T\\")
    return out.replace("#", "\\P\\") if len(encoding) == 5 else out


def hl7_time(ms: int) -> str:
    """An HL7 DTM with zone offset."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%d%H%M%S") + f".{ms % 1000:03d}+0000"


class MessageBuilder:
    """Builds PCD-01 and PCD-04 messages in one vendor's style."""

    def __init__(self, style: Style, application: str = "WLSIM") -> None:
        """``application`` goes into MSH-3 with each monitor's EUI-64."""
        self.style = style
        self.application = application

    def _msh(self, control_id: str, ms: int, trigger: str, monitor: Monitor) -> str:
        acks = "AL|NE" if self.style.enhanced else "|"
        return (f"MSH|{self.style.encoding}|{self.application}^{monitor.eui64}^EUI-64|SIMHOSP|||{hl7_time(ms)}||"
                f"ORU^{trigger}^ORU_{trigger}|{control_id}|P|2.6|||{acks}||UNICODE UTF-8")

    def _head(self, control_id: str, ms: int, trigger: str, monitor: Monitor) -> list[str]:
        enc = self.style.encoding
        return [
            self._msh(control_id, ms, trigger, monitor),
            f"PID|||{escape(monitor.bed, enc)}-MRN^^^SIMHOSP^PI||Test^Patient",
            f"PV1||I|{escape(monitor.unit, enc)}^{escape(monitor.room, enc)}^{escape(monitor.bed, enc)}^SIMHOSP",
        ]

    def _join(self, segments: list[str]) -> bytes:
        term = self.style.terminator
        return (term.join(segments) + term).encode("utf-8")

    def vitals(self, control_id: str, monitor: Monitor, t_s: float, ms: int, *, demo: bool = False,
               unknown_param: bool = False) -> bytes:
        """ORU^R01 with the monitor's device row (and firmware row) and one NM row per vital (and one Wardlink does
        not know)."""
        values = monitor.patient.vitals(t_s)
        enc = self.style.encoding
        flag = "DEMO" if demo else ""
        segments = [*self._head(control_id, ms, "R01", monitor),
                    f"OBR|1|{control_id}^{self.application}|{control_id}^{self.application}|"
                    f"182777000^monitoring of patient^SCT|||{hl7_time(ms)}",
                    f"OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||"
                    f"{monitor.eui64}^EUI-64"]
        if monitor.firmware:  # the MDS's production specification: its firmware revision (IEEE 11073 PROD_SPECN)
            segments.append(f"OBX|2|ST|531976^MDC_ID_PROD_SPEC_FW^MDC|1.0.0.0.1|{escape(monitor.firmware, enc)}"
                            "||||||R")
        for name, code, refid, unit_code, unit_refid, where in VITALS:
            segments.append(f"OBX|{len(segments) - 3}|NM|{code}^{refid}^MDC|1.{where}.{code}|{values[name]:.1f}|"
                            f"{unit_code}^{unit_refid}^MDC||{flag}|||R|||{hl7_time(ms)}")
        if unknown_param:
            code, refid, value, unit, where = UNKNOWN_PARAM
            segments.append(f"OBX|{len(segments) - 3}|NM|{code}^{refid}^MDC|1.{where}.{code}|{value}|{unit}||{flag}"
                            f"|||R|||{hl7_time(ms)}")
        return self._join(segments)

    def alarm(self, control_id: str, monitor: Monitor, alarm: Alarm, ms: int) -> bytes:
        """ORU^R40 for one alert, with this vendor's facet codes."""
        enc = self.style.encoding
        source, phase, state, inactivation, priority, kind = self.style.facets
        eui = f"{monitor.eui64}^EUI-64"
        base = "1.1.1.0"
        source_value = f"{alarm.source_code}^{alarm.source}^MDC" if alarm.source else ""
        segments = [*self._head(control_id, ms, "R40", monitor),
                    f"OBR|1||{alarm.counter}^{alarm.alert_id}^{monitor.eui64}^EUI-64|196616^MDC_EVT_ALARM^MDC|||"
                    f"{hl7_time(ms)}",
                    f"OBX|1|CWE|196616^MDC_EVT_ALARM^MDC|{base}.1|{alarm.event_code}^{alarm.event}^MDC^^^^^^"
                    f"{escape(alarm.text, enc)}||||||R|||{hl7_time(ms)}||||{eui}",
                    f"OBX|2|ST|{source}^MDC_ATTR_ALERT_SOURCE^MDC|{base}.2|{source_value}||||||R",
                    f"OBX|3|ST|{phase}^MDC_ATTR_EVENT_PHASE^MDC|{base}.3|{alarm.phase}||||||R",
                    f"OBX|4|ST|{state}^MDC_ATTR_ALARM_STATE^MDC|{base}.4|{alarm.state}||||||R",
                    f"OBX|5|ST|{inactivation}^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|{base}.5|{alarm.inactivation}"
                    "||||||R",
                    f"OBX|6|ST|{priority}^MDC_ATTR_ALARM_PRIORITY^MDC|{base}.6|{alarm.priority}||||||R",
                    f"OBX|7|ST|{kind}^MDC_ATTR_ALERT_TYPE^MDC|{base}.7|{alarm.kind}||||||R"]
        return self._join(segments)


def read_ack(payload: bytes) -> tuple[str, str, tuple[str, ...]]:
    """MSA-1, MSA-2 and the ERR segments' user messages of an ACK."""
    text = payload.decode("utf-8", "replace").replace("\r\n", "\r").replace("\n", "\r")
    segments = [s for s in text.split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        return "", "", ()
    sep = segments[0][3]
    code, control, errors = "", "", []
    for segment in segments[1:]:
        fields = segment.split(sep)
        if fields[0] == "MSA":
            code, control = [*fields, "", ""][1:3]
        elif fields[0] == "ERR":
            errors.append(fields[8] if len(fields) > 8 else segment)
    return code, control, tuple(errors)
