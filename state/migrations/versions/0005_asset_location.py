"""Asset location: current room of each asset, its location and status history, par levels per unit and type.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_LOCATION = ("room", "zone", "floor", "confidence", "since", "last_seen", "location_source", "lost")


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("room", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("zone", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("floor", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("confidence", sa.Float(), nullable=True))
        batch.add_column(sa.Column("since", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("last_seen", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("location_source", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lost", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.create_index(batch.f("ix_assets_room"), ["room"])
        batch.create_index(batch.f("ix_assets_zone"), ["zone"])
    op.create_table(
        "asset_events",
        sa.Column("n", SERIAL, autoincrement=True, nullable=False),
        sa.Column("asset_id", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("room", sa.String(length=64), nullable=True),
        sa.Column("zone", sa.String(length=64), nullable=True),
        sa.Column("floor", sa.String(length=64), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("type", sa.String(length=64), nullable=True),
        sa.CheckConstraint("event IN ('entered', 'left', 'lost', 'status')", name=op.f("ck_asset_events_event")),
        sa.PrimaryKeyConstraint("n", name=op.f("pk_asset_events")),
    )
    op.create_index(op.f("ix_asset_events_asset_id_ts"), "asset_events", ["asset_id", "ts"])
    op.create_index(op.f("ix_asset_events_ts"), "asset_events", ["ts"])
    op.create_table(
        "par_levels",
        sa.Column("unit_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("minimum", sa.Integer(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name=op.f("fk_par_levels_unit_id_units")),
        sa.PrimaryKeyConstraint("unit_id", "type", name=op.f("pk_par_levels")),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("par_levels")
    op.drop_index(op.f("ix_asset_events_ts"), table_name="asset_events")
    op.drop_index(op.f("ix_asset_events_asset_id_ts"), table_name="asset_events")
    op.drop_table("asset_events")
    with op.batch_alter_table("assets") as batch:
        batch.drop_index(batch.f("ix_assets_zone"))
        batch.drop_index(batch.f("ix_assets_room"))
        for column in reversed(_LOCATION):
            batch.drop_column(column)
