"""A simulated Perfusa PV-300 infusion pump: infuses at its rate, counts volume, drains its battery.

Register layout as in the vendor manual (holding registers, 40001 = address 0, 32-bit values low word
first); tests inject occlusion, air in line, an open door or a low battery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final, Literal

from simulators.modbus.registers import Image, float32, put, text, uint16, uint32

State = Literal["stopped", "infusing", "paused"]

CODE_STOPPED: Final = 0x00
CODE_INFUSING: Final = 0x11
CODE_KVO: Final = 0x12
CODE_PAUSED: Final = 0x20
CODE_ALARM: Final = 0x40

BIT_OCCLUSION: Final = 1 << 0
BIT_AIR: Final = 1 << 1
BIT_NEAR_END: Final = 1 << 2
BIT_KVO: Final = 1 << 3
BIT_DOOR: Final = 1 << 4
BIT_BATTERY_LOW: Final = 1 << 5


@dataclass
class PumpModel:
    """One pump; ``time_scale`` simulated seconds pass per real second."""

    unit: int = 1
    model: str = "PV-300"
    serial_number: str = "PV3-000123"
    firmware: str = "2.4.1"
    rate_ml_h: float = 125.0
    vtbi_ml: float = 500.0
    infused_ml: float = 0.0
    battery_pct: float = 100.0
    drain_pct_per_h: float = 12.0
    battery_gauge_ok: bool = True
    on_mains: bool = False
    near_end_ml: float = 25.0
    kvo_rate_ml_h: float = 1.0
    low_battery_pct: float = 20.0
    time_scale: float = 1.0
    state: State = "infusing"
    occluded: bool = False
    air_in_line: bool = False
    door_open: bool = False
    _last: float = field(default_factory=time.monotonic, repr=False)

    @property
    def stopped_by_alarm(self) -> bool:
        """Occlusion, air and an open door stop the infusion until cleared."""
        return self.occluded or self.air_in_line or self.door_open

    @property
    def kvo(self) -> bool:
        """VTBI reached: the pump keeps the vein open at a trickle."""
        return self.infused_ml >= self.vtbi_ml

    def advance(self, now: float) -> None:
        """Move the pump on to monotonic time ``now``."""
        dt_h = max(0.0, now - self._last) * self.time_scale / 3600
        self._last = now
        if self.state == "infusing" and not self.stopped_by_alarm:
            self.infused_ml += (self.kvo_rate_ml_h if self.kvo else self.rate_ml_h) * dt_h
        if not self.on_mains:
            self.battery_pct = max(0.0, self.battery_pct - self.drain_pct_per_h * dt_h)

    def state_code(self) -> int:
        """The vendor state code of register 40007."""
        if self.stopped_by_alarm:
            return CODE_ALARM
        if self.state == "infusing":
            return CODE_KVO if self.kvo else CODE_INFUSING
        return CODE_PAUSED if self.state == "paused" else CODE_STOPPED

    def alarm_word(self) -> int:
        """The alarm bits of register 40008."""
        word = (BIT_OCCLUSION if self.occluded else 0) | (BIT_AIR if self.air_in_line else 0)
        word |= BIT_DOOR if self.door_open else 0
        if self.state == "infusing" and not self.kvo and self.vtbi_ml - self.infused_ml <= self.near_end_ml:
            word |= BIT_NEAR_END
        if self.state == "infusing" and self.kvo:
            word |= BIT_KVO
        if self.battery_pct < self.low_battery_pct:
            word |= BIT_BATTERY_LOW
        return word

    def registers(self, now: float) -> Image:
        """The register image at monotonic time ``now``."""
        self.advance(now)
        holding: dict[int, int] = {}
        put(holding, 0, uint32(round(self.rate_ml_h * 10), "little"))
        put(holding, 2, uint32(round(self.vtbi_ml * 10), "little"))
        put(holding, 4, float32(self.infused_ml, "little"))
        put(holding, 6, uint16(self.state_code()))
        put(holding, 7, uint16(self.alarm_word()))
        put(holding, 8, uint16(round(self.battery_pct)) if self.battery_gauge_ok else [0xFFFF])
        put(holding, 100, text(self.model, 8))
        put(holding, 108, text(self.serial_number, 8))
        put(holding, 116, text(self.firmware, 4))
        return {"holding": holding}

    def program(self, rate_ml_h: float, vtbi_ml: float) -> None:
        """Start a new program: rate and volume to be infused, volume infused back to 0."""
        self.rate_ml_h, self.vtbi_ml, self.infused_ml, self.state = rate_ml_h, vtbi_ml, 0.0, "infusing"

    def inject_occlusion(self) -> None:
        """Downstream occlusion: the pump stops and alarms."""
        self.occluded = True

    def clear_occlusion(self) -> None:
        """The nurse cleared the line."""
        self.occluded = False
