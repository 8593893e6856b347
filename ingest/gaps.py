"""Sequence-gap detection from the commits every ingest worker publishes.

With an MQTT 5 shared subscription each worker receives only part of a stream, so no worker can
find gaps in what it receives itself. Every worker therefore follows *all* commits (a plain, not
shared, subscription to ``gw/+/commit``): the union of the commits is exactly what the backend holds
(stored, spooled, de-duplicated or quarantined) whichever worker handled it. Every worker keeps the
same :class:`GapTracker` state; only the elected reporter (the smallest live ingest instance, see
:class:`Members`) publishes the "data gap" events. A gap event's key is deterministic
(``device``, ``ingest.gap.<stream>``, first missing seq), so a gap reported twice while two workers
disagree about the reporter is stored once.

Per stream the tracker keeps the highest contiguous seq committed and the committed ranges above it.
A hole below a committed range opens when that range is first seen; once open longer than the grace
period it is reported and tracking moves past it. A stream is first seen at its first commit (the
gateway resends from its oldest uncommitted row, so what lies below was committed before).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from devices.contract import DeviceEvent, SeqRange

log = logging.getLogger(__name__)

GAP_EVENT = "ingest.data_gap"
GAP_STREAM_PREFIX = "ingest.gap."


@dataclass(frozen=True, slots=True)
class Gap:
    """A missing inclusive seq range of one stream, open past the grace period."""

    gateway: str
    device: str
    stream: str
    first: int
    last: int
    opened_ms: int


@dataclass(slots=True)
class _Stream:
    gateway: str
    contiguous: int
    # committed ranges above contiguous + 1: [first, last, first_seen_ms], sorted and disjoint
    above: list[list[int]] = field(default_factory=list)


class GapTracker:
    """Highest contiguous seq per (device, stream) from commits; holes older than ``grace_ms`` are gaps."""

    def __init__(self, grace_ms: int, *, max_streams: int = 100_000, max_ranges: int = 256) -> None:
        """Bounded: ``max_streams`` streams (least recently committed evicted), ``max_ranges`` per stream."""
        self.grace_ms = grace_ms
        self.max_streams = max_streams
        self.max_ranges = max_ranges
        self._streams: OrderedDict[tuple[str, str], _Stream] = OrderedDict()
        self._reported: deque[Gap] = deque(maxlen=1000)
        self.evicted = 0
        self.forced = 0
        self.filled_late = 0

    def observe(self, gateway: str, ranges: list[SeqRange], now: int) -> list[Gap]:
        """Take in one commit's ranges; return gaps forced out by the per-stream range bound."""
        forced: list[Gap] = []
        for r in ranges:
            if r.stream.startswith(GAP_STREAM_PREFIX) or r.last < r.first:
                continue  # our own gap events, or nonsense
            key = (r.device, r.stream)
            state = self._streams.get(key)
            if state is not None and not state.above and r.first <= state.contiguous + 1 <= r.last:
                self._streams.move_to_end(key)  # the usual commit: it continues its stream, no hole open
                state.gateway = gateway
                state.contiguous = r.last
                continue
            if state is None:
                state = self._streams[key] = _Stream(gateway, r.first - 1)
                while len(self._streams) > self.max_streams:
                    self._streams.popitem(last=False)
                    self.evicted += 1
            else:
                self._streams.move_to_end(key)
            state.gateway = gateway
            first = max(r.first, state.contiguous + 1)
            if r.last < first:
                self._late(r)
                continue
            if first == state.contiguous + 1:
                state.contiguous = r.last
            else:
                _insert(state.above, first, r.last, now)
            _absorb(state)
            while len(state.above) > self.max_ranges:
                self.forced += 1
                forced.append(self._close_lowest(key, state, now))
        return forced

    def due(self, now: int) -> list[Gap]:
        """Holes open for at least the grace period, lowest first; tracking moves past them."""
        gaps: list[Gap] = []
        for key, state in self._streams.items():
            while state.above and now - min(r[2] for r in state.above) >= self.grace_ms:
                gaps.append(self._close_lowest(key, state, now))
        return gaps

    def open_holes(self) -> int:
        """Holes currently waiting out their grace period."""
        return sum(len(s.above) for s in self._streams.values())

    def streams(self) -> int:
        """Streams tracked."""
        return len(self._streams)

    def _close_lowest(self, key: tuple[str, str], state: _Stream, now: int) -> Gap:
        first_seen = min(r[2] for r in state.above)
        low = state.above.pop(0)
        gap = Gap(state.gateway, key[0], key[1], state.contiguous + 1, low[0] - 1, first_seen)
        state.contiguous = low[1]
        _absorb(state)
        self._reported.append(gap)
        return gap

    def _late(self, r: SeqRange) -> None:
        """A commit below the contiguous mark: a replay (usual) or a reported gap filled late."""
        for gap in self._reported:
            if gap.device == r.device and gap.stream == r.stream and r.first <= gap.last and r.last >= gap.first:
                self.filled_late += 1
                log.info("ingest: gap %d-%d of %s/%s was filled late (%d-%d)", gap.first, gap.last, gap.device,
                         gap.stream, r.first, r.last)
                return


def _insert(above: list[list[int]], first: int, last: int, now: int) -> None:
    """Insert [first, last] into sorted disjoint ranges, merging overlapping or adjacent ones."""
    merged = [first, last, now]
    out: list[list[int]] = []
    placed = False
    for r in above:
        if r[1] + 1 < merged[0]:
            out.append(r)
        elif merged[1] + 1 < r[0]:
            if not placed:
                out.append(merged)
                placed = True
            out.append(r)
        else:
            merged = [min(r[0], merged[0]), max(r[1], merged[1]), min(r[2], merged[2])]
    if not placed:
        out.append(merged)
    above[:] = out


def _absorb(state: _Stream) -> None:
    """Move ranges that now touch the contiguous mark into it."""
    while state.above and state.above[0][0] <= state.contiguous + 1:
        state.contiguous = max(state.contiguous, state.above.pop(0)[1])


def gap_event(gap: Gap, bed: str | None, grace_ms: int, now: int) -> DeviceEvent:
    """The technical "data gap" event of a gap, keyed so every worker builds the same one."""
    count = gap.last - gap.first + 1
    return DeviceEvent(device=gap.device, stream=GAP_STREAM_PREFIX + gap.stream, seq=gap.first, ts=now,
                       event=GAP_EVENT, alarm_kind="technical", priority="medium", source=gap.stream, bed=bed,
                       text=f"data gap: seq {gap.first}-{gap.last} of stream {gap.stream} ({count} readings) "
                            f"not received within {grace_ms // 1000} s")


class Members:
    """Live ingest instances as heard on their status topics; the smallest live one reports gaps."""

    def __init__(self, me: str, stale_ms: int, max_members: int = 1000) -> None:
        """Know only ourselves until statuses arrive."""
        self.me = me
        self.stale_ms = stale_ms
        self.max_members = max_members
        self._seen: dict[str, tuple[bool, int]] = {}
        self.dropped = 0

    def heard(self, instance: str, online: bool, ts: int) -> None:
        """Record one ingest status (bounded: statuses of unknown instances past the bound are dropped)."""
        if instance not in self._seen and len(self._seen) >= self.max_members:
            self.dropped += 1
            return
        self._seen[instance] = (online, ts)

    def reporter(self, now: int) -> str:
        """The elected reporter: the smallest instance that is online and fresh (always including us)."""
        live = {i for i, (online, ts) in self._seen.items() if online and now - ts <= self.stale_ms}
        return min(live | {self.me})

    def is_reporter(self, now: int) -> bool:
        """Whether this worker reports gaps now."""
        return self.reporter(now) == self.me
