"""Staff and their shift assignments, and the alarm route they give: bed -> patient -> primary, buddy, charge."""

from __future__ import annotations

from typing import Literal

import msgspec
from sqlalchemy import ColumnElement, and_, false, or_, select

from .models import ASSIGNMENT_ROLES, AssignmentRow, BedRow, PatientRow, StaffRow
from .sessions import Sessions

AssignmentRole = Literal["primary", "buddy", "charge"]


class Staff(msgspec.Struct, frozen=True):
    """A member of staff (a user of Wardlink)."""

    id: str
    name: str
    role: str
    active: bool


class Assignment(msgspec.Struct, frozen=True):
    """Staff on a unit for ``[valid_from, valid_to)``: for a bed or a patient, or unit-wide (charge)."""

    id: int
    staff: str
    unit: str
    role: str
    valid_from: int
    valid_to: int
    bed: str | None = None
    patient: str | None = None


class Recipient(msgspec.Struct, frozen=True):
    """One step of an alarm route."""

    staff: str
    name: str
    role: str  # the assignment role: primary, buddy or charge
    assignment: int


def _assignment(row: AssignmentRow) -> Assignment:
    """The struct of a row."""
    return Assignment(row.id, row.staff_id, row.unit_id, row.role, row.valid_from, row.valid_to, row.bed_id,
                      row.patient_id)


def _active(at: int) -> ColumnElement[bool]:
    """The condition for an assignment in force at ``at`` (half-open period)."""
    return and_(AssignmentRow.valid_from <= at, AssignmentRow.valid_to > at)


class Assignments:
    """Staff, assignments and routing."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def add_staff(self, staff_id: str, name: str, role: str, *, active: bool = True) -> Staff:
        """Create or update a member of staff."""
        with self._sessions.write(f"saving staff {staff_id}") as session:
            row = session.get(StaffRow, staff_id)
            if row is None:
                row = StaffRow(id=staff_id, name=name, role=role, active=active)
                session.add(row)
            else:
                row.name, row.role, row.active = name, role, active
            return Staff(staff_id, name, role, active)

    def staff(self, staff_id: str) -> Staff | None:
        """One member of staff, or None."""
        with self._sessions.read("reading staff") as session:
            row = session.get(StaffRow, staff_id)
            return None if row is None else Staff(row.id, row.name, row.role, row.active)

    def assign(self, staff: str, unit: str, role: AssignmentRole, valid_from: int, valid_to: int, *,
               bed: str | None = None, patient: str | None = None) -> Assignment:
        """Assign staff for a shift; primary and buddy need a bed or a patient, charge is unit-wide."""
        if role not in ASSIGNMENT_ROLES:
            raise ValueError(f"assignment role {role!r}: expected one of {ASSIGNMENT_ROLES}")
        if valid_to <= valid_from:
            raise ValueError("assignment: valid_to must be after valid_from")
        if role == "charge" and (bed or patient):
            raise ValueError("a charge assignment covers the whole unit: give no bed or patient")
        if role != "charge" and not (bed or patient):
            raise ValueError(f"a {role} assignment needs a bed or a patient")
        with self._sessions.write(f"assigning {staff} to {unit}") as session:
            if bed is not None:
                bed_row = session.get(BedRow, bed)
                if bed_row is not None and bed_row.unit_id != unit:
                    raise ValueError(f"bed {bed} is in unit {bed_row.unit_id}, not {unit}")
            row = AssignmentRow(staff_id=staff, unit_id=unit, role=role, valid_from=valid_from, valid_to=valid_to,
                                bed_id=bed, patient_id=patient)
            session.add(row)
            session.flush()
            return _assignment(row)

    def end(self, assignment_id: int, at: int) -> Assignment:
        """End an assignment early (at ``at``); raises ``KeyError`` if unknown."""
        with self._sessions.write(f"ending assignment {assignment_id}") as session:
            row = session.get(AssignmentRow, assignment_id)
            if row is None:
                raise KeyError(assignment_id)
            if at < row.valid_to:
                row.valid_to = max(at, row.valid_from + 1)
            return _assignment(row)

    def current(self, unit: str, at: int) -> list[Assignment]:
        """Assignments of a unit in force at ``at``, by role then staff."""
        query = (select(AssignmentRow).where(AssignmentRow.unit_id == unit, _active(at))
                 .order_by(AssignmentRow.role, AssignmentRow.staff_id, AssignmentRow.id))
        with self._sessions.read(f"reading assignments of {unit}") as session:
            return [_assignment(r) for r in session.scalars(query)]

    def units_of(self, staff: str, at: int) -> set[str]:
        """The units a member of staff is assigned to at ``at`` (their scope)."""
        query = select(AssignmentRow.unit_id).where(AssignmentRow.staff_id == staff, _active(at)).distinct()
        with self._sessions.read(f"reading the scope of {staff}") as session:
            return set(session.scalars(query))

    def route(self, bed: str, at: int) -> list[Recipient]:
        """Who an alarm of ``bed`` goes to at ``at``: [primary, buddy, charge], leaving out steps nobody holds.

        Primary and buddy come from assignments to the bed or to the patient now in it (the patient's
        wins: it follows a transfer); charge from the unit-wide assignment. Among several, the latest
        started wins. Inactive staff are skipped. Raises ``KeyError`` for an unknown bed.
        """
        with self._sessions.read(f"routing bed {bed}") as session:
            bed_row = session.get(BedRow, bed)
            if bed_row is None:
                raise KeyError(bed)
            patient = session.scalars(select(PatientRow.id).where(PatientRow.bed_id == bed)).first()
            for_bed = and_(AssignmentRow.role != "charge",
                           or_(AssignmentRow.bed_id == bed,
                               (AssignmentRow.patient_id == patient) if patient else false()))
            for_unit = and_(AssignmentRow.role == "charge", AssignmentRow.unit_id == bed_row.unit_id)
            rows = session.execute(
                select(AssignmentRow, StaffRow.name)
                .join(StaffRow, StaffRow.id == AssignmentRow.staff_id)
                .where(or_(for_bed, for_unit), StaffRow.active.is_(True), _active(at))
                .order_by(AssignmentRow.valid_from.desc(), AssignmentRow.id.desc())).all()
        route: list[Recipient] = []
        for role in ASSIGNMENT_ROLES:
            held = [(r, name) for r, name in rows if r.role == role]
            held.sort(key=lambda pair: pair[0].patient_id is None)  # stable: patient's first, then latest
            if held:
                row, name = held[0]
                route.append(Recipient(row.staff_id, name, role, row.id))
        return route

    def team(self, unit: str, at: int) -> list[Recipient]:
        """Everyone assigned to a unit at ``at`` (the last step of an escalation), one entry per person, by staff id."""
        query = (select(AssignmentRow, StaffRow.name).join(StaffRow, StaffRow.id == AssignmentRow.staff_id)
                 .where(AssignmentRow.unit_id == unit, StaffRow.active.is_(True), _active(at))
                 .order_by(AssignmentRow.staff_id, AssignmentRow.valid_from.desc()))
        with self._sessions.read(f"reading the team of {unit}") as session:
            rows = session.execute(query).all()
        team: dict[str, Recipient] = {}
        for row, name in rows:
            team.setdefault(row.staff_id, Recipient(row.staff_id, name, row.role, row.id))
        return list(team.values())

    def unit_route(self, unit: str, at: int) -> list[Recipient]:
        """The route of an alarm that has no bed (a fridge, a gateway): the unit's charge nurse, if any."""
        query = (select(AssignmentRow, StaffRow.name).join(StaffRow, StaffRow.id == AssignmentRow.staff_id)
                 .where(AssignmentRow.unit_id == unit, AssignmentRow.role == "charge", StaffRow.active.is_(True),
                        _active(at))
                 .order_by(AssignmentRow.valid_from.desc(), AssignmentRow.id.desc()).limit(1))
        with self._sessions.read(f"routing unit {unit}") as session:
            found = session.execute(query).first()
        return [] if found is None else [Recipient(found[0].staff_id, found[1], "charge", found[0].id)]

    def get(self, assignment_id: int) -> Assignment | None:
        """One assignment, or None."""
        with self._sessions.read(f"reading assignment {assignment_id}") as session:
            row = session.get(AssignmentRow, assignment_id)
            return None if row is None else _assignment(row)
