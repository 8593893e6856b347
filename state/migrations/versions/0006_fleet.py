"""Fleet management: maintenance plans per model, work orders, recalls, and the connection-state log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "maintenance_plans",
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("manufacturer", sa.String(length=200), nullable=False),
        sa.Column("interval_days", sa.Integer(), nullable=False),
        sa.Column("manufacturer_schedule", sa.Boolean(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("kind IN ('pm', 'calibration')", name=op.f("ck_maintenance_plans_kind")),
        sa.CheckConstraint("interval_days > 0", name=op.f("ck_maintenance_plans_interval")),
        sa.PrimaryKeyConstraint("model", "kind", name=op.f("pk_maintenance_plans")),
    )
    op.create_table(
        "work_orders",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("planned", sa.Boolean(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("due_at", sa.BigInteger(), nullable=True),
        sa.Column("opened_at", sa.BigInteger(), nullable=False),
        sa.Column("opened_by", sa.String(length=64), nullable=False),
        sa.Column("assigned_to", sa.String(length=64), nullable=True),
        sa.Column("assigned_at", sa.BigInteger(), nullable=True),
        sa.Column("closed_at", sa.BigInteger(), nullable=True),
        sa.Column("closed_by", sa.String(length=64), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("parts", JSON, nullable=False),
        sa.CheckConstraint("kind IN ('pm', 'calibration', 'repair', 'firmware', 'recall')",
                           name=op.f("ck_work_orders_kind")),
        sa.CheckConstraint("status IN ('open', 'assigned', 'closed')", name=op.f("ck_work_orders_status")),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_work_orders_device_id_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_orders")),
    )
    op.create_index(op.f("ix_work_orders_device_id"), "work_orders", ["device_id"])
    op.create_index(op.f("ix_work_orders_status"), "work_orders", ["status"])
    op.create_index(op.f("ix_work_orders_due_at"), "work_orders", ["due_at"])
    op.create_index(op.f("ix_work_orders_device_id_kind_closed_at"), "work_orders", ["device_id", "kind", "closed_at"])
    op.create_table(
        "recalls",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("manufacturer", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("product_code", sa.String(length=200), nullable=False),
        sa.Column("udi", sa.String(length=200), nullable=False),
        sa.Column("firmware_min", sa.String(length=100), nullable=False),
        sa.Column("firmware_max", sa.String(length=100), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=True),
        sa.Column("imported_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recalls")),
    )
    op.create_table(
        "connection_log",
        sa.Column("n", SERIAL, autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("kind IN ('device', 'gateway')", name=op.f("ck_connection_log_kind")),
        sa.PrimaryKeyConstraint("n", name=op.f("pk_connection_log")),
        sa.UniqueConstraint("subject", "ts", "state", name=op.f("uq_connection_log_subject_ts_state")),
    )
    op.create_index(op.f("ix_connection_log_subject_ts"), "connection_log", ["subject", "ts"])


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f("ix_connection_log_subject_ts"), table_name="connection_log")
    op.drop_table("connection_log")
    op.drop_table("recalls")
    for index in ("device_id_kind_closed_at", "due_at", "status", "device_id"):
        op.drop_index(op.f(f"ix_work_orders_{index}"), table_name="work_orders")
    op.drop_table("work_orders")
    op.drop_table("maintenance_plans")
