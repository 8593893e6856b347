"""Alert lifecycle: latching, silencing and resolution columns, alarm-log events, alarm limit settings per unit and bed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 04:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("latched", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("silenced_until", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("resolved_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("delay_ms", sa.BigInteger(), nullable=False, server_default="0"))
        batch.create_index(batch.f("ix_alerts_onset"), ["onset"])
    # alarm_log is append-only (guarded by triggers): adding nullable columns rewrites no row
    op.add_column("alarm_log", sa.Column("event", sa.String(length=32), nullable=True))
    op.add_column("alarm_log", sa.Column("detail", JSON, nullable=True))
    op.create_table(
        "alarm_profiles",
        sa.Column("unit", sa.String(length=64), nullable=False),
        sa.Column("ruleset", sa.String(length=32), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("unit", name=op.f("pk_alarm_profiles")),
    )
    op.create_table(
        "alarm_limits",
        sa.Column("unit", sa.String(length=64), nullable=False),
        sa.Column("bed", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.String(length=100), nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("unit", "bed", "rule", name=op.f("pk_alarm_limits")),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("alarm_limits")
    op.drop_table("alarm_profiles")
    op.drop_column("alarm_log", "detail")
    op.drop_column("alarm_log", "event")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_index(batch.f("ix_alerts_onset"))
        batch.drop_column("delay_ms")
        batch.drop_column("resolved_at")
        batch.drop_column("silenced_until")
        batch.drop_column("latched")
