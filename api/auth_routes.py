"""Sign-in, who am I, and WebSocket tickets (``/api/v1/auth``)."""

# No `from __future__ import annotations` here: FastAPI reads the Depends(...) of local names in
# parameter annotations, which only works when annotations are evaluated where the route is defined.
import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response

from api.access import Access
from api.security import ROLES, Principal
from devices.clock import now_ms


def auth_router(access: Access) -> APIRouter:
    """The sign-in routes."""
    router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
    anyone = Depends(access.allow(*ROLES))

    @router.post("/token")
    async def sign_in(request: Request, response: Response, username: Annotated[str, Form(max_length=64)],
                      password: Annotated[str, Form(max_length=256)]) -> dict[str, object]:
        """Sign in with a local password (OAuth 2 password form); every attempt is audited with its request id
        (answered in ``X-Request-ID``)."""
        request_id = uuid.uuid4().hex
        key = (username, request.client.host if request.client else "")
        staff = await asyncio.to_thread(access.state.assignments.staff, username)

        async def audited(result: str) -> None:
            await asyncio.to_thread(access.state.audit.append, actor=username, role=staff.role if staff else "",
                                    object=f"staff/{username}", action="login", result=result, at=now_ms(),
                                    request_id=request_id)

        if access.throttle.blocked(key):
            await audited("throttled")
            raise HTTPException(429, "too many failed sign-ins: wait a few minutes",
                                headers={"Retry-After": "300", "X-Request-ID": request_id})
        token = await asyncio.to_thread(access.auth.sign_in, username, password)
        await audited("ok" if token else "failed")
        if token is None or access.auth.local is None:
            access.throttle.failed(key)
            raise HTTPException(401, "wrong user name or password",
                                headers={"WWW-Authenticate": "Bearer", "X-Request-ID": request_id})
        access.throttle.succeeded(key)
        response.headers["X-Request-ID"] = request_id
        return {"access_token": token, "token_type": "bearer", "expires_in": access.auth.local.ttl_s}

    @router.get("/me")
    async def me(principal: Annotated[Principal, anyone]) -> dict[str, object]:
        """The caller: staff id, name, role and the units in scope now."""
        return {"staff": principal.subject, "name": principal.name, "role": principal.role,
                "units": sorted(access.units(principal)), "site_wide": principal.site_wide}

    @router.post("/ws-ticket")
    async def ws_ticket(principal: Annotated[Principal, anyone]) -> dict[str, object]:
        """A single-use ticket for one WebSocket handshake (``?ticket=``), valid for a few seconds."""
        return {"ticket": access.auth.tickets.issue(principal.subject), "expires_in": access.auth.tickets.ttl_s}

    return router
