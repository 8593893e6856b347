"""The history check every fault test ends with: accepted by the gateway vs stored vs reported dropped."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass
class History:
    """Per-stream comparison of what the gateway accepted with what the store holds."""

    accepted: int
    stored: int
    duplicated: int
    missing: list[str]
    shed: int

    @property
    def lost(self) -> int:
        """Readings accepted, not stored, and not reported as shed."""
        return self.accepted - self.stored - self.shed


def check(outbox: Path, store: Path, streams: tuple[str, ...] = ("numerics",), table: str = "observations") -> History:
    """Compare the outbox's sequence counters (what was accepted) with the store's rows (``table``: observations,
    or events for alarm streams)."""
    box = sqlite3.connect(outbox)
    # What was accepted: the stream's counter as written when rows left, or the rows still waiting.
    accepted = {(d, s): n - 1 for d, s, n in box.execute("SELECT device, stream, next_seq FROM streams")
                if s in streams}
    for d, s, last in box.execute("SELECT device, stream, max(last_seq) FROM outbox GROUP BY 1, 2"):
        if s in streams:
            accepted[(d, s)] = max(accepted.get((d, s), 0), last)
    shed_row = box.execute("SELECT value FROM counters WHERE name = 'shed'").fetchone()
    box.close()
    db = sqlite3.connect(store)
    stored = 0
    duplicated = 0
    missing: list[str] = []
    for (device, stream), last in sorted(accepted.items()):
        seqs = [r[0] for r in db.execute(f"SELECT seq FROM {table} WHERE device = ? AND stream = ?",
                                         (device, stream))]
        stored += len(set(seqs))
        duplicated += len(seqs) - len(set(seqs))
        gaps = set(range(1, last + 1)) - set(seqs)
        if gaps:
            missing.append(f"{device}/{stream}: {len(gaps)} missing, first {min(gaps)}")
    db.close()
    return History(sum(accepted.values()), stored, duplicated, missing, int(shed_row[0]) if shed_row else 0)
