"""The audit trail for the auditor: read, verify, export (``/api/v1/audit``)."""

# No `from __future__ import annotations` here: FastAPI reads the Depends(...) of local names in
# parameter annotations, which only works when annotations are evaluated where the route is defined.
import asyncio
import csv
import io
import json
from typing import Annotated

import msgspec
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from api import schemas
from api.access import Access
from api.security import Principal

CSV_FIELDS = ("n", "at", "actor", "role", "unit", "object", "action", "result", "request_id", "detail",
              "prev_hash", "hash")


def audit_router(access: Access) -> APIRouter:
    """Audit routes: the auditor only (admins run the system, they do not read its trail)."""
    router = APIRouter(prefix="/api/v1/audit", tags=["audit"])
    auditor = Depends(access.allow("auditor"))

    async def page(principal: Principal, after: int, limit: int, actor: str | None,
                   unit: str | None) -> list[dict[str, object]]:
        records = await asyncio.to_thread(access.state.audit.records, after=after, limit=limit, actor=actor,
                                          unit=unit)
        await access.audited(principal, object="audit", action="audit.read", unit=unit,
                             detail={"after": after, "count": len(records)})
        return [msgspec.to_builtins(r) for r in records]

    @router.get("")
    async def read(principal: Annotated[Principal, auditor], after: Annotated[int, Query(ge=0)] = 0,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = 1000, actor: str | None = None,
                   unit: str | None = None) -> list[dict[str, object]]:
        """Records after number ``after``, oldest first (page with the last ``n``)."""
        return await page(principal, after, limit, actor, unit)

    @router.get("/export.csv", responses=schemas.CSV)
    async def export(principal: Annotated[Principal, auditor], after: Annotated[int, Query(ge=0)] = 0,
                     limit: Annotated[int, Query(ge=1, le=100_000)] = 100_000, actor: str | None = None,
                     unit: str | None = None) -> Response:
        """The same records as CSV (``detail`` as JSON text), with the hashes to check the chain offline."""
        rows = await page(principal, after, limit, actor, unit)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "detail": json.dumps(row["detail"], sort_keys=True)})
        return Response(out.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="wardlink-audit.csv"'})

    @router.get("/verify")
    async def verify(principal: Annotated[Principal, auditor]) -> dict[str, object]:
        """Recompute the hash chain: the first broken record, and the head to anchor outside the database."""
        broken = await asyncio.to_thread(access.state.audit.first_broken)
        n, digest = await asyncio.to_thread(access.state.audit.head)
        await access.audited(principal, object="audit", action="audit.verify", unit=None,
                             result="intact" if broken is None else f"broken at {broken}")
        return {"intact": broken is None, "first_broken": broken, "head": {"n": n, "hash": digest}}

    return router
