"""Location history in the time-series store: "where was asset X at time T" (DOMAIN.md section 6).

Every transition of the location engine becomes a :class:`~storage.base.Placement` written through the
store's ordinary ``write`` (an event of kind ``loc``: ``device`` the asset id, ``stream`` ``location``),
so the embedded DuckDB and SQLite stores, the VictoriaMetrics store (its events side file) and the
memory twin all keep it the same way, idempotently, under the events retention. Only transitions are
kept (entered, left, lost), not every read: the raw tag reads are ingest's ``tag`` events.
"""

from __future__ import annotations

from typing import Final

from facilities.location import LocationEvent
from storage.base import Placement, TimeSeriesStore

STREAM: Final = "location"
KIND: Final = "loc"
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
LOOKBACK_MS: Final = (HOUR_MS, DAY_MS, 7 * DAY_MS, 31 * DAY_MS, 400 * DAY_MS)
"""How far back :func:`placement_at` looks, in growing steps (past the default events retention, 365 d)."""
PAGE: Final = 1000
_ORDER: Final = {"left": 0, "entered": 1, "lost": 2}
PER_MS: Final = 8  # placements of one asset one millisecond can hold (a move is two: left, entered)


class Sequencer:
    """Gives each placement its ``seq``: ``ts * 8`` plus its place among the asset's placements at that ts.

    Derived from ``ts``, so the same placement retried after a failed write is a duplicate, and a restarted
    service (whose reads carry newer times) never reuses a stored key.
    """

    def __init__(self) -> None:
        """No placement seen yet."""
        self._last: dict[str, tuple[int, int]] = {}  # asset -> (ts, the next free slot at that ts)

    def placement(self, event: LocationEvent) -> Placement:
        """The stored form of one transition of the location engine."""
        ts, slot = self._last.get(event.asset, (-1, 0))
        slot = max(slot, _ORDER[event.kind]) if ts == event.ts else _ORDER[event.kind]
        self._last[event.asset] = (event.ts, min(slot + 1, PER_MS - 1))
        return Placement(device=event.asset, stream=STREAM, seq=event.ts * PER_MS + slot, ts=event.ts,
                         event=event.kind, room=event.room, zone=event.zone, floor=event.floor,
                         confidence=event.confidence, source=event.source)


def placements(store: TimeSeriesStore, asset: str, start_ms: int, end_ms: int, limit: int = 10_000) -> list[Placement]:
    """The asset's placements in ``[start_ms, end_ms)``, oldest first."""
    return [p for p in store.events(device=asset, kind=KIND, start_ms=start_ms, end_ms=end_ms, limit=limit)
            if isinstance(p, Placement)]


def placement_at(store: TimeSeriesStore, asset: str, ts: int) -> Placement | None:
    """The newest placement of ``asset`` at or before ``ts``: where it was then.

    None when it had not been placed by then (or its last placement is older than the store keeps
    events). Looks back in growing windows, so an asset that moves often costs one small query.
    """
    end = ts + 1
    for back in LOOKBACK_MS:
        start = max(0, ts + 1 - back)
        if start < end:
            newest = _newest(store, asset, start, end)
            if newest is not None:
                return newest
        end = start
    return None


def _newest(store: TimeSeriesStore, asset: str, start: int, end: int) -> Placement | None:
    """The newest placement in ``[start, end)``, paging forward through a busy window."""
    newest: Placement | None = None
    while True:
        page = placements(store, asset, start, end, PAGE)
        if page:
            newest = page[-1]
        if len(page) < PAGE or page[0].ts == page[-1].ts:
            return newest
        start = page[-1].ts  # the same ts again: rows cut off at the page's end are read on the next page
