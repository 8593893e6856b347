"""A NEWS2-style early-warning score from a patient's latest vitals, and the rule that alarms on it.

Scoring table (Royal College of Physicians, National Early Warning Score 2, 2017; SpO2 scale 1):

=================  ========  =========  =========  ==========  =========  =========  ======
parameter          3         2          1          0           1          2          3
=================  ========  =========  =========  ==========  =========  =========  ======
respiration /min   <=8                  9-11       12-20                  21-24      >=25
SpO2 %             <=91      92-93      94-95      >=96
systolic mmHg      <=90      91-100     101-110    111-219                           >=220
pulse /min         <=40                 41-50      51-90       91-110     111-130    >=131
temperature C      <=35.0               35.1-36.0  36.1-38.0   38.1-39.0  >=39.1
=================  ========  =========  =========  ==========  =========  =========  ======

Two NEWS2 parameters are not measured by devices and are taken as normal: supplemental oxygen
(scored 2 when given) and consciousness (scored 3 for new confusion, V, P or U). The score is
therefore a lower bound, and the alert says so. Response thresholds: 5-6 medium, 7 or more high; a
single parameter scoring 3 raises a low-priority alert ("urgent ward-based review"). NEWS2 is for
adults (not under 16, not in pregnancy): the paediatric and neonatal rule sets leave it off.

The alert's priority has hysteresis: it rises as soon as the score calls for it, and falls below a
level (or clears) only when the score drops ``hysteresis`` points (default 1) under that level's
threshold, so a score sitting on a boundary (4-5-4-5) does not flip the alert every few seconds.
Scoring is cheap per reading: the five inputs are looked up and their tally is memoised by value.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

import msgspec

from alerts.vitals import Assessment, Vitals
from devices.contract import Priority

RR: Final = "MDC_RESP_RATE"
SPO2: Final = "MDC_PULS_OXIM_SAT_O2"
SYSTOLIC: Final = ("MDC_PRESS_BLD_NONINV_SYS", "MDC_PRESS_BLD_ART_SYS", "MDC_PRESS_CUFF_SYS")
PULSE: Final = ("MDC_ECG_HEART_RATE", "MDC_PULS_OXIM_PULS_RATE", "MDC_BLD_PULS_RATE_INV")
TEMP: Final = "MDC_TEMP"


def score_rr(v: float) -> int:
    """Respiration rate /min."""
    return 3 if v <= 8 else 1 if v <= 11 else 0 if v <= 20 else 2 if v <= 24 else 3


def score_spo2(v: float) -> int:
    """SpO2 % on scale 1."""
    return 3 if v <= 91 else 2 if v <= 93 else 1 if v <= 95 else 0


def score_systolic(v: float) -> int:
    """Systolic blood pressure mmHg."""
    return 3 if v <= 90 else 2 if v <= 100 else 1 if v <= 110 else 0 if v <= 219 else 3


def score_pulse(v: float) -> int:
    """Pulse /min."""
    return 3 if v <= 40 else 1 if v <= 50 else 0 if v <= 90 else 1 if v <= 110 else 2 if v <= 130 else 3


def score_temp(v: float) -> int:
    """Temperature in degrees Celsius (one decimal, as charted)."""
    v = round(v, 1)
    return 3 if v <= 35.0 else 1 if v <= 36.0 else 0 if v <= 38.0 else 1 if v <= 39.0 else 2


class Score(msgspec.Struct, frozen=True):
    """A score with its parts (parameter -> points) and the parameters that had no recent reading."""

    total: int
    parts: dict[str, int]
    missing: list[str]


PARAMETERS: Final = (("rr", (RR,), score_rr), ("spo2", (SPO2,), score_spo2),
                     ("systolic", SYSTOLIC, score_systolic), ("pulse", PULSE, score_pulse),
                     ("temp", (TEMP,), score_temp))
_INPUT_REFIDS: Final = tuple(refids for _, refids, _ in PARAMETERS)
_RANK: Final[dict[str | None, int]] = {None: 0, "low": 1, "medium": 2, "high": 3}
Inputs = tuple[float | None, float | None, float | None, float | None, float | None]


def inputs(vitals: Vitals, max_age_ms: int) -> Inputs:
    """The value scored for each parameter (the first of its metrics with a recent reading), None when missing."""
    return _inputs(vitals, max_age_ms)[0]


def _inputs(vitals: Vitals, max_age_ms: int) -> tuple[Inputs, int]:
    """The inputs, and until when they stay as they are without a new reading (the first recent one to age out)."""
    last, oldest = vitals.last, vitals.now - max_age_ms
    values: list[float | None] = []
    expires = 2**62
    for refids in _INPUT_REFIDS:
        chosen = None
        for refid in refids:
            latest = last.get(refid)
            if latest is not None and latest[0] >= oldest:
                if latest[0] + max_age_ms < expires:
                    expires = latest[0] + max_age_ms
                if chosen is None:
                    chosen = latest[1]
        values.append(chosen)
    return (values[0], values[1], values[2], values[3], values[4]), expires


def tally_of(vitals: Vitals, max_age_ms: int) -> tuple[int, int, bool]:
    """:func:`tally` of the vitals' inputs, recomputed only when an input may have changed.

    The vitals' ``version`` moves when a reading changes a value, brings a metric back after it aged
    out, or is the first of its metric; without that, the inputs hold until a recent reading ages out.
    """
    memo = vitals.memo.get(max_age_ms)
    if memo is not None and memo[0] == vitals.version and vitals.now <= memo[1]:
        return memo[2]
    values, expires = _inputs(vitals, max_age_ms)
    result = tally(values)
    vitals.memo[max_age_ms] = (vitals.version, expires, result)
    vitals.fresh_ms = min(vitals.fresh_ms, max_age_ms)
    return result


@lru_cache(maxsize=4096)
def tally(values: Inputs) -> tuple[int, int, bool]:
    """(total, parameters scored, a parameter scoring 3) of the inputs: memoised, vitals repeat."""
    points = [fn(v) for v, (_, _, fn) in zip(values, PARAMETERS, strict=True) if v is not None]
    return sum(points), len(points), 3 in points


def score(vitals: Vitals, max_age_ms: int) -> Score:
    """Score the latest readings no older than ``max_age_ms``."""
    parts: dict[str, int] = {}
    missing: list[str] = []
    for value, (name, _, fn) in zip(inputs(vitals, max_age_ms), PARAMETERS, strict=True):
        if value is None:
            missing.append(name)
        else:
            parts[name] = fn(value)
    return Score(sum(parts.values()), parts, missing)


class News2Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Alarm on the early-warning score: medium from ``medium_at``, high from ``high_at``, low on a single 3."""

    name: str = "news2"
    medium_at: int = 5
    high_at: int = 7
    single_three: bool = True  # one parameter scoring 3 raises a low-priority alert
    max_age_s: float = 3600.0  # readings older than this are not scored
    min_parameters: int = 4  # of the five measured ones, or no score
    delay_s: float = 60.0  # a score must persist this long (the score moves with every reading)
    hysteresis: float = 1.0  # score points under a level's threshold before the alert falls from it (or clears)
    enabled: bool = True
    priority: Priority = "high"  # the highest it can reach; the alert carries the current level

    @property
    def metrics(self) -> frozenset[str]:
        """Every scored metric re-evaluates the score."""
        return frozenset({RR, SPO2, TEMP, *SYSTOLIC, *PULSE})

    @property
    def windows(self) -> tuple[tuple[str, int], ...]:
        """No rate windows: the score reads the latest values."""
        return ()

    def level(self, result: Score, held: Priority | None = None) -> Priority | None:
        """The alert priority a score calls for, or None (``held``: the priority the alert has now)."""
        return self._level(result.total, any(p == 3 for p in result.parts.values()), held)

    def _level(self, total: int, any_three: bool, held: Priority | None) -> Priority | None:
        rank = _RANK[held]
        if total >= self.high_at - (self.hysteresis if rank >= 3 else 0):
            return "high"
        if total >= self.medium_at - (self.hysteresis if rank >= 2 else 0):
            return "medium"
        if self.single_three and any_three:
            return "low"
        return None

    def judge(self, vitals: Vitals, held: Priority | None) -> tuple[bool, bool, float | None, Priority] | None:
        """Violated, cleared, score and priority (None while too few parameters have a recent reading)."""
        total, scored, any_three = tally_of(vitals, int(self.max_age_s * 1000))
        if scored < self.min_parameters:
            return None
        level = self._level(total, any_three, held)
        return level is not None, level is None, float(total), level or "low"

    def describe(self, vitals: Vitals) -> str:
        """``NEWS2 5 (rr 2, spo2 2, ...; oxygen and consciousness assumed normal)``."""
        result = score(vitals, int(self.max_age_s * 1000))
        parts = ", ".join(f"{k} {v}" for k, v in result.parts.items())
        missing = f"; not measured: {', '.join(result.missing)}" if result.missing else ""
        return f"NEWS2 {result.total} ({parts}{missing}; oxygen and consciousness assumed normal)"

    def assess(self, vitals: Vitals) -> Assessment | None:
        """Score the vitals; None while too few parameters have a recent reading."""
        judged = self.judge(vitals, None)
        return None if judged is None else Assessment(*judged, self.describe(vitals))
