"""The ORM models of every state table (SQLAlchemy 2 typed declarative); the migrations must match them.

Times are integer milliseconds since the Unix epoch (UTC), as everywhere in Wardlink. Registry tables
(units, beds, devices, patients, staff, assignments, assets) reference each other with foreign keys.
History tables (alerts, alarm_log, audit, waste) keep units, beds and people as the text recorded at
the time, so that history outlives a renamed or removed bed. ``alarm_log``, ``audit``, ``waste_bags`` and
``waste_handovers`` are append-only; the migration adds triggers that refuse UPDATE and DELETE on them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Json: TypeEngine[Any] = JSON().with_variant(postgresql.JSONB(), "postgresql")
"""JSON text on SQLite, JSONB on PostgreSQL."""

Serial: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")
"""A 64-bit row number on PostgreSQL; on SQLite INTEGER, so that it is the rowid (autoincrementing)."""

ASSIGNMENT_ROLES = ("primary", "buddy", "charge")
ASSET_STATUSES = ("clean", "in_use", "dirty", "in_repair")
ASSET_EVENTS = ("entered", "left", "lost", "status")
WASTE_POINTS = ("ward", "collector", "storage", "disposer")
WASTE_CATEGORIES = ("infectious", "sharps", "pathological", "pharmaceutical", "chemical")


def _empty() -> dict[str, Any]:
    """A fresh empty JSON object (a column default)."""
    return {}


def _one_of(column: str, values: tuple[str, ...]) -> str:
    """A CHECK expression limiting a text column to fixed values."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so constraint names are the same on every database."""

    metadata = MetaData(naming_convention=NAMING)


class UnitRow(Base):
    """A care unit (ward)."""

    __tablename__ = "units"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))


class BedRow(Base):
    """A bed of a unit."""

    __tablename__ = "beds"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit_id: Mapped[str] = mapped_column(ForeignKey("units.id"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class DeviceRow(Base):
    """A device of the fleet registry: identity, risk, firmware, where it belongs and how it is read."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    driver: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str] = mapped_column(String(64), index=True)
    unit_id: Mapped[str | None] = mapped_column(ForeignKey("units.id"), index=True)
    bed_id: Mapped[str | None] = mapped_column(ForeignKey("beds.id"), index=True)
    manufacturer: Mapped[str] = mapped_column(String(200), default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    serial_number: Mapped[str] = mapped_column(String(200), default="")
    udi: Mapped[str | None] = mapped_column(String(200), index=True)
    risk_class: Mapped[str | None] = mapped_column(String(16))
    life_support: Mapped[bool] = mapped_column(Boolean, default=False)
    firmware: Mapped[str] = mapped_column(String(100), default="")
    connection: Mapped[dict[str, Any]] = mapped_column(Json, default=_empty)
    discovered: Mapped[bool] = mapped_column(Boolean, default=False)
    updated: Mapped[int] = mapped_column(BigInteger)
    retired_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index(None, "manufacturer", "model"),)


class PatientRow(Base):
    """A patient under a pseudonymous id; at most one patient per bed."""

    __tablename__ = "patients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    bed_id: Mapped[str | None] = mapped_column(ForeignKey("beds.id"), unique=True)
    admitted_at: Mapped[int | None] = mapped_column(BigInteger)
    discharged_at: Mapped[int | None] = mapped_column(BigInteger)


class StaffRow(Base):
    """A member of staff (a user): nurse, charge nurse, facilities, biomed, admin, auditor."""

    __tablename__ = "staff"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class AssignmentRow(Base):
    """Staff on a unit for a shift, for one bed or patient (primary, buddy) or the whole unit (charge)."""

    __tablename__ = "assignments"

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id"), index=True)
    unit_id: Mapped[str] = mapped_column(ForeignKey("units.id"))
    bed_id: Mapped[str | None] = mapped_column(ForeignKey("beds.id"), index=True)
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    valid_from: Mapped[int] = mapped_column(BigInteger)
    valid_to: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(_one_of("role", ASSIGNMENT_ROLES), name="role"),
        CheckConstraint("valid_to > valid_from", name="period"),
        Index(None, "unit_id", "valid_from", "valid_to"),
    )


class AlertRow(Base):
    """An alert in its current state (one row per alert episode), with the contract message as ``body``."""

    __tablename__ = "alerts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(64))
    alarm_kind: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16), index=True)
    onset: Mapped[int] = mapped_column(BigInteger)
    updated: Mapped[int] = mapped_column(BigInteger)
    bed: Mapped[str | None] = mapped_column(String(64), index=True)
    unit: Mapped[str | None] = mapped_column(String(64), index=True)
    device_alert: Mapped[str | None] = mapped_column(String(128))
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    acknowledged_at: Mapped[int | None] = mapped_column(BigInteger)
    latched: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    silenced_until: Mapped[int | None] = mapped_column(BigInteger)
    resolved_at: Mapped[int | None] = mapped_column(BigInteger)
    delay_ms: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # the rule's persistence delay
    body: Mapped[dict[str, Any]] = mapped_column(Json)

    __table_args__ = (Index(None, "source", "type"), Index(None, "onset"))


class AlarmLogRow(Base):
    """One alert transition (append-only)."""

    __tablename__ = "alarm_log"

    n: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(8))
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str | None] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(Json)
    event: Mapped[str | None] = mapped_column(String(32))  # onset, repeat, acknowledged, silenced, comment, ...
    detail: Mapped[dict[str, Any] | None] = mapped_column(Json)


class AlarmProfileRow(Base):
    """The clinical default rule set a unit uses (adult, paediatric, neonatal); absent means adult."""

    __tablename__ = "alarm_profiles"

    unit: Mapped[str] = mapped_column(String(64), primary_key=True)
    ruleset: Mapped[str] = mapped_column(String(32))
    updated: Mapped[int] = mapped_column(BigInteger)
    updated_by: Mapped[str] = mapped_column(String(64))


class AlarmLimitRow(Base):
    """An override of one rule's settings for a whole unit (``bed`` empty) or for one bed of it."""

    __tablename__ = "alarm_limits"

    unit: Mapped[str] = mapped_column(String(64), primary_key=True)
    bed: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" for the unit-wide override
    rule: Mapped[str] = mapped_column(String(100), primary_key=True)
    settings: Mapped[dict[str, Any]] = mapped_column(Json)
    updated: Mapped[int] = mapped_column(BigInteger)
    updated_by: Mapped[str] = mapped_column(String(64))


class AssetRow(Base):
    """A tagged piece of equipment, linked to its device when it is one."""

    __tablename__ = "assets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="clean")
    unit_id: Mapped[str | None] = mapped_column(ForeignKey("units.id"), index=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id"), unique=True)
    updated: Mapped[int] = mapped_column(BigInteger)
    # Current location (the facilities service writes it; None until the asset is first placed).
    room: Mapped[str | None] = mapped_column(String(64), index=True)
    zone: Mapped[str | None] = mapped_column(String(64), index=True)
    floor: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[float | None] = mapped_column(Float)
    since: Mapped[int | None] = mapped_column(BigInteger)  # entered the room (dwell = now - since)
    last_seen: Mapped[int | None] = mapped_column(BigInteger)
    location_source: Mapped[str | None] = mapped_column(String(64))  # the reader that placed it
    lost: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        CheckConstraint(_one_of("status", ASSET_STATUSES), name="status"),
        Index(None, "type", "status"),
    )


class AssetEventRow(Base):
    """Location and status history of an asset (append-only): entered, left, lost, status."""

    __tablename__ = "asset_events"

    n: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    asset_id: Mapped[str] = mapped_column(String(64))
    ts: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(String(16))
    room: Mapped[str | None] = mapped_column(String(64))
    zone: Mapped[str | None] = mapped_column(String(64))
    floor: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(16))
    unit: Mapped[str | None] = mapped_column(String(64))  # the owning unit at the time
    type: Mapped[str | None] = mapped_column(String(64))  # the asset type at the time

    __table_args__ = (
        CheckConstraint(_one_of("event", ASSET_EVENTS), name="event"),
        Index(None, "asset_id", "ts"),
        Index(None, "ts"),
    )


class ParLevelRow(Base):
    """How many assets of a type a unit should have available (clean) at any time."""

    __tablename__ = "par_levels"

    unit_id: Mapped[str] = mapped_column(ForeignKey("units.id"), primary_key=True)
    type: Mapped[str] = mapped_column(String(64), primary_key=True)
    minimum: Mapped[int] = mapped_column(Integer)
    updated: Mapped[int] = mapped_column(BigInteger)


class WasteBagRow(Base):
    """A medical-waste bag as sealed at the ward (never updated: its chain lives in waste_handovers)."""

    __tablename__ = "waste_bags"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    category: Mapped[str] = mapped_column(String(16))
    unit: Mapped[str | None] = mapped_column(String(64), index=True)
    weight_g: Mapped[float] = mapped_column(Float)
    sealed_by: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[int] = mapped_column(BigInteger, index=True)
    device: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint(_one_of("category", WASTE_CATEGORIES), name="category"),
        CheckConstraint("weight_g >= 0", name="weight"),
    )


class WasteHandoverRow(Base):
    """One step of a bag's custody chain (append-only); ``step`` numbers the chain from 1."""

    __tablename__ = "waste_handovers"

    n: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    bag_id: Mapped[str] = mapped_column(ForeignKey("waste_bags.id"))
    step: Mapped[int] = mapped_column(Integer)
    from_point: Mapped[str] = mapped_column(String(16))
    to_point: Mapped[str] = mapped_column(String(16))
    handler: Mapped[str] = mapped_column(String(64))
    weight_g: Mapped[float] = mapped_column(Float)
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    device: Mapped[str | None] = mapped_column(String(64))
    manifest: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("bag_id", "step"),
        CheckConstraint(_one_of("from_point", WASTE_POINTS), name="from_point"),
        CheckConstraint(_one_of("to_point", WASTE_POINTS), name="to_point"),
        CheckConstraint("weight_g >= 0", name="weight"),
    )


class AuditRow(Base):
    """One audit record (append-only), chained to the previous one by ``prev_hash``."""

    __tablename__ = "audit"

    n: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(32))
    unit: Mapped[str | None] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    result: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="{}")  # canonical JSON text: hashed byte for byte
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


APPEND_ONLY = ("alarm_log", "audit", "waste_bags", "waste_handovers")
"""Tables whose rows are never updated or deleted (the migration guards them with triggers)."""


ESCALATION_STATES = ("running", "acknowledged", "accepted", "resolved", "exhausted")
DELIVERY_STATUSES = ("sent", "delivered", "read", "accepted", "declined", "failed")


class EscalationRow(Base):
    """An alert's escalation: the step last fired and the persisted deadline of the next (survives a restart)."""

    __tablename__ = "escalations"

    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id"), primary_key=True)
    unit: Mapped[str | None] = mapped_column(String(64), index=True)
    bed: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[str] = mapped_column(String(8))
    step: Mapped[int] = mapped_column(Integer)  # index of the last step fired in the priority's schedule
    next_at: Mapped[int | None] = mapped_column(BigInteger, index=True)  # None once the escalation has stopped
    state: Mapped[str] = mapped_column(String(16))
    created: Mapped[int] = mapped_column(BigInteger)
    updated: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint(_one_of("state", ESCALATION_STATES), name="state"),)


class EscalationStepRow(Base):
    """One fired step of an escalation: who it targeted, why it fired, when (one row per step, never updated)."""

    __tablename__ = "escalation_steps"

    n: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    target: Mapped[str] = mapped_column(String(16))  # primary, buddy, charge, team
    reason: Mapped[str] = mapped_column(String(16))  # onset, timeout, declined, unconfirmed, vacant
    at: Mapped[int] = mapped_column(BigInteger)
    recipients: Mapped[list[str]] = mapped_column(Json)

    __table_args__ = (UniqueConstraint("alert_id", "step"),)


class DeliveryRow(Base):
    """One notification of one alert to one recipient on one channel, and how far it got."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    staff: Mapped[str] = mapped_column(String(64), index=True)
    channel: Mapped[str] = mapped_column(String(16))  # websocket, webhook
    status: Mapped[str] = mapped_column(String(16))
    sent_at: Mapped[int] = mapped_column(BigInteger)
    confirm_by: Mapped[int | None] = mapped_column(BigInteger, index=True)  # None once confirmed or given up
    delivered_at: Mapped[int | None] = mapped_column(BigInteger)
    read_at: Mapped[int | None] = mapped_column(BigInteger)
    accepted_at: Mapped[int | None] = mapped_column(BigInteger)
    declined_at: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(String(200), default="")

    __table_args__ = (
        CheckConstraint(_one_of("status", DELIVERY_STATUSES), name="status"),
        UniqueConstraint("alert_id", "step", "staff", "channel"),
    )


class CredentialRow(Base):
    """A member of staff's local sign-in secret (the embedded identity provider): an Argon2id hash, never the
    password. Staff who sign in through the hospital's OIDC provider have no row here."""

    __tablename__ = "credentials"

    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id"), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    updated: Mapped[int] = mapped_column(BigInteger)


MAINTENANCE_KINDS = ("pm", "calibration")
WORK_ORDER_KINDS = ("pm", "calibration", "repair", "firmware", "recall")
WORK_ORDER_STATUSES = ("open", "assigned", "closed")
LINK_KINDS = ("device", "gateway")


class MaintenancePlanRow(Base):
    """A planned-maintenance schedule of one model: preventive maintenance or calibration every N days."""

    __tablename__ = "maintenance_plans"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    manufacturer: Mapped[str] = mapped_column(String(200), default="")
    interval_days: Mapped[int] = mapped_column(Integer)
    manufacturer_schedule: Mapped[bool] = mapped_column(Boolean, default=True)  # must reach 100 % completion
    created: Mapped[int] = mapped_column(BigInteger)  # the schedule's clock starts here for never-serviced devices
    updated: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(_one_of("kind", MAINTENANCE_KINDS), name="kind"),
        CheckConstraint("interval_days > 0", name="interval"),
    )


class WorkOrderRow(Base):
    """A biomedical work order on one device: opened, assigned, closed with notes and parts."""

    __tablename__ = "work_orders"

    id: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    planned: Mapped[bool] = mapped_column(Boolean, default=False)
    title: Mapped[str] = mapped_column(String(200), default="")
    due_at: Mapped[int | None] = mapped_column(BigInteger, index=True)
    opened_at: Mapped[int] = mapped_column(BigInteger)
    opened_by: Mapped[str] = mapped_column(String(64))
    assigned_to: Mapped[str | None] = mapped_column(String(64))
    assigned_at: Mapped[int | None] = mapped_column(BigInteger)
    closed_at: Mapped[int | None] = mapped_column(BigInteger)
    closed_by: Mapped[str | None] = mapped_column(String(64))
    notes: Mapped[str] = mapped_column(Text, default="")
    parts: Mapped[list[str]] = mapped_column(Json, default=list)

    __table_args__ = (
        CheckConstraint(_one_of("kind", WORK_ORDER_KINDS), name="kind"),
        CheckConstraint(_one_of("status", WORK_ORDER_STATUSES), name="status"),
        Index(None, "device_id", "kind", "closed_at"),
    )


class RecallRow(Base):
    """A manufacturer's recall or field safety notice, as imported: what it names (any field may be empty)."""

    __tablename__ = "recalls"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    manufacturer: Mapped[str] = mapped_column(String(200), default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    product_code: Mapped[str] = mapped_column(String(200), default="")
    udi: Mapped[str] = mapped_column(String(200), default="")
    firmware_min: Mapped[str] = mapped_column(String(100), default="")
    firmware_max: Mapped[str] = mapped_column(String(100), default="")
    title: Mapped[str] = mapped_column(String(500), default="")
    issued_at: Mapped[int | None] = mapped_column(BigInteger)
    imported_at: Mapped[int] = mapped_column(BigInteger)


class ConnectionLogRow(Base):
    """A change of a device's or gateway's connection state, as the API's live view heard it (for uptime)."""

    __tablename__ = "connection_log"

    n: Mapped[int] = mapped_column(Serial, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    gateway: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    ts: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(_one_of("kind", LINK_KINDS), name="kind"),
        UniqueConstraint("subject", "ts", "state"),
        Index(None, "subject", "ts"),
    )
