"""Time-series storage for Wardlink: the store protocol, its in-memory twin and the embedded stores.

``DuckDbStore`` is the embedded store (chosen by measurement, docs/storage.md); ``SqliteStore`` is the
measured alternative; ``MemoryStore`` is the twin for fast tests.
"""

from .base import (
    HistoryPoint,
    Latest,
    Quarantined,
    StoreClosed,
    StoreCorrupt,
    StoredEvent,
    StoreError,
    StoreStats,
    StoreUnavailable,
    TimeSeriesStore,
    WriteResult,
)
from .duckdb import DuckDbStore
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = [
    "DuckDbStore",
    "HistoryPoint",
    "Latest",
    "MemoryStore",
    "Quarantined",
    "SqliteStore",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreStats",
    "StoreUnavailable",
    "StoredEvent",
    "TimeSeriesStore",
    "WriteResult",
]
