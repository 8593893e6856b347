"""Counters, gauges and histograms of a worker, flattened into ServiceStatus.counters (ints only).

Key convention (read by :mod:`api.metrics`): a plain ``name`` is a cumulative counter; ``g_name`` is a
gauge; ``h_name_le_<bound>`` (``inf`` for +Inf), ``h_name_sum`` and ``h_name_count`` are a cumulative
histogram. Units go in the name (``_ms``, ``_items``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

STORE_MS_BUCKETS: tuple[int, ...] = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10_000)
BATCH_ITEMS_BUCKETS: tuple[int, ...] = (1, 10, 50, 100, 500, 1000, 5000, 20_000)


class Histogram:
    """A cumulative histogram of integer observations with fixed upper bounds."""

    def __init__(self, name: str, bounds: Sequence[int]) -> None:
        """Empty histogram."""
        self.name = name
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0
        self.count = 0

    def observe(self, value: int) -> None:
        """Count one observation."""
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += value
        self.count += 1

    def flat(self) -> dict[str, int]:
        """The histogram as counter keys (cumulative buckets)."""
        out: dict[str, int] = {}
        running = 0
        for bound, n in zip((*map(str, self.bounds), "inf"), self.counts, strict=True):
            running += n
            out[f"h_{self.name}_le_{bound}"] = running
        out[f"h_{self.name}_sum"] = self.sum
        out[f"h_{self.name}_count"] = self.count
        return out


class Metrics:
    """A worker's counters, gauges and histograms."""

    def __init__(self) -> None:
        """Everything at zero."""
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.gauges: dict[str, int] = {}
        self.store_ms = Histogram("store_ms", STORE_MS_BUCKETS)
        self.batch_items = Histogram("batch_items", BATCH_ITEMS_BUCKETS)

    def flat(self) -> dict[str, int]:
        """Everything as ServiceStatus counters."""
        out = dict(self.counters)
        out.update({f"g_{k}": v for k, v in self.gauges.items()})
        out.update(self.store_ms.flat())
        out.update(self.batch_items.flat())
        return out
