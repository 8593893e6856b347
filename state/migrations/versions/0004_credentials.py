"""Local sign-in: one Argon2id password hash per member of staff (the embedded identity provider).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 05:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "credentials",
        sa.Column("staff_id", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"], name=op.f("fk_credentials_staff_id_staff")),
        sa.PrimaryKeyConstraint("staff_id", name=op.f("pk_credentials")),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("credentials")
