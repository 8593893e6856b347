"""Wardlink's relational state (registry, people, assignments, alerts, assets, waste custody, audit) on SQLAlchemy 2.

Open it with :func:`open_state` (``sqlite:///path`` embedded, ``postgresql+psycopg://...`` in production);
it migrates the schema to head with Alembic. Every repository method is synchronous and runs one short
transaction; async services call them through ``asyncio.to_thread``. See docs/state.md.
"""

from __future__ import annotations

from .db import State, default_url, open_state
from .errors import CustodyError, StateError

__all__ = ["CustodyError", "State", "StateError", "default_url", "open_state"]
