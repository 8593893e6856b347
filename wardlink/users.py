"""People who sign in: ``wardlink user add``, ``wardlink token``, and the demo's one user per role.

The demo (``wardlink run`` on embedded defaults) seeds one member of staff per role, with generated
passwords written once to ``<data>/demo-users.toml`` (mode 0600): the nurses and the charge nurse are
assigned to their unit for a year from the first start, so scope is visible at once (``n-icu`` sees
the ICU and not 3 West, ``n-w3`` the reverse).
"""

from __future__ import annotations

import logging
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from api.security import ROLES, LocalTokens
from devices.clock import now_ms
from devices.site import Site
from state.db import State

log = logging.getLogger(__name__)

YEAR_MS: Final = 365 * 86_400_000
DEMO_FILE: Final = "demo-users.toml"


@dataclass(frozen=True, slots=True)
class DemoUser:
    """One seeded member of staff."""

    staff_id: str
    name: str
    role: str
    unit: str | None  # their unit (clinical roles) or None (site-wide roles)
    password: str


def add_user(state: State, staff_id: str, name: str, role: str, password: str) -> None:
    """Create or update a member of staff and set their password; raise ValueError for an unknown role."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    state.assignments.add_staff(staff_id, name, role)
    state.credentials.set_password(staff_id, password, at=now_ms())


def token(state: State, data_dir: Path, staff_id: str) -> str:
    """A local token for an active member of staff (the operator holds the data directory's key)."""
    staff = state.assignments.staff(staff_id)
    if staff is None or not staff.active or staff.role not in ROLES:
        raise ValueError(f"staff {staff_id!r}: unknown, inactive or without a Wardlink role")
    issued = LocalTokens.from_data_dir(data_dir).issue(staff_id)
    state.audit.append(actor=staff_id, role=staff.role, object=f"staff/{staff_id}", action="token.cli",
                       result="issued", at=now_ms())
    return issued


def _demo_cast(site: Site) -> list[tuple[str, str, str, str | None]]:
    """(staff id, name, role, unit) of the demo: a nurse per unit (the first two), a charge nurse, the rest."""
    units = [unit.id for unit in site.units]
    cast: list[tuple[str, str, str, str | None]] = []
    for unit in units[:2]:
        cast.append((f"n-{unit.lower()}", f"Nurse of {unit}", "nurse", unit))
    if units:
        cast.append((f"c-{units[0].lower()}", f"Charge nurse of {units[0]}", "charge_nurse", units[0]))
    cast += [("f-facilities", "Facilities desk", "facilities", None),
             ("b-biomed", "Biomedical engineer", "biomed", None),
             ("a-admin", "Administrator", "admin", None),
             ("u-auditor", "Auditor", "auditor", None)]
    return cast


def seed_demo_users(state: State, data_dir: Path, site: Site) -> list[DemoUser]:
    """Seed (once) the demo's users and their assignments; return them with their passwords."""
    path = data_dir / DEMO_FILE
    known: dict[str, str] = {}
    if path.exists():
        known = {k: str(v) for k, v in tomllib.loads(path.read_text(encoding="utf-8")).get("passwords", {}).items()}
    now = now_ms()
    users: list[DemoUser] = []
    for staff_id, name, role, unit in _demo_cast(site):
        password = known.get(staff_id) or secrets.token_urlsafe(12)
        if staff_id not in known or state.credentials.verify(staff_id, password, at=now) is None:
            add_user(state, staff_id, name, role, password)
        if unit is not None and unit not in state.assignments.units_of(staff_id, now):
            beds = next(u.beds for u in site.units if u.id == unit)
            if role == "charge_nurse":
                state.assignments.assign(staff_id, unit, "charge", now, now + YEAR_MS)
            else:
                for bed in beds:
                    state.assignments.assign(staff_id, unit, "primary", now, now + YEAR_MS, bed=bed)
        users.append(DemoUser(staff_id, name, role, unit, password))
    lines = ["# Demo sign-in (generated at the first start; delete this file and the state to start over).",
             "# Get a token: wardlink token STAFF_ID, or POST /api/v1/auth/token (username, password).",
             "[passwords]"] + [f'{u.staff_id} = "{u.password}"  # {u.role}{f" of {u.unit}" if u.unit else ""}'
                               for u in users]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return users
