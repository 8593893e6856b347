"""Initial schema: registry, people, assignments, alerts, assets, waste custody, audit; append-only triggers.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 02:09:12.842624
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY = ("alarm_log", "audit", "waste_bags", "waste_handovers")


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("alarm_kind", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("onset", sa.BigInteger(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.Column("bed", sa.String(length=64), nullable=True),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("device_alert", sa.String(length=128), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=64), nullable=True),
        sa.Column("acknowledged_at", sa.BigInteger(), nullable=True),
        sa.Column("body", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index(op.f("ix_alerts_bed"), "alerts", ["bed"])
    op.create_index(op.f("ix_alerts_source_type"), "alerts", ["source", "type"])
    op.create_index(op.f("ix_alerts_state"), "alerts", ["state"])
    op.create_index(op.f("ix_alerts_unit"), "alerts", ["unit"])
    op.create_table(
        "audit",
        sa.Column("n", SERIAL, autoincrement=True, nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("object", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("result", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("n", name=op.f("pk_audit")),
        sa.UniqueConstraint("hash", name=op.f("uq_audit_hash")),
    )
    op.create_index(op.f("ix_audit_actor"), "audit", ["actor"])
    op.create_index(op.f("ix_audit_at"), "audit", ["at"])
    op.create_table(
        "staff",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff")),
    )
    op.create_table(
        "units",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_units")),
    )
    op.create_table(
        "waste_bags",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("weight_g", sa.Float(), nullable=False),
        sa.Column("sealed_by", sa.String(length=64), nullable=False),
        sa.Column("sealed_at", sa.BigInteger(), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "category IN ('infectious', 'sharps', 'pathological', 'pharmaceutical', 'chemical')",
            name=op.f("ck_waste_bags_category"),
        ),
        sa.CheckConstraint("weight_g >= 0", name=op.f("ck_waste_bags_weight")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waste_bags")),
    )
    op.create_index(op.f("ix_waste_bags_sealed_at"), "waste_bags", ["sealed_at"])
    op.create_index(op.f("ix_waste_bags_unit"), "waste_bags", ["unit"])
    op.create_table(
        "alarm_log",
        sa.Column("n", SERIAL, autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("body", JSON, nullable=False),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], name=op.f("fk_alarm_log_alert_id_alerts")),
        sa.PrimaryKeyConstraint("n", name=op.f("pk_alarm_log")),
    )
    op.create_index(op.f("ix_alarm_log_alert_id"), "alarm_log", ["alert_id"])
    op.create_index(op.f("ix_alarm_log_at"), "alarm_log", ["at"])
    op.create_table(
        "beds",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("unit_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name=op.f("fk_beds_unit_id_units")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_beds")),
    )
    op.create_index(op.f("ix_beds_unit_id"), "beds", ["unit_id"])
    op.create_table(
        "waste_handovers",
        sa.Column("n", SERIAL, autoincrement=True, nullable=False),
        sa.Column("bag_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("from_point", sa.String(length=16), nullable=False),
        sa.Column("to_point", sa.String(length=16), nullable=False),
        sa.Column("handler", sa.String(length=64), nullable=False),
        sa.Column("weight_g", sa.Float(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("manifest", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "from_point IN ('ward', 'collector', 'storage', 'disposer')", name=op.f("ck_waste_handovers_from_point")
        ),
        sa.CheckConstraint(
            "to_point IN ('ward', 'collector', 'storage', 'disposer')", name=op.f("ck_waste_handovers_to_point")
        ),
        sa.CheckConstraint("weight_g >= 0", name=op.f("ck_waste_handovers_weight")),
        sa.ForeignKeyConstraint(["bag_id"], ["waste_bags.id"], name=op.f("fk_waste_handovers_bag_id_waste_bags")),
        sa.PrimaryKeyConstraint("n", name=op.f("pk_waste_handovers")),
        sa.UniqueConstraint("bag_id", "step", name=op.f("uq_waste_handovers_bag_id_step")),
    )
    op.create_index(op.f("ix_waste_handovers_at"), "waste_handovers", ["at"])
    op.create_table(
        "devices",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("driver", sa.String(length=64), nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("unit_id", sa.String(length=64), nullable=True),
        sa.Column("bed_id", sa.String(length=64), nullable=True),
        sa.Column("manufacturer", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("serial_number", sa.String(length=200), nullable=False),
        sa.Column("udi", sa.String(length=200), nullable=True),
        sa.Column("risk_class", sa.String(length=16), nullable=True),
        sa.Column("life_support", sa.Boolean(), nullable=False),
        sa.Column("firmware", sa.String(length=100), nullable=False),
        sa.Column("connection", JSON, nullable=False),
        sa.Column("discovered", sa.Boolean(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.Column("retired_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["bed_id"], ["beds.id"], name=op.f("fk_devices_bed_id_beds")),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name=op.f("fk_devices_unit_id_units")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
    )
    op.create_index(op.f("ix_devices_bed_id"), "devices", ["bed_id"])
    op.create_index(op.f("ix_devices_gateway"), "devices", ["gateway"])
    op.create_index(op.f("ix_devices_manufacturer_model"), "devices", ["manufacturer", "model"])
    op.create_index(op.f("ix_devices_udi"), "devices", ["udi"])
    op.create_index(op.f("ix_devices_unit_id"), "devices", ["unit_id"])
    op.create_table(
        "patients",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("bed_id", sa.String(length=64), nullable=True),
        sa.Column("admitted_at", sa.BigInteger(), nullable=True),
        sa.Column("discharged_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["bed_id"], ["beds.id"], name=op.f("fk_patients_bed_id_beds")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
        sa.UniqueConstraint("bed_id", name=op.f("uq_patients_bed_id")),
    )
    op.create_table(
        "assets",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("unit_id", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("status IN ('clean', 'in_use', 'dirty', 'in_repair')", name=op.f("ck_assets_status")),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_assets_device_id_devices")),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name=op.f("fk_assets_unit_id_units")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assets")),
        sa.UniqueConstraint("device_id", name=op.f("uq_assets_device_id")),
        sa.UniqueConstraint("tag", name=op.f("uq_assets_tag")),
    )
    op.create_index(op.f("ix_assets_type_status"), "assets", ["type", "status"])
    op.create_index(op.f("ix_assets_unit_id"), "assets", ["unit_id"])
    op.create_table(
        "assignments",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("staff_id", sa.String(length=64), nullable=False),
        sa.Column("unit_id", sa.String(length=64), nullable=False),
        sa.Column("bed_id", sa.String(length=64), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("valid_from", sa.BigInteger(), nullable=False),
        sa.Column("valid_to", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("role IN ('primary', 'buddy', 'charge')", name=op.f("ck_assignments_role")),
        sa.CheckConstraint("valid_to > valid_from", name=op.f("ck_assignments_period")),
        sa.ForeignKeyConstraint(["bed_id"], ["beds.id"], name=op.f("fk_assignments_bed_id_beds")),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_assignments_patient_id_patients")),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"], name=op.f("fk_assignments_staff_id_staff")),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], name=op.f("fk_assignments_unit_id_units")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assignments")),
    )
    op.create_index(op.f("ix_assignments_bed_id"), "assignments", ["bed_id"])
    op.create_index(op.f("ix_assignments_patient_id"), "assignments", ["patient_id"])
    op.create_index(op.f("ix_assignments_staff_id"), "assignments", ["staff_id"])
    op.create_index(
        op.f("ix_assignments_unit_id_valid_from_valid_to"), "assignments", ["unit_id", "valid_from", "valid_to"]
    )

    _append_only_triggers()


def _append_only_triggers() -> None:
    """Refuse UPDATE and DELETE on the append-only tables (the hash chain detects what gets past this)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION wardlink_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'raise_exception'; "
            "END $$"
        )
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION wardlink_append_only()"
            )
        return
    for table in APPEND_ONLY:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {action} refused'); END"
            )


def downgrade() -> None:
    """Revert this revision."""
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute("DROP FUNCTION wardlink_append_only()")
    else:
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER {table}_no_update")
            op.execute(f"DROP TRIGGER {table}_no_delete")
    op.drop_index(op.f("ix_assignments_unit_id_valid_from_valid_to"), table_name="assignments")
    op.drop_index(op.f("ix_assignments_staff_id"), table_name="assignments")
    op.drop_index(op.f("ix_assignments_patient_id"), table_name="assignments")
    op.drop_index(op.f("ix_assignments_bed_id"), table_name="assignments")
    op.drop_table("assignments")
    op.drop_index(op.f("ix_assets_unit_id"), table_name="assets")
    op.drop_index(op.f("ix_assets_type_status"), table_name="assets")
    op.drop_table("assets")
    op.drop_table("patients")
    op.drop_index(op.f("ix_devices_unit_id"), table_name="devices")
    op.drop_index(op.f("ix_devices_udi"), table_name="devices")
    op.drop_index(op.f("ix_devices_manufacturer_model"), table_name="devices")
    op.drop_index(op.f("ix_devices_gateway"), table_name="devices")
    op.drop_index(op.f("ix_devices_bed_id"), table_name="devices")
    op.drop_table("devices")
    op.drop_index(op.f("ix_waste_handovers_at"), table_name="waste_handovers")
    op.drop_table("waste_handovers")
    op.drop_index(op.f("ix_beds_unit_id"), table_name="beds")
    op.drop_table("beds")
    op.drop_index(op.f("ix_alarm_log_at"), table_name="alarm_log")
    op.drop_index(op.f("ix_alarm_log_alert_id"), table_name="alarm_log")
    op.drop_table("alarm_log")
    op.drop_index(op.f("ix_waste_bags_unit"), table_name="waste_bags")
    op.drop_index(op.f("ix_waste_bags_sealed_at"), table_name="waste_bags")
    op.drop_table("waste_bags")
    op.drop_table("units")
    op.drop_table("staff")
    op.drop_index(op.f("ix_audit_at"), table_name="audit")
    op.drop_index(op.f("ix_audit_actor"), table_name="audit")
    op.drop_table("audit")
    op.drop_index(op.f("ix_alerts_unit"), table_name="alerts")
    op.drop_index(op.f("ix_alerts_state"), table_name="alerts")
    op.drop_index(op.f("ix_alerts_source_type"), table_name="alerts")
    op.drop_index(op.f("ix_alerts_bed"), table_name="alerts")
    op.drop_table("alerts")
