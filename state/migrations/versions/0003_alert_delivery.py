"""Alert delivery: escalations with their persisted deadlines, fired escalation steps, per-recipient deliveries.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 04:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "escalations",
        sa.Column("alert_id", sa.String(length=64), nullable=False),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("bed", sa.String(length=64), nullable=True),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("state IN ('running', 'acknowledged', 'accepted', 'resolved', 'exhausted')",
                           name=op.f("ck_escalations_state")),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], name=op.f("fk_escalations_alert_id_alerts")),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_escalations")),
    )
    op.create_index(op.f("ix_escalations_next_at"), "escalations", ["next_at"])
    op.create_index(op.f("ix_escalations_unit"), "escalations", ["unit"])
    op.create_table(
        "escalation_steps",
        sa.Column("n", SERIAL, autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("recipients", JSON, nullable=False),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], name=op.f("fk_escalation_steps_alert_id_alerts")),
        sa.PrimaryKeyConstraint("n", name=op.f("pk_escalation_steps")),
        sa.UniqueConstraint("alert_id", "step", name=op.f("uq_escalation_steps_alert_id_step")),
    )
    op.create_index(op.f("ix_escalation_steps_alert_id"), "escalation_steps", ["alert_id"])
    op.create_table(
        "deliveries",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("staff", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("sent_at", sa.BigInteger(), nullable=False),
        sa.Column("confirm_by", sa.BigInteger(), nullable=True),
        sa.Column("delivered_at", sa.BigInteger(), nullable=True),
        sa.Column("read_at", sa.BigInteger(), nullable=True),
        sa.Column("accepted_at", sa.BigInteger(), nullable=True),
        sa.Column("declined_at", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.String(length=200), nullable=False),
        sa.CheckConstraint("status IN ('sent', 'delivered', 'read', 'accepted', 'declined', 'failed')",
                           name=op.f("ck_deliveries_status")),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], name=op.f("fk_deliveries_alert_id_alerts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint("alert_id", "step", "staff", "channel",
                            name=op.f("uq_deliveries_alert_id_step_staff_channel")),
    )
    op.create_index(op.f("ix_deliveries_alert_id"), "deliveries", ["alert_id"])
    op.create_index(op.f("ix_deliveries_confirm_by"), "deliveries", ["confirm_by"])
    op.create_index(op.f("ix_deliveries_staff"), "deliveries", ["staff"])


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("deliveries")
    op.drop_table("escalation_steps")
    op.drop_table("escalations")
