"""The newest observation per (device, metric, bed), kept in memory by the embedded store.

The store updates it from each committed batch and writes it to its ``latest`` table now and then
(with a watermark), so ``latest()`` costs no SQL and a write costs no upsert; after a restart the table
plus the observations written after its watermark rebuild it exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from devices.contract import Observation

from .base import Latest

SeriesKey = tuple[str, str | None]
"""``(metric, bed)`` within one device."""


class LatestCache:
    """The newest observation per series, by device, with a bed -> devices index; thread-safe."""

    def __init__(self) -> None:
        """An empty cache."""
        self._lock = threading.Lock()
        self._by_device: dict[str, dict[SeriesKey, Observation]] = {}
        self._devices_of_bed: dict[str | None, set[str]] = {}

    def __len__(self) -> int:
        """The number of series held."""
        with self._lock:
            return sum(len(per) for per in self._by_device.values())

    def update(self, items: Iterable[Observation]) -> None:
        """Keep each item that is newer than what its series holds (items already committed)."""
        by_device = self._by_device
        with self._lock:
            device: str | None = None
            per: dict[SeriesKey, Observation] = {}
            for item in items:
                if item.device != device:
                    device = item.device
                    found = by_device.get(device)
                    if found is None:
                        found = by_device[device] = {}
                    per = found
                key = (item.metric, item.bed)
                current = per.get(key)
                if current is None:
                    per[key] = item
                    self._devices_of_bed.setdefault(item.bed, set()).add(item.device)
                elif item.ts > current.ts or (item.ts == current.ts and (item.stream, item.seq) > (
                        current.stream, current.seq)):
                    per[key] = item

    def clear(self) -> None:
        """Forget everything (before a reload)."""
        with self._lock:
            self._by_device.clear()
            self._devices_of_bed.clear()

    def latest(self, *, bed: str | None, device: str | None, since_ms: int | None) -> list[Latest]:
        """The newest per metric of a bed and/or device, by ``(ts, device, stream, seq)``, sorted by metric."""
        with self._lock:
            if device is not None:
                per = self._by_device.get(device, {})
                found = [o for (_, b), o in per.items() if bed is None or b == bed]
            else:
                found = [o for d in self._devices_of_bed.get(bed, ())
                         for (_, b), o in self._by_device[d].items() if b == bed]
        best: dict[str, Observation] = {}
        for o in found:
            if since_ms is not None and o.ts < since_ms:
                continue
            current = best.get(o.metric)
            if current is None or (o.ts, o.device, o.stream, o.seq) > (current.ts, current.device, current.stream,
                                                                       current.seq):
                best[o.metric] = o
        return [Latest(metric=o.metric, code=o.code, value=o.value, unit=o.unit, ts=o.ts, device=o.device,
                       flags=o.flags, bed=o.bed) for _, o in sorted(best.items())]

    def snapshot(self) -> list[Observation]:
        """Every series' newest observation (a consistent copy, for writing the table)."""
        with self._lock:
            return [o for per in self._by_device.values() for o in per.values()]
