"""Series codes: the embedded store's writer sends DuckDB numbers, not Python strings.

An observation has six text fields (device, stream, metric, unit, bed, containment) and they repeat: a
monitor sends the same ten series every second. Schema 4 keeps the text of each distinct
``(device, stream, metric, code, unit, bed, containment)`` once, in the ``series`` table under a small
integer (its *code*, ``sid``), and the observations as numbers in ``samples``; the ``observations`` view
joins them back, so queries read what they read before. Writing a batch is then a numeric insert
(measured in this change for batches of 20,000: 0.4-0.5 µs per observation for DuckDB's insert and commit
against about 2.0 µs with the text in every row, most of it spent with the GIL held, which the ingest
worker's event loop then waits for), and the file holds each text once per series.

:class:`SeriesCodes` is the writer's Python view of ``series``. Codes for new series are inserted in the
batch's own transaction and remembered only after it commits (:meth:`SeriesCodes.remember`), so the
dictionary never holds a code the file does not; a failed commit reloads it with the rest of the
writer's derived state.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Final

import duckdb
import numpy as np

from devices.contract import Observation

from .base import StoreError
from .ranges import StreamKey

SeriesKey = tuple[str, str, str, int, str, str | None, str | None]
"""``(device, stream, metric, code, unit, bed, containment)``: everything of an observation but its numbers."""

SERIES_FIELDS: Final = ("device", "stream", "metric", "code", "unit", "bed", "containment")
_SERIES: Final = attrgetter(*SERIES_FIELDS)

# The numeric columns of a batch (``incoming_obs``, :func:`numeric_columns`) into ``samples``.
INSERT: Final = (
    "INSERT INTO samples (sid, seq, ts, value, device_ts, flags, wb) SELECT sid, seq, ts, value, "
    "CASE WHEN has_device_ts THEN device_ts END, flags, $wb FROM incoming_obs"
)


class SeriesCodes:
    """The codes of the ``series`` table, for the writer (writer lock held)."""

    def __init__(self) -> None:
        """No codes (:meth:`load` reads the table's)."""
        self._ids: dict[SeriesKey, int] = {}
        self._streams: dict[StreamKey, int] = {}
        self.stream_keys: list[StreamKey] = []  # stream id -> (device, stream)
        self._stream_of = np.empty(0, dtype=np.int64)  # series code -> stream id

    def __len__(self) -> int:
        """The number of codes held."""
        return len(self._ids)

    def load(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Read every code of the ``series`` table (in the caller's transaction)."""
        self._ids.clear()
        self._streams.clear()
        self.stream_keys.clear()
        self._stream_of = np.empty(0, dtype=np.int64)
        rows = conn.execute(f"SELECT sid, {', '.join(SERIES_FIELDS)} FROM series ORDER BY sid").fetchall()
        for position, (sid, *_) in enumerate(rows):
            if sid != position:
                raise StoreError(f"series codes are not 0..{len(rows) - 1} (code {sid} at {position})",
                                 retryable=False)
        self.remember([tuple(row[1:]) for row in rows])

    def encode(self, conn: duckdb.DuckDBPyConnection,
               items: Sequence[Observation]) -> tuple[np.ndarray, np.ndarray, list[SeriesKey]]:
        """The series code and stream id of every item, and the series new to the table.

        New series get the next codes and are inserted in the caller's transaction; pass them to
        :meth:`remember` once it has committed. Raises ``duckdb.Error`` as the table raised it.
        """
        keys = list(map(_SERIES, items))
        ids = self._ids
        try:
            sids = np.fromiter(map(ids.__getitem__, keys), dtype=np.int64, count=len(keys))
            return sids, self._stream_of[sids], []
        except KeyError:
            pass
        new = list(dict.fromkeys(k for k in keys if k not in ids))
        self._insert(conn, new, len(ids))
        fresh = {key: len(ids) + i for i, key in enumerate(new)}
        sids = np.fromiter((ids[k] if k in ids else fresh[k] for k in keys), dtype=np.int64, count=len(keys))
        return sids, np.concatenate((self._stream_of, self._stream_ids(new)))[sids], new

    def remember(self, new: list[SeriesKey]) -> None:
        """The codes of ``new`` (from :meth:`encode`) are committed: keep them."""
        self._stream_of = np.concatenate((self._stream_of, self._stream_ids(new)))
        for key in new:
            self._ids[key] = len(self._ids)

    def _stream_ids(self, new: list[SeriesKey]) -> np.ndarray:
        """The stream id of each of ``new``, numbering streams not seen before.

        Stream ids are Python-side only, so a stream first seen in a batch that fails keeps its id, unused.
        """
        streams = self._streams
        out = []
        for key in new:
            stream = (key[0], key[1])
            index = streams.get(stream)
            if index is None:
                index = streams[stream] = len(self.stream_keys)
                self.stream_keys.append(stream)
            out.append(index)
        return np.array(out, dtype=np.int64)

    @staticmethod
    def _insert(conn: duckdb.DuckDBPyConnection, new: list[SeriesKey], base: int) -> None:
        """Insert ``new`` with the codes from ``base`` on; a field numpy cannot hold is a non-retryable StoreError."""
        columns: dict[str, np.ndarray] = {"sid": np.arange(base, base + len(new), dtype=np.int64)}
        try:
            for name, values in zip(SERIES_FIELDS, zip(*new, strict=True), strict=True):
                columns[name] = np.array(values, dtype=np.int64 if name == "code" else object)
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"a series of an observation cannot be stored: {exc}", retryable=False) from exc
        conn.register("new_series", columns)
        try:
            conn.execute(f"INSERT INTO series (sid, {', '.join(SERIES_FIELDS)}) "
                         f"SELECT sid, {', '.join(SERIES_FIELDS)} FROM new_series").fetchall()
        finally:
            conn.unregister("new_series")


_NUMBERS: Final = tuple((name, attrgetter(name), dtype) for name, dtype in (
    ("seq", np.int64), ("ts", np.int64), ("value", np.float64), ("flags", np.int64)))
_DEVICE_TS: Final = attrgetter("device_ts")


def numeric_columns(items: Sequence[Observation], sids: np.ndarray) -> dict[str, np.ndarray]:
    """The ``incoming_obs`` columns of :data:`INSERT`: codes and numbers (a null device_ts as a flag).

    A number numpy cannot hold (an int past 64 bits ...) is a non-retryable :class:`StoreError`.
    """
    n = len(items)
    columns = {"sid": sids}
    try:
        for name, getter, dtype in _NUMBERS:
            columns[name] = np.fromiter(map(getter, items), dtype=dtype, count=n)
        device_ts = list(map(_DEVICE_TS, items))
        if None not in device_ts:
            columns["device_ts"] = np.array(device_ts, dtype=np.int64)
            columns["has_device_ts"] = np.ones(n, dtype=bool)
        elif device_ts.count(None) == n:
            columns["device_ts"] = np.zeros(n, dtype=np.int64)
            columns["has_device_ts"] = np.zeros(n, dtype=bool)
        else:
            columns["device_ts"] = np.array([0 if t is None else t for t in device_ts], dtype=np.int64)
            columns["has_device_ts"] = np.array([t is not None for t in device_ts], dtype=bool)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"a batch of {n} observations cannot be stored: {exc}", retryable=False) from exc
    return columns
