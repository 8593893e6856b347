"""A steady producer of readings fed straight into a gateway's sink, as drivers do (tests and benchmarks)."""

from __future__ import annotations

import asyncio

from devices.clock import now_ms
from devices.contract import Observation
from gateway.service import Gateway


async def produce(gateway: Gateway, devices: list[str], per_tick: int, tick_s: float,
                  stop: asyncio.Event | None = None) -> int:
    """Accept ``per_tick`` observations per device every ``tick_s`` until cancelled or ``stop``; return the count."""
    count = 0
    value = 0
    while stop is None or not stop.is_set():
        ts = now_ms()
        items = []
        for device in devices:
            for _ in range(per_tick):
                value = (value + 1) % 40
                items.append(Observation(device=device, stream="numerics", seq=0, ts=ts,
                                         metric="MDC_PULS_OXIM_SAT_O2", value=60.0 + value, unit="%", code=150456))
        gateway.accept(items)
        count += len(items)
        await asyncio.sleep(tick_s)
    return count
