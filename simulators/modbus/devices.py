"""Simulated field devices on Modbus: a waste weighing indicator, a medicine-fridge logger, the waste store's
temperature logger, an O2 detector.

Each model keeps its physics in plain attributes and renders its register image on demand at a monotonic
time, the way the real device's manual lays it out (see gateway/drivers/modbus_map/maps for the maps).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Final, Literal

from simulators.modbus.registers import Image, int16, int32, put, uint16

PROBE_MISSING: Final = -32768
Probe = Literal["air", "product"]


@dataclass
class WasteScale:
    """A weighing indicator: bags placed and removed, a settle time, capacity and tare (counts in kg, 3 decimals)."""

    unit: int = 1
    capacity_g: int = 60_000
    decimals: int = 3
    settle_s: float = 0.5
    load_g: int = 0
    tare_g: int = 0
    _changed: float = field(default_factory=time.monotonic, repr=False)

    def place(self, grams: int) -> None:
        """Put a bag on the platform (adds to the load)."""
        self.load_g += grams
        self._changed = time.monotonic()

    def remove(self) -> None:
        """Take everything off."""
        self.load_g = 0
        self._changed = time.monotonic()

    def tare(self) -> None:
        """Tare the current load (the empty container)."""
        self.tare_g = self.load_g

    def registers(self, now: float) -> Image:
        """Registers 40001.. (address 0..): gross, net (int32 high word first), decimals, status."""
        per_count = 10 ** (3 - self.decimals)  # grams per count of the displayed kg value
        stable = now - self._changed >= self.settle_s
        status = (1 if stable else 0) | (2 if self.load_g > self.capacity_g else 0)
        status |= (4 if self.load_g == 0 else 0) | (8 if self.tare_g else 0)
        holding: dict[int, int] = {}
        put(holding, 0, int32(self.load_g // per_count, "big"))
        put(holding, 2, int32((self.load_g - self.tare_g) // per_count, "big"))
        put(holding, 4, uint16(self.decimals))
        put(holding, 5, uint16(status))
        return {"holding": holding}


@dataclass
class FridgeLogger:
    """A medicine fridge: holds its setpoint until cooling fails, then drifts; probes can fail."""

    unit: int = 1
    setpoint_c: float = 5.0
    low_c: float = 2.0
    high_c: float = 8.0
    air_c: float = 5.0
    product_c: float = 5.0
    drift_c_per_min: float = 0.0  # > 0 while cooling has failed
    product_lag_s: float = 120.0  # the glycol bottle follows the air slowly
    time_scale: float = 1.0
    door_open: bool = False
    mains_ok: bool = True
    probe_error: dict[str, int] = field(default_factory=dict)
    _last: float = field(default_factory=time.monotonic, repr=False)

    def fail_cooling(self, c_per_min: float = 1.0) -> None:
        """The compressor stops: the air warms by ``c_per_min``."""
        self.drift_c_per_min = c_per_min

    def restore_cooling(self) -> None:
        """The compressor runs again: back towards the setpoint."""
        self.drift_c_per_min = 0.0

    def disconnect_probe(self, probe: Probe, code: int = PROBE_MISSING) -> None:
        """A probe reads an error code (below -32000) until reconnected."""
        self.probe_error[probe] = code

    def reconnect_probe(self, probe: Probe) -> None:
        """The probe reads temperatures again."""
        self.probe_error.pop(probe, None)

    def advance(self, now: float) -> None:
        """Move the temperatures on to monotonic time ``now``."""
        dt = max(0.0, now - self._last) * self.time_scale
        self._last = now
        if self.drift_c_per_min:
            self.air_c += self.drift_c_per_min * dt / 60
        else:
            self.air_c += (self.setpoint_c - self.air_c) * (1 - math.exp(-dt / 60))
        self.product_c += (self.air_c - self.product_c) * (1 - math.exp(-dt / self.product_lag_s))

    def registers(self, now: float) -> Image:
        """Input registers 0..2: air and product (int16, 0.1 degC) and the alarm bits."""
        self.advance(now)
        alarms = (1 if self.air_c > self.high_c else 0) | (2 if self.air_c < self.low_c else 0)
        alarms |= (4 if self.product_c > self.high_c else 0) | (8 if self.product_c < self.low_c else 0)
        alarms |= (16 if self.door_open else 0) | (0 if self.mains_ok else 32)
        inputs: dict[int, int] = {}
        put(inputs, 0, int16(self.probe_error.get("air", round(self.air_c * 10))))
        put(inputs, 1, int16(self.probe_error.get("product", round(self.product_c * 10))))
        put(inputs, 2, uint16(alarms))
        return {"input": inputs}


@dataclass
class WasteStoreLogger(FridgeLogger):
    """The medical-waste store's temperature logger (a cold-room logger laid out like the fridge logger).

    The store is kept at 15 C; the logger's own high limit is the waste rule's 20 C (DOMAIN.md section 7).
    For the demo its cooling fails on a cycle: for ``fail_for_s`` at the end of every ``cycle_s`` (from
    5 to 8 minutes of every 10) the air warms by ``fail_c_per_min`` (to about 24 C), then recovers.
    ``cycle_s = 0`` leaves the cooling to :meth:`fail_cooling` and :meth:`restore_cooling`.
    """

    setpoint_c: float = 15.0
    high_c: float = 20.0
    air_c: float = 15.0
    product_c: float = 15.0
    cycle_s: float = 600.0
    fail_for_s: float = 180.0
    fail_c_per_min: float = 3.0
    _start: float = field(default_factory=time.monotonic, repr=False)

    def advance(self, now: float) -> None:
        """Fail or restore the cooling by the cycle, then move the temperatures on."""
        if self.cycle_s > 0:
            into = ((now - self._start) * self.time_scale) % self.cycle_s
            failing = into >= self.cycle_s - self.fail_for_s
            self.drift_c_per_min = self.fail_c_per_min if failing else 0.0
        super().advance(now)


@dataclass
class O2Detector:
    """An O2-deficiency detector: ambient O2 moves towards a target; the alarm latches until reset."""

    unit: int = 1
    o2_pct: float = 20.9
    target_pct: float = 20.9
    rate_pct_per_s: float = 0.5
    threshold_pct: float = 19.5
    time_scale: float = 1.0
    latched: bool = False
    fault: bool = False
    _last: float = field(default_factory=time.monotonic, repr=False)

    def leak(self, target_pct: float) -> None:
        """Inert gas escapes: O2 falls towards ``target_pct``."""
        self.target_pct = target_pct

    def ventilate(self) -> None:
        """Fresh air: O2 recovers towards 20.9 %."""
        self.target_pct = 20.9

    def reset(self) -> None:
        """Reset the latch at the detector (only once O2 is back above the threshold)."""
        if self.o2_pct >= self.threshold_pct:
            self.latched = False

    def registers(self, now: float) -> Image:
        """Input register 30001 (O2, 0.1 %, 0xFFFF on fault) and discrete inputs 10001..10003."""
        dt = max(0.0, now - self._last) * self.time_scale
        self._last = now
        step = self.rate_pct_per_s * dt
        self.o2_pct += max(-step, min(step, self.target_pct - self.o2_pct))
        alarm = self.o2_pct < self.threshold_pct
        self.latched = self.latched or alarm
        return {"input": {0: 0xFFFF if self.fault else round(self.o2_pct * 10)},
                "discrete": {0: int(alarm), 1: int(self.latched), 2: int(self.fault)}}
