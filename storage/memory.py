"""An in-memory twin of the embedded store: same protocol, same orderings, nothing on disk (for tests)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence

from devices.contract import Observation

from .base import (
    MINUTE_MS,
    HistoryPoint,
    Key,
    Latest,
    MaintenanceResult,
    Quarantined,
    Record,
    Retention,
    StoreClosed,
    StoredEvent,
    StoreStats,
    WriteResult,
    bucket_start,
    check_range,
    check_record,
    check_target,
    decode_event,
    encode_event,
    event_kind,
    item_bed,
    key_of,
    merge_buckets,
    raw_cutoff,
)

log = logging.getLogger(__name__)


def _order(obs: Observation) -> tuple[int, str, str, int]:
    """The tie-breaking order of observations: ``(ts, device, stream, seq)``."""
    return (obs.ts, obs.device, obs.stream, obs.seq)


class MemoryStore:
    """A :class:`~storage.base.TimeSeriesStore` held in dicts behind one lock."""

    def __init__(self, retention: Retention | None = None) -> None:
        """Start empty."""
        self.retention = retention or Retention()
        # (device, metric, bed, minute) -> [sum, min, max, count] of rolled-up observations
        self._rollups: dict[tuple[str, str, str | None, int], list[float]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._observations: dict[Key, Observation] = {}
        # Events are kept encoded, exactly as the embedded store keeps them, so the twin exercises
        # the same encode/decode path and hands out fresh structs.
        self._events: dict[Key, tuple[int, str | None, bytes]] = {}
        self._quarantine: list[Quarantined] = []

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("store is closed")

    def write(self, items: Sequence[Record], *, checked: bool = False) -> WriteResult:
        """Store a batch atomically; keys already stored are counted as duplicates, not stored again."""
        if not checked:
            for item in items:
                check_record(item)
        stored = 0
        with self._lock:
            self._check_open()
            for item in items:
                key = key_of(item)
                if isinstance(item, Observation):
                    if key in self._observations:
                        continue
                    self._observations[key] = item
                else:
                    if key in self._events:
                        continue
                    self._events[key] = (item.ts, item_bed(item), encode_event(item))
                stored += 1
        return WriteResult(stored=stored, duplicates=len(items) - stored)

    def _select(self, bed: str | None, device: str | None) -> Iterator[Observation]:
        for obs in self._observations.values():
            if bed is not None and obs.bed != bed:
                continue
            if device is not None and obs.device != device:
                continue
            yield obs

    def latest(
        self, *, bed: str | None = None, device: str | None = None, since_ms: int | None = None
    ) -> list[Latest]:
        """The newest observation per metric for a bed or device (at or after ``since_ms``)."""
        check_target(bed, device)
        newest: dict[str, Observation] = {}
        with self._lock:
            self._check_open()
            for obs in self._select(bed, device):
                if since_ms is not None and obs.ts < since_ms:
                    continue
                best = newest.get(obs.metric)
                if best is None or _order(obs) > _order(best):
                    newest[obs.metric] = obs
        return [
            Latest(
                metric=o.metric,
                code=o.code,
                value=o.value,
                unit=o.unit,
                ts=o.ts,
                device=o.device,
                flags=o.flags,
                bed=o.bed,
            )
            for _, o in sorted(newest.items())
        ]

    def history(
        self,
        *,
        bed: str | None = None,
        device: str | None = None,
        metric: str,
        start_ms: int,
        end_ms: int,
        step_ms: int | None = None,
        limit: int = 100_000,
    ) -> list[HistoryPoint]:
        """Points of one metric in ``[start_ms, end_ms)``: raw, or one per ``step_ms`` bucket."""
        check_target(bed, device)
        check_range(start_ms, end_ms, step_ms, limit)
        with self._lock:
            self._check_open()
            rows = sorted(
                (o for o in self._select(bed, device) if o.metric == metric and start_ms <= o.ts < end_ms),
                key=_order,
            )
        if step_ms is None:
            return [HistoryPoint(o.ts, o.value, o.value, o.value, 1) for o in rows[:limit]]
        rolled: dict[int, list[float]] = {}
        if step_ms % MINUTE_MS == 0:
            with self._lock:
                for (r_device, r_metric, r_bed, minute), (total, low, high, count) in self._rollups.items():
                    if (r_metric != metric or not start_ms <= minute < end_ms or (bed is not None and r_bed != bed)
                            or (device is not None and r_device != device)):
                        continue
                    entry = rolled.setdefault(bucket_start(minute, step_ms), [0.0, low, high, 0])
                    entry[0] += total
                    entry[1], entry[2] = min(entry[1], low), max(entry[2], high)
                    entry[3] += count
        if rolled:
            raw: dict[int, list[float]] = {}
            for o in rows:
                entry = raw.setdefault(bucket_start(o.ts, step_ms), [0.0, o.value, o.value, 0])
                entry[0] += o.value
                entry[1], entry[2] = min(entry[1], o.value), max(entry[2], o.value)
                entry[3] += 1
            return merge_buckets([(b, t, lo, hi, int(n)) for b, (t, lo, hi, n) in raw.items()],
                                 [(b, t, lo, hi, int(n)) for b, (t, lo, hi, n) in rolled.items()], limit)
        buckets: dict[int, list[float]] = {}
        for o in rows:
            buckets.setdefault(bucket_start(o.ts, step_ms), []).append(o.value)
        points = [
            HistoryPoint(start, sum(values) / len(values), min(values), max(values), len(values))
            for start, values in sorted(buckets.items())
        ]
        return points[:limit]

    def maintain(self, now_ms: int) -> MaintenanceResult:
        """Roll up raw observations past raw retention into minutes, then delete everything past its retention."""
        cutoff = raw_cutoff(now_ms, self.retention)
        old_events = now_ms - self.retention.events_ms
        with self._lock:
            self._check_open()
            expired = [key for key, o in self._observations.items() if o.ts < cutoff]
            for key in expired:
                o = self._observations.pop(key)
                slot = (o.device, o.metric, o.bed, bucket_start(o.ts, MINUTE_MS))
                entry = self._rollups.setdefault(slot, [0.0, o.value, o.value, 0])
                entry[0] += o.value
                entry[1], entry[2] = min(entry[1], o.value), max(entry[2], o.value)
                entry[3] += 1
            old_rollups = [slot for slot in self._rollups if slot[3] < now_ms - self.retention.rollup_ms]
            for slot in old_rollups:
                del self._rollups[slot]
            old = [key for key, (ts, _, body) in self._events.items()
                   if ts < old_events and event_kind(decode_event(body)) != "dev"]
            for key in old:
                del self._events[key]
            kept = [q for q in self._quarantine if q.ts >= old_events]
            deleted = len(expired) + len(old_rollups) + len(old) + len(self._quarantine) - len(kept)
            self._quarantine = kept
        return MaintenanceResult(rolled_up=len(expired), deleted=deleted)

    def events(
        self,
        *,
        bed: str | None = None,
        device: str | None = None,
        start_ms: int,
        end_ms: int,
        limit: int = 1000,
        kind: str | None = None,
    ) -> list[StoredEvent]:
        """Stored non-observation items in ``[start_ms, end_ms)`` (of one ``kind`` tag: evt, tag, waste, dev, loc)."""
        check_range(start_ms, end_ms, None, limit)
        with self._lock:
            self._check_open()
            hits = sorted(
                (ts, key, body)
                for key, (ts, item_bed_, body) in self._events.items()
                if start_ms <= ts < end_ms
                and (bed is None or item_bed_ == bed)
                and (device is None or key[0] == device)
            )
        decoded = (decode_event(body) for _, _, body in hits)
        return [e for e in decoded if kind is None or e.__struct_config__.tag == kind][:limit]

    def quarantine(self, *, source: str, reason: str, raw: bytes, ts: int) -> None:
        """Keep refused input with its reason."""
        with self._lock:
            self._check_open()
            self._quarantine.append(Quarantined(ts=ts, source=source, reason=reason, raw=bytes(raw)))

    def quarantine_many(self, rows: Sequence[Quarantined]) -> None:
        """Keep many refused inputs (one by one through :meth:`quarantine`, which a test twin may override)."""
        for row in rows:
            self.quarantine(source=row.source, reason=row.reason, raw=row.raw, ts=row.ts)

    def quarantined(self, limit: int = 100) -> list[Quarantined]:
        """The most recently quarantined inputs, newest first."""
        with self._lock:
            self._check_open()
            return self._quarantine[::-1][:limit]

    def quarantine_count(self) -> int:
        """How many inputs are in quarantine."""
        with self._lock:
            self._check_open()
            return len(self._quarantine)

    def stats(self) -> StoreStats:
        """Row counts; the file size of an in-memory store is 0."""
        with self._lock:
            self._check_open()
            return StoreStats(
                observations=len(self._observations),
                events=len(self._events),
                quarantined=len(self._quarantine),
                file_bytes=0,
            )

    def close(self) -> None:
        """Drop the data; later calls raise :class:`~storage.base.StoreClosed`."""
        with self._lock:
            if not self._closed:
                log.debug("memory store closed with %d observations", len(self._observations))
            self._closed = True
            self._observations.clear()
            self._events.clear()
            self._quarantine.clear()
