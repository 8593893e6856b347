"""The garbage collector, measured in every service and kept out of a live service's way.

CPython's cyclic collector stops the event loop while it runs. A young collection costs well under a
millisecond, but a full one walks every tracked object: an alert engine holding 10,000 beds' rules and
windows tracks about 900,000 objects, and each full collection took 250-600 ms here, long enough to turn
a nurse's alarm that arrives during it into a late one. Two habits keep that away:

- build what lives for the life of the service (rule indexes, caches) at start-up, then :func:`settle`:
  one collection, then ``gc.freeze()`` moves every object alive into the permanent generation, which later
  collections do not walk (objects freed by reference counting are still freed);
- measure: :class:`GcWatch` counts full collections and the longest pause, reported in each service's
  status counters and so on ``/metrics`` (``wardlink_<service>_gc_*``).
"""

from __future__ import annotations

import gc
import time
from typing import Any


def settle() -> int:
    """Collect once and freeze what is alive now out of later collections; return how many objects are frozen.

    The count is kept for the status counters: ``gc.get_freeze_count()`` walks the whole permanent
    generation (a linked list of every frozen object), and a heartbeat that called it stalled the alert
    service's event loop by 30-50 ms every 5 s with a 10,000-bed rule index frozen (``wardlink bench alerts``).
    """
    gc.collect()
    gc.freeze()
    WATCH.frozen = gc.get_freeze_count()
    return WATCH.frozen


class GcWatch:
    """Counts collections per generation and measures their pauses (``install`` hooks it into the collector)."""

    def __init__(self) -> None:
        """Nothing counted yet."""
        self.collections = [0, 0, 0]
        self.pause_max_ms = [0.0, 0.0, 0.0]
        self.pause_total_ms = 0.0
        self.frozen = 0  # objects moved out of the collector's way by the last settle()
        self._started = 0.0

    def install(self) -> GcWatch:
        """Start measuring (once per process: a second install of the same watch is ignored)."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def remove(self) -> None:
        """Stop measuring."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = int(info.get("generation", 2))
        pause = (time.perf_counter() - self._started) * 1000
        self.collections[generation] += 1
        self.pause_total_ms += pause
        if pause > self.pause_max_ms[generation]:
            self.pause_max_ms[generation] = pause

    def counters(self) -> dict[str, int]:
        """Status counters: collections per generation, pause time in all, the longest pauses (gauges, ms)."""
        return {
            "gc_collections_gen0": self.collections[0], "gc_collections_gen1": self.collections[1],
            "gc_collections_gen2": self.collections[2], "gc_pause_ms_total": round(self.pause_total_ms),
            "g_gc_pause_max_ms": round(max(self.pause_max_ms)),
            "g_gc_full_pause_max_ms": round(self.pause_max_ms[2]),
            "g_gc_frozen_objects": self.frozen,
        }


WATCH = GcWatch()
"""The process's watch: services put its counters in their status; entry points ``install`` it."""
