"""IEEE 11073-10101 (MDC) nomenclature for the metrics Wardlink knows by name, with UCUM units.

Metrics are keyed by reference id (the text name), because real senders drift on numeric codes.
A code not listed here is never dropped: it travels with its raw code and unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Metric:
    """One MDC metric: reference id, context-free code, UCUM unit and a plausible range."""

    refid: str
    code: int
    unit: str
    label: str
    plausible: tuple[float, float]


_METRICS: Final = (
    Metric("MDC_ECG_HEART_RATE", 147842, "/min", "Heart rate", (0, 350)),
    Metric("MDC_PULS_OXIM_SAT_O2", 150456, "%", "SpO2", (0, 100)),
    Metric("MDC_PULS_OXIM_PULS_RATE", 149530, "/min", "Pulse rate", (0, 350)),
    Metric("MDC_BLD_PULS_RATE_INV", 149522, "/min", "Pulse rate (invasive)", (0, 350)),
    Metric("MDC_PRESS_BLD_NONINV_SYS", 150021, "mm[Hg]", "NIBP systolic", (0, 350)),
    Metric("MDC_PRESS_BLD_NONINV_DIA", 150022, "mm[Hg]", "NIBP diastolic", (0, 300)),
    Metric("MDC_PRESS_BLD_NONINV_MEAN", 150023, "mm[Hg]", "NIBP mean", (0, 300)),
    Metric("MDC_PRESS_CUFF_SYS", 150301, "mm[Hg]", "Cuff systolic", (0, 350)),
    Metric("MDC_PRESS_CUFF_DIA", 150302, "mm[Hg]", "Cuff diastolic", (0, 300)),
    Metric("MDC_PRESS_CUFF_MEAN", 150303, "mm[Hg]", "Cuff mean", (0, 300)),
    Metric("MDC_PRESS_BLD_ART_SYS", 150033, "mm[Hg]", "Arterial systolic", (0, 350)),
    Metric("MDC_PRESS_BLD_ART_DIA", 150034, "mm[Hg]", "Arterial diastolic", (0, 300)),
    Metric("MDC_PRESS_BLD_ART_MEAN", 150035, "mm[Hg]", "Arterial mean", (0, 300)),
    Metric("MDC_RESP_RATE", 151562, "/min", "Respiration rate", (0, 150)),
    Metric("MDC_TEMP", 150344, "Cel", "Temperature", (15, 45)),
    Metric("MDC_AWAY_CO2_ET", 151728, "mm[Hg]", "etCO2", (0, 150)),
    Metric("MDC_BLD_PERF_INDEX", 150488, "%", "Perfusion index", (0, 100)),
    Metric("MDC_FLOW_FLUID_PUMP", 157784, "mL/h", "Pump rate", (0, 2000)),
    Metric("MDC_VOL_FLUID_TBI", 157884, "mL", "Volume to be infused", (0, 10000)),
    Metric("MDC_VOL_INFUS_ACTUAL_TOTAL", 157948, "mL", "Volume infused", (0, 10000)),
)

BY_REFID: Final[dict[str, Metric]] = {m.refid: m for m in _METRICS}
BY_CODE: Final[dict[int, Metric]] = {m.code: m for m in _METRICS}

# Short names used in URLs and configuration (``/beds/ICU-01/vitals/spo2``).
ALIASES: Final[dict[str, str]] = {
    "hr": "MDC_ECG_HEART_RATE",
    "spo2": "MDC_PULS_OXIM_SAT_O2",
    "pr": "MDC_PULS_OXIM_PULS_RATE",
    "nibp_sys": "MDC_PRESS_BLD_NONINV_SYS",
    "nibp_dia": "MDC_PRESS_BLD_NONINV_DIA",
    "nibp_mean": "MDC_PRESS_BLD_NONINV_MEAN",
    "rr": "MDC_RESP_RATE",
    "temp": "MDC_TEMP",
    "etco2": "MDC_AWAY_CO2_ET",
    "pi": "MDC_BLD_PERF_INDEX",
}


def resolve(name: str) -> str:
    """Turn an alias (``spo2``), a reference id or a numeric code into the reference id used in storage."""
    if name in ALIASES:
        return ALIASES[name]
    if name.isdigit() and int(name) in BY_CODE:
        return BY_CODE[int(name)].refid
    return name


def is_plausible(refid: str, value: float) -> bool:
    """False when a known metric's value lies outside what a human body can produce."""
    metric = BY_REFID.get(refid)
    if metric is None:
        return True
    low, high = metric.plausible
    return low <= value <= high
