"""The time-series store contract: the protocol ingest writes through and the API reads from.

Every store keeps three kinds of rows:

* observations, one per :class:`~devices.contract.Observation`, keyed by ``(device, stream, seq)``;
* events, one per other item kind (device events, tag reads, waste scans, device identities), keyed
  the same way and kept as the item's msgspec JSON so they decode back into the same contract struct;
* quarantine, bad input kept verbatim with the reason it was refused.

Writes are idempotent: replaying an item whose key is already stored counts as a duplicate and
changes nothing (the first write wins). Methods are synchronous; async callers use
``asyncio.to_thread``. Times are integer milliseconds since the Unix epoch, ranges are half-open
``[start, end)`` and downsampling buckets are aligned to the epoch (``ts - ts % step``), so a
1-minute bucket is a wall-clock minute whatever range is asked for.

Orderings every implementation keeps, so the twins return identical lists:

* ``latest``: one row per metric, the newest by ``(ts, device, stream, seq)``; sorted by metric.
* ``history``: raw points by ``(ts, device, stream, seq)``; buckets by bucket start.
* ``events``: by ``(ts, device, stream, seq)``.
* ``quarantined``: newest first.

Exception tree::

    Exception
    └── StoreError            any failure of the store; ``retryable`` says whether to try again
        ├── StoreUnavailable  retryable=True: busy/locked (or the file held by another process),
        │                     write conflict, disk full, I/O error
        ├── StoreCorrupt      retryable=False: not a database, damaged file, unknown schema version
        └── StoreClosed       retryable=False: the store was used after ``close()``

Library errors (``sqlite3.Error``, ``duckdb.Error``) never leave a store: they are caught where
called and re-raised as one of the above ``from`` the original. Caller mistakes (no bed and no
device given, an empty range) raise ``ValueError``; ``write`` checks every item with
:func:`devices.contract.check_item` first and stores nothing if one fails (``ContractError``, a
``ValueError``), unless the caller passes ``checked=True`` to say it has run that check itself.

Retention and rollups (:class:`Maintainable`, implemented by the embedded store and its twin):
``maintain(now_ms)`` moves raw observations older than the raw retention (whole minutes) into
1-minute rollups (sum, min, max, count per device, metric and bed, bucketed by :func:`bucket_start`),
adding them to what the rollup holds, then deletes them; so every reading is counted either raw or
in a rollup, never both. Rollups, events (except device identities, ``dev``) and quarantine older
than the longer retention are deleted. ``history`` with a step that is a whole number of minutes
merges rollup minutes (those starting in the range) with raw buckets; raw history without a step
returns only what raw retention still holds. A replay of a reading whose raw row has already been
rolled up is stored again (the key is gone) and would be counted twice in its minute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import msgspec

from devices.contract import (
    UNDECODABLE,
    ContractError,
    DeviceEvent,
    DeviceInfo,
    Item,
    Observation,
    TagRead,
    WasteEvent,
    check_item,
)


class Placement(msgspec.Struct, tag_field="kind", tag="loc", omit_defaults=True):
    """One line of an asset's location history: it entered or left a room, or was lost there.

    Written by the facilities service (never by a gateway: not a contract :data:`~devices.contract.Item`),
    keyed like every event: ``device`` is the asset id, ``stream`` is ``location``, ``seq`` is derived
    from ``ts`` so a retried write is a duplicate. ``source`` is the reader that placed it.
    """

    device: str
    stream: str
    seq: int
    ts: int
    event: Literal["entered", "left", "lost"]
    room: str
    zone: str | None = None
    floor: str | None = None
    confidence: float = 0.0
    source: str = ""


StoredEvent = DeviceEvent | TagRead | WasteEvent | DeviceInfo | Placement
"""The item kinds kept in the events table (everything that is not an observation)."""

Record = Item | Placement
"""What ``write`` takes: the contract's items, and the facilities service's placements."""

Key = tuple[str, str, int]
"""The identity of an item: ``(device, stream, seq)``."""


class StoreError(Exception):
    """A store operation failed; ``retryable`` tells the caller whether trying again may succeed."""

    default_retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.retryable: bool = self.default_retryable if retryable is None else retryable


class StoreUnavailable(StoreError):
    """A transient failure (database busy or locked, disk full, I/O error): retry later."""

    default_retryable = True


class StoreCorrupt(StoreError):
    """The file is not a usable store (not a database, damaged, unknown schema): do not retry."""


class StoreClosed(StoreError):
    """The store was used after ``close()``."""


class WriteResult(msgspec.Struct, frozen=True):
    """Outcome of one ``write``: items newly stored and items whose key was already stored."""

    stored: int
    duplicates: int


class Latest(msgspec.Struct, frozen=True):
    """The newest observation of one metric for a bed or device."""

    metric: str
    code: int
    value: float
    unit: str
    ts: int
    device: str
    flags: int
    bed: str | None = None


class HistoryPoint(msgspec.Struct, frozen=True):
    """One point of a series: a raw reading (count 1) or a bucket (start ts, mean, min, max, count)."""

    ts: int
    value: float
    min: float
    max: float
    count: int


class Quarantined(msgspec.Struct, frozen=True):
    """Input refused by ingest, kept with the reason and the raw bytes."""

    ts: int
    source: str
    reason: str
    raw: bytes


class StoreStats(msgspec.Struct, frozen=True):
    """Row counts and the on-disk size (bytes, including WAL files) of a store."""

    observations: int
    events: int
    quarantined: int
    file_bytes: int


@runtime_checkable
class TimeSeriesStore(Protocol):
    """What ingest writes through and the API reads from; every method is synchronous."""

    def write(self, items: Sequence[Record], *, checked: bool = False) -> WriteResult:
        """Store a batch atomically; keys already stored are counted as duplicates, not stored again.

        ``checked=True`` says the caller has already run :func:`check_record` on every item (ingest
        does), so the store skips that second pass; the default checks.
        """
        ...

    def latest(
        self, *, bed: str | None = None, device: str | None = None, since_ms: int | None = None
    ) -> list[Latest]:
        """The newest observation per metric for a bed or device (at or after ``since_ms``)."""
        ...

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
        ...

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
        ...

    def quarantine(self, *, source: str, reason: str, raw: bytes, ts: int) -> None:
        """Keep refused input with its reason."""
        ...

    def quarantine_many(self, rows: Sequence[Quarantined]) -> None:
        """Keep many refused inputs in one transaction: all of them or, on an error, none."""
        ...

    def quarantined(self, limit: int = 100) -> list[Quarantined]:
        """The most recently quarantined inputs, newest first."""
        ...

    def quarantine_count(self) -> int:
        """How many inputs are in quarantine."""
        ...

    def stats(self) -> StoreStats:
        """Row counts and file size."""
        ...

    def close(self) -> None:
        """Release connections and files; later calls raise :class:`StoreClosed`."""
        ...


DAY_MS = 86_400_000
MINUTE_MS = 60_000


class Retention(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How long raw observations, 1-minute rollups and events/quarantine are kept."""

    raw_days: float = 14.0
    rollup_days: float = 365.0
    events_days: float = 365.0

    @property
    def raw_ms(self) -> int:
        """Raw retention in milliseconds."""
        return int(self.raw_days * DAY_MS)

    @property
    def rollup_ms(self) -> int:
        """Rollup retention in milliseconds."""
        return int(self.rollup_days * DAY_MS)

    @property
    def events_ms(self) -> int:
        """Event and quarantine retention in milliseconds."""
        return int(self.events_days * DAY_MS)


class MaintenanceResult(msgspec.Struct, frozen=True):
    """What one ``maintain`` did: raw rows rolled up, and rows deleted in all (raw, rollups, events, quarantine)."""

    rolled_up: int
    deleted: int


@runtime_checkable
class Maintainable(Protocol):
    """A store with retention and rollups."""

    def maintain(self, now_ms: int) -> MaintenanceResult:
        """Roll up raw observations past raw retention, then delete everything past its retention."""
        ...


def raw_cutoff(now_ms: int, retention: Retention) -> int:
    """Raw observations before this (a minute boundary) are rolled up and deleted."""
    return bucket_start(now_ms - retention.raw_ms, MINUTE_MS)


def merge_buckets(raw: list[tuple[int, float, float, float, int]],
                  rolled: list[tuple[int, float, float, float, int]], limit: int) -> list[HistoryPoint]:
    """Merge ``(bucket, sum, min, max, count)`` rows of raw data and rollups into points (mean per bucket)."""
    merged: dict[int, list[float]] = {}
    for bucket, total, low, high, count in (*raw, *rolled):
        entry = merged.get(bucket)
        if entry is None:
            merged[bucket] = [total, low, high, count]
        else:
            entry[0] += total
            entry[1] = min(entry[1], low)
            entry[2] = max(entry[2], high)
            entry[3] += count
    return [HistoryPoint(bucket, total / count, low, high, int(count))
            for bucket, (total, low, high, count) in sorted(merged.items())][:limit]


_event_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[StoredEvent] = msgspec.json.Decoder(StoredEvent)


def key_of(item: Record) -> Key:
    """The idempotency key of an item."""
    return (item.device, item.stream, item.seq)


def check_record(item: Record) -> None:
    """:func:`devices.contract.check_item`, and for a placement a confidence in 0..1; raise ``ContractError``."""
    if isinstance(item, Placement):
        if not 0.0 <= item.confidence <= 1.0 or item.seq < 0:  # NaN fails the comparison too
            raise ContractError(f"asset {item.device}: field confidence {item.confidence!r} not in 0..1, "
                                f"or seq {item.seq} negative")
        return
    check_item(item)


def item_bed(item: Record) -> str | None:
    """The bed an item is about, when its kind carries one."""
    if isinstance(item, Observation | DeviceEvent | DeviceInfo):
        return item.bed
    return None


def event_kind(item: StoredEvent) -> str:
    """The contract's ``kind`` tag of an item (``evt``, ``tag``, ``waste``, ``dev``)."""
    return str(type(item).__struct_config__.tag)


def encode_event(item: StoredEvent) -> bytes:
    """The stored form of a non-observation item: its contract JSON (with the ``kind`` tag)."""
    return _event_encoder.encode(item)


def decode_event(body: bytes) -> StoredEvent:
    """Decode a stored event back into its contract struct; a bad body raises :class:`StoreCorrupt`."""
    try:
        return _event_decoder.decode(body)
    except UNDECODABLE as exc:  # ValidationError is a DecodeError
        raise StoreCorrupt(f"stored event does not decode: {exc}") from exc


def bucket_start(ts: int, step_ms: int) -> int:
    """The start of the epoch-aligned bucket of width ``step_ms`` that holds ``ts``."""
    return ts - ts % step_ms


def check_target(bed: str | None, device: str | None) -> None:
    """Raise ``ValueError`` unless a bed or a device (or both) is named."""
    if bed is None and device is None:
        raise ValueError("name a bed or a device")


def check_range(start_ms: int, end_ms: int, step_ms: int | None, limit: int) -> None:
    """Raise ``ValueError`` for an empty range, a non-positive step or a negative limit."""
    if end_ms <= start_ms:
        raise ValueError(f"empty range: start_ms={start_ms} end_ms={end_ms}")
    if step_ms is not None and step_ms <= 0:
        raise ValueError(f"step_ms must be positive, got {step_ms}")
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")


def events_query(*, bed: str | None, device: str | None, start_ms: int, end_ms: int, limit: int,
                 kind: str | None) -> tuple[str, list[object]]:
    """The SQL (``?`` parameters) and parameters of an events() query, shared by the SQL stores."""
    check_range(start_ms, end_ms, None, limit)
    where = "ts >= ? AND ts < ?"
    params: list[object] = [start_ms, end_ms]
    for column, value in (("bed", bed), ("device", device), ("kind", kind)):
        if value is not None:
            where += f" AND {column} = ?"
            params.append(value)
    return f"SELECT body FROM events WHERE {where} ORDER BY ts, device, stream, seq LIMIT ?", [*params, limit]
