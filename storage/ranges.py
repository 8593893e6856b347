"""The stored sequence numbers of each ``(device, stream)`` as sorted runs: the embedded store's idempotency index.

A gateway numbers each stream ``0, 1, 2, ...``, so what a stream has stored is almost always one run
``[lo, hi]`` (a few more after a gap). :class:`KeyIndex` answers "is this key stored?" for a whole
batch with numpy (a batch is cut into pieces of one stream with consecutive seqs; a piece above
everything stored for its stream is new as a whole) and falls back to a per-item check only for a
stream whose batch overlaps what it has stored (a replay) or repeats a seq. ``filter`` changes
nothing: the caller applies the returned pieces with ``apply`` once the batch is committed, so the
index never holds a key that is not in the database.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

import numpy as np

StreamKey = tuple[str, str]
"""``(device, stream)``."""

Piece = tuple[StreamKey, int, int]
"""A run of consecutive seqs ``[lo, hi]`` of one stream."""

_NO_PIECES: Final[list[Piece]] = []


class SeqRuns:
    """Disjoint, non-adjacent runs ``[lo, hi]`` of stored seqs of one stream, sorted."""

    __slots__ = ("hi", "lo")

    def __init__(self) -> None:
        """An empty set of runs."""
        self.lo: list[int] = []
        self.hi: list[int] = []

    @property
    def top(self) -> int | None:
        """The greatest stored seq, or None when nothing is stored."""
        return self.hi[-1] if self.hi else None

    def __contains__(self, seq: int) -> bool:
        """Whether ``seq`` is stored."""
        i = bisect_right(self.lo, seq) - 1
        return i >= 0 and seq <= self.hi[i]

    def __len__(self) -> int:
        """The number of runs."""
        return len(self.lo)

    def add(self, lo: int, hi: int) -> None:
        """Add the run ``[lo, hi]`` (it may overlap or touch stored runs; they are merged)."""
        los, his = self.lo, self.hi
        if not his or lo > his[-1] + 1:  # the common case: above everything stored, after a gap
            los.append(lo)
            his.append(hi)
            return
        if lo >= los[-1]:  # continues or overlaps the last run
            his[-1] = max(his[-1], hi)
            return
        # General case: every run touching [lo - 1, hi + 1] is merged into one.
        first = bisect_right(his, lo - 2)  # runs before this end before lo - 1
        last = bisect_right(los, hi + 1)  # runs from this one start after hi + 1
        if first < last:
            lo = min(lo, los[first])
            hi = max(hi, his[last - 1])
        los[first:last] = [lo]
        his[first:last] = [hi]

    def runs(self) -> Iterator[tuple[int, int]]:
        """Each run as ``(lo, hi)``, ascending."""
        return zip(self.lo, self.hi, strict=True)


class KeyIndex:
    """Stored ``(device, stream, seq)`` keys as :class:`SeqRuns` per stream (not thread-safe: the writer's)."""

    def __init__(self) -> None:
        """An empty index."""
        self._streams: dict[StreamKey, SeqRuns] = {}

    def __len__(self) -> int:
        """The number of runs held."""
        return sum(len(runs) for runs in self._streams.values())

    def __contains__(self, key: tuple[str, str, int]) -> bool:
        """Whether a key is stored."""
        runs = self._streams.get((key[0], key[1]))
        return runs is not None and key[2] in runs

    def add(self, device: str, stream: str, lo: int, hi: int) -> None:
        """Record ``[lo, hi]`` of a stream as stored (loading, or applying one piece)."""
        runs = self._streams.get((device, stream))
        if runs is None:
            runs = self._streams[(device, stream)] = SeqRuns()
        runs.add(lo, hi)

    def apply(self, pieces: list[Piece]) -> None:
        """Record the pieces :meth:`filter` returned, once their batch is committed."""
        streams = self._streams
        for key, lo, hi in pieces:
            runs = streams.get(key)
            if runs is None:
                runs = streams[key] = SeqRuns()
            runs.add(lo, hi)

    def rows(self) -> Iterator[tuple[str, str, int, int]]:
        """Every run as ``(device, stream, lo, hi)``."""
        for (device, stream), runs in self._streams.items():
            for lo, hi in runs.runs():
                yield device, stream, lo, hi

    @staticmethod
    def stream_ids(device: Iterable[str], stream: Iterable[str]) -> tuple[np.ndarray, list[StreamKey]]:
        """Each row's ``(device, stream)`` as an index into the returned keys: :meth:`filter`'s first two arguments."""
        ids: dict[StreamKey, int] = {}
        index = [ids.setdefault(key, len(ids)) for key in zip(device, stream, strict=True)]
        return np.array(index, dtype=np.int64), list(ids)

    def filter(self, stream: np.ndarray, keys: Sequence[StreamKey],
               seq: np.ndarray) -> tuple[np.ndarray | None, list[Piece]]:
        """Which rows of a batch (columns in batch order) to store, and the pieces they add.

        ``stream`` holds each row's stream as an index into ``keys`` (its ``(device, stream)``).
        Returns ``(keep, pieces)``: ``keep`` is None when every row is new and unique, otherwise a
        boolean mask that drops each key already stored and every repeat of a key after its first
        row in the batch. Nothing is recorded until :meth:`apply`.
        """
        n = len(seq)
        if n == 0:
            return None, _NO_PIECES
        # Cut the batch into pieces: one stream, each seq one more than the one before.
        joined = (stream[1:] == stream[:-1]) & (seq[1:] == seq[:-1] + 1)
        starts = np.flatnonzero(~joined) + 1
        firsts = np.concatenate(([0], starts))
        lasts = np.concatenate((starts, [n])) - 1
        whole = self._all_new(stream[firsts], keys, seq[firsts], seq[lasts])
        if whole is not None:
            return None, whole
        tops: dict[StreamKey, int] = {}
        streams = self._streams
        pieces: list[Piece] = []
        slow: set[StreamKey] = set()
        for index, lo, hi in zip(stream[firsts].tolist(), seq[firsts].tolist(), seq[lasts].tolist(), strict=True):
            key = keys[index]
            if key in slow:
                continue
            top = tops.get(key)
            if top is None:
                runs = streams.get(key)
                top = None if runs is None else runs.top
            if top is not None and lo <= top:  # overlaps what is stored or came earlier in the batch
                slow.add(key)
                continue
            tops[key] = hi
            pieces.append((key, lo, hi))
        if not slow:
            return None, pieces
        return self._filter_slowly(stream, keys, seq, firsts, lasts, slow, pieces)

    def _all_new(self, stream: np.ndarray, keys: Sequence[StreamKey], lo: np.ndarray,
                 hi: np.ndarray) -> list[Piece] | None:
        """The pieces of a batch as one run per stream, if every piece is new (None: look piece by piece).

        The usual batch: each stream's pieces come in rising order and all lie above what the stream has
        stored. Checked with numpy, a dict lookup per stream rather than per piece (a batch of 20,000
        monitor readings holds a piece per frame, two or more per stream).
        """
        order = np.argsort(stream, kind="stable")  # each stream's pieces together, in batch order
        stream, lo, hi = stream[order], lo[order], hi[order]
        same = stream[1:] == stream[:-1]
        if not np.all(lo[1:][same] > hi[:-1][same]):
            return None  # a piece at or below an earlier one of its stream: a repeat, or out of order
        heads = np.flatnonzero(np.concatenate(([True], ~same)))  # each stream's first piece
        streams = self._streams
        for index, first in zip(stream[heads].tolist(), lo[heads].tolist(), strict=True):
            runs = streams.get(keys[index])
            top = None if runs is None else runs.top
            if top is not None and first <= top:
                return None  # overlaps what the stream has stored
        # One piece per run of consecutive seqs of a stream (touching pieces merged).
        cut = np.flatnonzero(np.concatenate(([True], ~(same & (lo[1:] == hi[:-1] + 1)))))
        ends = np.concatenate((cut[1:], [len(lo)])) - 1
        return [(keys[index], first, last) for index, first, last in
                zip(stream[cut].tolist(), lo[cut].tolist(), hi[ends].tolist(), strict=True)]

    def _filter_slowly(self, stream: np.ndarray, keys: Sequence[StreamKey], seq: np.ndarray, firsts: np.ndarray,
                       lasts: np.ndarray, slow: set[StreamKey], fast: list[Piece]) -> tuple[np.ndarray, list[Piece]]:
        """Check the rows of the ``slow`` streams one at a time (first of a key in the batch wins)."""
        keep = np.ones(len(seq), dtype=bool)
        pieces = [piece for piece in fast if piece[0] not in slow]
        seen: dict[StreamKey, set[int]] = {key: set() for key in slow}
        for first, last in zip(firsts.tolist(), lasts.tolist(), strict=True):
            key = keys[stream[first]]
            batch_seen = seen.get(key)
            if batch_seen is None:
                continue
            runs = self._streams.get(key)
            for i, q in enumerate(seq[first:last + 1].tolist(), start=first):
                if q in batch_seen or (runs is not None and q in runs):
                    keep[i] = False
                else:
                    batch_seen.add(q)
        for key, seqs in seen.items():
            pieces.extend((key, lo, hi) for lo, hi in _runs_of(sorted(seqs)))
        return keep, pieces


def _runs_of(seqs: list[int]) -> Iterator[tuple[int, int]]:
    """Consecutive runs ``(lo, hi)`` of sorted distinct ints."""
    if not seqs:
        return
    lo = hi = seqs[0]
    for q in seqs[1:]:
        if q == hi + 1:
            hi = q
        else:
            yield lo, hi
            lo = hi = q
    yield lo, hi
