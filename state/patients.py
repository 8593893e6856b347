"""Patients under pseudonymous ids, and the bed each occupies (at most one patient per bed)."""

from __future__ import annotations

import msgspec
from sqlalchemy import select

from .models import PatientRow
from .sessions import Sessions


class Patient(msgspec.Struct, frozen=True):
    """A patient: pseudonymous id, display name, current bed (None when discharged)."""

    id: str
    display_name: str
    bed: str | None
    admitted_at: int | None
    discharged_at: int | None


def _patient(row: PatientRow) -> Patient:
    """The struct of a row."""
    return Patient(row.id, row.display_name, row.bed_id, row.admitted_at, row.discharged_at)


class Patients:
    """Admission, transfer and discharge."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def admit(self, patient_id: str, display_name: str, bed: str, at: int) -> Patient:
        """Put a patient in a bed (admission or transfer); refused (StateError) if the bed is taken."""
        with self._sessions.write(f"admitting patient to bed {bed}") as session:
            row = session.get(PatientRow, patient_id)
            if row is None:
                row = PatientRow(id=patient_id, display_name=display_name)
                session.add(row)
            row.display_name = display_name
            row.bed_id = bed
            row.admitted_at = at
            row.discharged_at = None
            session.flush()
            return _patient(row)

    def discharge(self, patient_id: str, at: int) -> Patient:
        """Free the patient's bed; raises ``KeyError`` if unknown."""
        with self._sessions.write("discharging a patient") as session:
            row = session.get(PatientRow, patient_id)
            if row is None:
                raise KeyError(patient_id)
            row.bed_id = None
            row.discharged_at = at
            return _patient(row)

    def in_bed(self, bed: str) -> Patient | None:
        """The patient in a bed now, or None."""
        with self._sessions.read(f"reading bed {bed}") as session:
            row = session.scalars(select(PatientRow).where(PatientRow.bed_id == bed)).first()
            return None if row is None else _patient(row)

    def get(self, patient_id: str) -> Patient | None:
        """One patient, or None."""
        with self._sessions.read("reading a patient") as session:
            row = session.get(PatientRow, patient_id)
            return None if row is None else _patient(row)
