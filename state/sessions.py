"""Sessions for the repositories: short read or write transactions whose library errors become ours."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from .errors import translated

WRITE_OPTION = "wardlink_write"
"""Execution option marking a write transaction (on SQLite it begins with ``BEGIN IMMEDIATE``)."""


class Sessions:
    """Hands out one short transaction per repository call; repositories never keep a session."""

    def __init__(self, engine: Engine) -> None:
        """Bind read and write session factories to the engine."""
        self.engine = engine
        self.dialect = engine.dialect.name
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)

    @contextmanager
    def read(self, what: str) -> Iterator[Session]:
        """A read-only transaction (rolled back at the end); errors become :class:`StateError`."""
        with translated(what), self._read() as session:
            yield session

    @contextmanager
    def write(self, what: str) -> Iterator[Session]:
        """A write transaction, committed when the block ends; errors become :class:`StateError`."""
        with translated(what), self._write.begin() as session:
            yield session

    def lock(self, session: Session, key: int) -> None:
        """Serialise writers on ``key`` until the transaction ends (PostgreSQL; SQLite writers already are)."""
        if self.dialect == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
