"""The audit trail: append-only records chained by SHA-256 (each hash covers the record and the previous hash)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection
from typing import Any, Final

import msgspec
from sqlalchemy import select

from .models import AuditRow
from .sessions import Sessions

log = logging.getLogger(__name__)

GENESIS: Final = "0" * 64
"""The ``prev_hash`` of the first record."""
VERIFY_PAGE: Final = 5000
AUDIT_LOCK: Final = 0x5741524441554454  # PostgreSQL advisory lock key: one appender at a time keeps the chain linear


class AuditRecord(msgspec.Struct, frozen=True):
    """One audit record."""

    n: int
    at: int
    actor: str
    role: str
    unit: str | None
    object: str
    action: str
    result: str
    request_id: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


def _canonical(detail: dict[str, Any]) -> str:
    """JSON with sorted keys and no spaces: the same text for the same content."""
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(prev_hash: str, at: int, actor: str, role: str, unit: str | None, object_: str, action: str,
                result: str, request_id: str | None, detail: str) -> str:
    """The SHA-256 of a record's fields and the previous hash (hex)."""
    payload = json.dumps([prev_hash, at, actor, role, unit, object_, action, result, request_id, detail],
                         separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def _row_hash(row: AuditRow) -> str:
    """Recompute a stored row's hash."""
    return record_hash(row.prev_hash, row.at, row.actor, row.role, row.unit, row.object, row.action, row.result,
                       row.request_id, row.detail)


def _record(row: AuditRow) -> AuditRecord:
    """The struct of a row."""
    return AuditRecord(row.n, row.at, row.actor, row.role, row.unit, row.object, row.action, row.result,
                       row.request_id, json.loads(row.detail), row.prev_hash, row.hash)


class Audit:
    """Append and read the audit trail, and verify that nobody has edited it."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def append(self, *, actor: str, role: str, object: str, action: str, result: str, at: int,
               unit: str | None = None, request_id: str | None = None,
               detail: dict[str, Any] | None = None) -> AuditRecord:
        """Append one record, chained to the last (appenders are serialised so the chain stays linear)."""
        text = _canonical(detail or {})
        with self._sessions.write(f"appending to the audit trail ({action} {object})") as session:
            self._sessions.lock(session, AUDIT_LOCK)
            prev = session.scalars(select(AuditRow.hash).order_by(AuditRow.n.desc()).limit(1)).first() or GENESIS
            digest = record_hash(prev, at, actor, role, unit, object, action, result, request_id, text)
            row = AuditRow(at=at, actor=actor, role=role, unit=unit, object=object, action=action, result=result,
                           request_id=request_id, detail=text, prev_hash=prev, hash=digest)
            session.add(row)
            session.flush()
            return _record(row)

    def records(self, *, after: int = 0, limit: int = 1000, actor: str | None = None, unit: str | None = None,
                actions: Collection[str] | None = None, since: int | None = None,
                until: int | None = None) -> list[AuditRecord]:
        """Records with ``n > after``, oldest first, optionally of one actor, unit, some actions, ``[since, until)``."""
        query = select(AuditRow).where(AuditRow.n > after).order_by(AuditRow.n).limit(limit)
        if actor is not None:
            query = query.where(AuditRow.actor == actor)
        if unit is not None:
            query = query.where(AuditRow.unit == unit)
        if actions is not None:
            query = query.where(AuditRow.action.in_(sorted(actions)))
        if since is not None:
            query = query.where(AuditRow.at >= since)
        if until is not None:
            query = query.where(AuditRow.at < until)
        with self._sessions.read("reading the audit trail") as session:
            return [_record(r) for r in session.scalars(query)]

    def head(self) -> tuple[int, str]:
        """The last record's number and hash (``(0, GENESIS)`` when empty), to anchor outside the database."""
        with self._sessions.read("reading the audit head") as session:
            row = session.execute(select(AuditRow.n, AuditRow.hash).order_by(AuditRow.n.desc()).limit(1)).first()
            return (0, GENESIS) if row is None else (row[0], row[1])

    def first_broken(self) -> int | None:
        """The number of the first record whose hash or link does not verify, or None if the chain is intact."""
        prev, after = GENESIS, 0
        while True:  # pages by record number: memory stays flat and no server-side cursor is left open
            with self._sessions.read("verifying the audit trail") as session:
                rows = session.scalars(select(AuditRow).where(AuditRow.n > after).order_by(AuditRow.n)
                                       .limit(VERIFY_PAGE)).all()
            for row in rows:
                if row.prev_hash != prev or _row_hash(row) != row.hash:
                    log.warning("audit trail broken at record %d", row.n)
                    return row.n
                prev, after = row.hash, row.n
            if len(rows) < VERIFY_PAGE:
                return None

    def verify(self) -> bool:
        """Recompute the hash chain; False if a record was edited, inserted or removed (bar the newest: see head)."""
        return self.first_broken() is None
