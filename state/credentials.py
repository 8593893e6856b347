"""Local sign-in for the embedded identity provider: Argon2id password hashes per member of staff.

Only hashes are stored (argon2-cffi's defaults, RFC 9106's second recommended profile); a hash made
with older parameters is upgraded at the next successful sign-in. Verification costs the same whether
the member of staff exists or not, so timing does not tell which user names exist.
"""

from __future__ import annotations

from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .assignments import Staff
from .errors import StateError
from .models import CredentialRow, StaffRow
from .sessions import Sessions

MIN_PASSWORD: Final = 12

_hasher = PasswordHasher()
_DUMMY_HASH: Final = _hasher.hash("an unused password that no one has")


class Credentials:
    """Set and check members of staff's passwords."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def set_password(self, staff_id: str, password: str, *, at: int) -> None:
        """Store the hash of a new password; raise StateError for an unknown member of staff or a short one."""
        if len(password) < MIN_PASSWORD:
            raise StateError(f"staff {staff_id}: a password needs at least {MIN_PASSWORD} characters")
        digest = _hasher.hash(password)
        with self._sessions.write(f"setting the password of {staff_id}") as session:
            if session.get(StaffRow, staff_id) is None:
                raise StateError(f"staff {staff_id}: no such member of staff")
            row = session.get(CredentialRow, staff_id)
            if row is None:
                session.add(CredentialRow(staff_id=staff_id, password_hash=digest, updated=at))
            else:
                row.password_hash, row.updated = digest, at

    def verify(self, staff_id: str, password: str, *, at: int) -> Staff | None:
        """The member of staff if the password is theirs and they are active; None otherwise."""
        with self._sessions.read(f"checking the password of {staff_id}") as session:
            staff = session.get(StaffRow, staff_id)
            credential = session.get(CredentialRow, staff_id)
            stored = credential.password_hash if credential is not None else None
            found = None if staff is None else Staff(staff.id, staff.name, staff.role, staff.active)
        try:
            _hasher.verify(stored or _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        if stored is None or found is None or not found.active:
            return None
        if _hasher.check_needs_rehash(stored):
            self.set_password(staff_id, password, at=at)
        return found
