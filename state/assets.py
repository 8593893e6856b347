"""Tagged equipment: which tag it wears, its type, status (clean, in use, dirty, in repair), unit and device."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from sqlalchemy import select

from .models import ASSET_STATUSES, AssetRow
from .sessions import Sessions

AssetStatus = Literal["clean", "in_use", "dirty", "in_repair"]
_UNSET: Any = object()


class Asset(msgspec.Struct, frozen=True):
    """A tagged asset."""

    id: str
    tag: str
    type: str
    status: str
    unit: str | None
    device: str | None
    updated: int


def _asset(row: AssetRow) -> Asset:
    """The struct of a row."""
    return Asset(row.id, row.tag, row.type, row.status, row.unit_id, row.device_id, row.updated)


class Assets:
    """The asset registry."""

    def __init__(self, sessions: Sessions) -> None:
        """Use the state's sessions."""
        self._sessions = sessions

    def upsert(self, asset_id: str, *, now: int, tag: str = _UNSET, type: str = _UNSET,
               status: AssetStatus = _UNSET, unit: str | None = _UNSET, device: str | None = _UNSET) -> Asset:
        """Create an asset (tag and type required) or change the fields given."""
        if status is not _UNSET and status not in ASSET_STATUSES:
            raise ValueError(f"asset {asset_id}: status {status!r}: expected one of {ASSET_STATUSES}")
        fields = {k: v for k, v in {"tag": tag, "type": type, "status": status, "unit_id": unit,
                                    "device_id": device}.items() if v is not _UNSET}
        with self._sessions.write(f"saving asset {asset_id}") as session:
            row = session.get(AssetRow, asset_id)
            if row is None:
                if "tag" not in fields or "type" not in fields:
                    raise ValueError(f"asset {asset_id}: a new asset needs tag and type")
                row = AssetRow(id=asset_id, **fields, updated=now)
                session.add(row)
            else:
                for key, value in fields.items():
                    setattr(row, key, value)
                row.updated = now
            session.flush()
            return _asset(row)

    def by_tag(self, tag: str) -> Asset | None:
        """The asset wearing a tag, or None (the location engine's lookup)."""
        with self._sessions.read(f"reading tag {tag}") as session:
            row = session.scalars(select(AssetRow).where(AssetRow.tag == tag)).first()
            return None if row is None else _asset(row)

    def list(self, *, unit: str | None = None, type: str | None = None,
             status: AssetStatus | None = None) -> list[Asset]:
        """Assets by id, filtered by owning unit, type and status."""
        query = select(AssetRow).order_by(AssetRow.id)
        if unit is not None:
            query = query.where(AssetRow.unit_id == unit)
        if type is not None:
            query = query.where(AssetRow.type == type)
        if status is not None:
            query = query.where(AssetRow.status == status)
        with self._sessions.read("reading assets") as session:
            return [_asset(r) for r in session.scalars(query)]
