"""A deterministic patient for the simulated monitor: vitals as a pure function of profile, seed and time."""

from __future__ import annotations

import math
import random
from typing import Final

PROFILES: Final = ("stable", "desaturating", "artefact", "bradycardic")

DESAT_RAMP_S: Final = 20.0  # SpO2 falls from normal to the plateau over this many seconds
BRADY_RAMP_S: Final = 30.0
ARTEFACT_DIP_S: Final = 2.0
NIBP_INTERVAL_S: Final = 300.0  # automatic cuff cycle: a new NIBP reading every five minutes

# Channel: (seconds between random knots, amplitude). Knots are joined linearly, so values drift
# smoothly instead of jumping every sample, and any fractional time has a well-defined value.
_NOISE: Final[dict[str, tuple[float, float]]] = {
    "hr": (2.0, 2.0),
    "pr": (1.0, 1.0),
    "spo2": (3.0, 0.5),
    "rr": (4.0, 1.2),
    "temp": (60.0, 0.08),
    "etco2": (5.0, 1.2),
    "pi": (2.0, 0.25),
}


def _ramp(t_s: float, start_s: float, duration_s: float) -> float:
    """0 before start, 1 after start + duration, a smooth cosine step in between."""
    if t_s <= start_s:
        return 0.0
    if t_s >= start_s + duration_s:
        return 1.0
    return (1.0 - math.cos(math.pi * (t_s - start_s) / duration_s)) / 2.0


class PatientModel:
    """Vitals of one simulated patient; the same profile, seed and time always give the same values."""

    def __init__(self, profile: str, seed: int, onset_s: float = 30.0, period_s: float = 60.0) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown patient profile {profile!r}; choose one of {', '.join(PROFILES)}")
        if period_s <= ARTEFACT_DIP_S:
            raise ValueError(f"period_s must exceed the {ARTEFACT_DIP_S} s artefact dip")
        self.profile = profile
        self.seed = seed
        self.onset_s = onset_s
        self.period_s = period_s
        rng = random.Random(f"wlb-patient:{seed}")  # str seeds are hashed with SHA-512: stable across runs
        self._hr = rng.uniform(64.0, 82.0)
        self._spo2 = rng.uniform(95.8, 97.4)
        self._rr = rng.uniform(12.0, 17.0)
        self._temp = rng.uniform(36.5, 37.1)
        self._etco2 = rng.uniform(35.0, 41.0)
        self._pi = rng.uniform(1.8, 4.0)
        self._sys = rng.uniform(110.0, 132.0)
        self._dia = rng.uniform(65.0, 82.0)
        self._desat_spo2 = rng.uniform(84.6, 85.4)
        self._dip_spo2 = rng.uniform(77.5, 78.5)
        self._brady_hr = rng.uniform(38.0, 42.0)

    def _knot(self, channel: str, index: int) -> float:
        return random.Random(f"{self.seed}:{channel}:{index}").uniform(-1.0, 1.0)

    def _noise(self, channel: str, t_s: float) -> float:
        step_s, amplitude = _NOISE[channel]
        position = t_s / step_s
        index = math.floor(position)
        first, second = self._knot(channel, index), self._knot(channel, index + 1)
        return amplitude * (first + (second - first) * (position - index))

    def _in_dip(self, t_s: float) -> bool:
        return t_s >= self.onset_s and (t_s - self.onset_s) % self.period_s < ARTEFACT_DIP_S

    def _nibp(self, t_s: float) -> tuple[float, float, float]:
        # One cuff measurement per cycle: the value holds until the next cycle.
        cycle = math.floor(max(t_s, 0.0) / NIBP_INTERVAL_S)
        rng = random.Random(f"{self.seed}:nibp:{cycle}")
        sys = round(self._sys + rng.uniform(-6.0, 6.0))
        dia = round(self._dia + rng.uniform(-4.0, 4.0))
        return float(sys), float(dia), float(round(dia + (sys - dia) / 3.0))

    def vitals(self, t_s: float) -> dict[str, float]:
        """Vitals at ``t_s`` seconds since the monitor started, keyed by short names (hr, spo2, ...)."""
        hr = self._hr + self._noise("hr", t_s)
        spo2 = self._spo2 + self._noise("spo2", t_s)
        if self.profile == "desaturating":
            fall = _ramp(t_s, self.onset_s, DESAT_RAMP_S)
            spo2 = self._spo2 + (self._desat_spo2 - self._spo2) * fall + self._noise("spo2", t_s)
            hr += 12.0 * fall  # the heart compensates a little for the falling saturation
        elif self.profile == "artefact" and self._in_dip(t_s):
            # Looks real on the wire (no artefact bit): only a persistence delay can tell it apart.
            spo2 = self._dip_spo2 + self._noise("spo2", t_s) / 2.0
        elif self.profile == "bradycardic":
            slow = _ramp(t_s, self.onset_s, BRADY_RAMP_S)
            hr = hr + (self._brady_hr - self._hr) * slow
        sys, dia, mean = self._nibp(t_s)
        return {
            "hr": hr,
            "spo2": min(spo2, 100.0),
            "pr": hr + self._noise("pr", t_s),
            "rr": self._rr + self._noise("rr", t_s),
            "temp": self._temp + self._noise("temp", t_s),
            "nibp_sys": sys,
            "nibp_dia": dia,
            "nibp_mean": mean,
            "etco2": self._etco2 + self._noise("etco2", t_s),
            "pi": max(self._pi + self._noise("pi", t_s), 0.1),
        }
