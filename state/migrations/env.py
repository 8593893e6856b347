"""Alembic environment: migrates over the connection that :func:`state.db.migrate` passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from state.models import Base

config = context.config


def run() -> None:
    """Run the migrations online, on the caller's connection (offline SQL generation is not offered)."""
    connection = config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("state migrations run through state.db.migrate(), which passes a connection")
    context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run()
